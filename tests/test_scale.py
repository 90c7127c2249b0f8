"""One code path from one device to meshes and several processes (CPU: simulated devices, gloo)."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, main_command
from trm_jax.metrics_logger import read_metrics
from trm_jax import sharding


def _env(devices: int) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _worker(*args, devices=8, timeout=600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.scale_worker", *args], cwd=REPO, env=_env(devices),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_every_mesh_gives_the_single_device_losses_and_fsdp_really_shards():
    out = _worker("meshes")
    base = out.pop("1x1")
    assert base["devices"] == 1
    for name, res in out.items():
        np.testing.assert_allclose(res["losses"], base["losses"], rtol=2e-5, err_msg=name)
        assert res["devices"] == 8 and res["carry_spec"] in ("P(('data', 'fsdp'),)", "PartitionSpec(('data', 'fsdp'),)")
        specs = res["param_specs"]
        if name.endswith("x1"):
            assert set(specs.values()) <= {"P()", "PartitionSpec()"}, specs
        else:  # FSDP: every weight matrix is split over the fsdp axis
            kernels = {k: v for k, v in specs.items() if "kernel" in k and "q_head" not in k}
            assert kernels and all("fsdp" in v for v in kernels.values()), kernels


def test_mesh_and_batch_errors_are_clear():
    import jax

    with pytest.raises(ValueError, match="does not fit the 1 available devices"):
        sharding.create_mesh(2, 1)
    with pytest.raises(ValueError, match="global_batch_size=12 must be divisible by the number of devices"):
        sharding.check_global_batch(12, sharding.create_mesh(1, 1), process_count=8)
    assert sharding.check_global_batch(16, sharding.create_mesh(1, 1), process_count=2) == 8
    assert jax.device_count() >= 1


def _launch(workdir, data_dir, port, n, devices, **overrides):
    cmd = main_command(workdir, data_dir, **overrides)
    return [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                                    f"--process_id={i}", "--distributed_timeout=60"],
                             cwd=REPO, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def _finish(procs, timeout=600):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


@pytest.mark.slow
def test_two_processes_match_one_process_and_the_checkpoint_restores_anywhere(data_dir, tmp_path):
    steps = 4
    multi, single = str(tmp_path / "two_procs"), str(tmp_path / "one_proc")
    outs = _finish(_launch(multi, data_dir, _free_port(), 2, 4, max_steps=steps))
    for rc, out, err in outs:
        assert rc == 0, err[-3000:]
    # Only process 0 prints. Gloo's C++ connection notice ("[Gloo] Rank 1 is connected to 1 peer
    # ranks. ...") goes to the same stdout and can arrive split over two lines: set it aside.
    assert "Finished" in outs[0][1]
    gloo = re.compile(r"\[Gloo\]|peer ranks")
    assert [line for line in outs[1][1].splitlines() if line.strip() and not gloo.search(line)] == []
    proc = subprocess.run(main_command(single, data_dir, max_steps=steps), cwd=REPO, env=_env(8),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(workdir):
        recs = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/lm_loss" in r]
        return [r["step"] for r in recs], [r["train/lm_loss"] for r in recs], [r["train/accuracy"] for r in recs]

    (s2, l2, a2), (s1, l1, a1) = losses(multi), losses(single)
    assert s2 == s1 == list(range(1, steps + 1))
    np.testing.assert_allclose(l2, l1, rtol=2e-5)
    np.testing.assert_allclose(a2, a1, rtol=2e-5, atol=1e-7)
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == [str(steps)]  # one checkpoint, written together

    restored = _worker("restore", multi, str(steps), data_dir)
    assert restored["equal"] and restored["step"] == steps
    assert restored["fsdp_devices"] == 8 and "fsdp" in restored["fsdp_spec"]
    assert restored["data_state"]  # the data position travels with the checkpoint

    # And the 2x4 checkpoint evaluates in one process on one device, as process 0 did at the end.
    final_eval = [r for r in read_metrics(os.path.join(multi, "metrics.jsonl")) if "eval/accuracy" in r][-1]
    proc = subprocess.run(main_command(multi, data_dir) + ["--eval_only"], cwd=REPO, env=_env(1),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [r for r in read_metrics(os.path.join(multi, "metrics.jsonl")) if "eval/accuracy" in r][-1]
    for key in ("eval/accuracy", "eval/lm_loss", "eval/q_halt_loss"):
        np.testing.assert_allclose(again[key], final_eval[key], rtol=1e-5)


def test_a_missing_process_fails_with_a_message_not_a_hang(data_dir, tmp_path):
    cmd = main_command(str(tmp_path), data_dir)
    port = _free_port()
    proc = subprocess.run(cmd + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                                 "--distributed_timeout=5"], cwd=REPO, env=_env(1), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert f"coordinator 127.0.0.1:{port} did not answer within 5s" in proc.stderr


def test_a_batch_that_does_not_split_over_processes_fails_in_every_process(data_dir, tmp_path):
    outs = _finish(_launch(str(tmp_path), data_dir, _free_port(), 2, 4, global_batch_size=12), timeout=300)
    for rc, out, err in outs:
        assert rc == 1, err[-2000:]
        assert "global_batch_size=12 must be divisible by the number of devices (8)" in err
