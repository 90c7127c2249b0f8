"""The language models end to end through their commands: ``trm_jax.main`` trains a causal model on a
``text`` dataset and resumes exactly, ``--eval_only`` reports perplexity and bits per byte, and
``trm_jax.generate`` / ``trm_jax.chat`` (driven through a pseudo-terminal) produce text from the run."""
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from trm_jax.metrics_logger import read_metrics

pytestmark = pytest.mark.slow

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
TIMING_KEYS = ("train/examples_per_s", "train/samples_per_sec", "train/tokens_per_s")
STEPS = 8
WORDS = "river stone garden window lantern meadow harbor candle forest valley bridge mirror".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_cli")
    rng = np.random.default_rng(0)
    with open(root / "stories.txt", "w") as f:  # TinyStories layout
        for _ in range(60):
            f.write(" ".join(rng.choice(WORDS, size=40)) + ".\n<|endoftext|>\n")
    return root


def _command(workdir, root, **overrides):
    flags = {"model.hidden_size": 32, "model.num_heads": 2, "model.L_cycles": 1, "model.L_layers": 1,
             "model.halt_max_steps": 2, "global_batch_size": 8, "log_interval": 1, "eval_interval": 0.0,
             "lr_warmup_steps": 1, "lr": 3e-3,
             "data.data_dir": str(root / "data"), "data.options.source": str(root / "stories.txt"),
             "data.options.vocab_size": 300, "data.options.seq_len": 32}
    flags.update(overrides)
    return [sys.executable, "-m", "trm_jax.main", "--config=configs/text.py:tiny", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in flags.items()]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _train_records(workdir):
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/lm_loss" in r}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "whole")
    _run(_command(workdir, corpus, max_steps=STEPS, checkpoint_interval=1000))
    return workdir


def test_a_language_model_trains_evaluates_and_resumes_exactly(corpus, trained, tmp_path):
    reference = _train_records(trained)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS]["train/lm_loss"] < reference[1]["train/lm_loss"]
    assert reference[1]["train/perplexity"] == pytest.approx(np.exp(reference[1]["train/lm_loss"]), rel=1e-6)
    assert os.path.isfile(os.path.join(trained, "tokenizer.json"))
    split = str(tmp_path / "split")
    _run(_command(split, corpus, max_steps=STEPS // 2, checkpoint_interval=STEPS // 2))
    _run(_command(split, corpus, max_steps=STEPS, checkpoint_interval=1000))
    assert _train_records(split) == reference

    out = _run(_command(trained, corpus, max_steps=STEPS) + ["--eval_only"]).stdout
    ppl = float(re.search(r"eval/perplexity\s+([\d.]+)", out).group(1))
    bpb = float(re.search(r"eval/bits_per_byte\s+([\d.]+)", out).group(1))
    loss = float(re.search(r"eval/lm_loss\s+([\d.]+)", out).group(1))
    assert ppl == pytest.approx(np.exp(loss), rel=1e-3) and 0 < bpb < 16


def _generate(workdir, *flags):
    return _run([sys.executable, "-m", "trm_jax.generate", f"--workdir={workdir}", "--max_new_tokens=24", *flags])


def test_generate_streams_text_deterministically_under_a_seed(trained):
    a = _generate(trained, "--prompt=river stone", "--seed=3")
    b = _generate(trained, "--prompt=river stone", "--seed=3")
    assert a.stdout == b.stdout and a.stdout.startswith("river stone") and len(a.stdout) > len("river stone\n")
    assert re.search(r"\d+ tokens in [\d.]+ s: [\d.]+ tokens/s", a.stderr)
    greedy = _generate(trained, "--prompt=river", "--temperature=0", "--num_samples=2")
    samples = greedy.stdout.split("--- sample 2")
    assert len(samples) == 2 and samples[0].split("---\n", 1)[1].strip() == samples[1].split("---\n", 1)[1].strip()
    bad = subprocess.run([sys.executable, "-m", "trm_jax.generate", f"--workdir={trained}", "--top_p=0"], cwd=REPO,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "top_p" in bad.stderr and "Traceback" not in bad.stderr


def _read_until(fd, pattern, timeout=240.0):
    buffer, end = b"", time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            if re.search(pattern, buffer):
                return buffer.decode(errors="replace")
    raise AssertionError(f"no {pattern!r} in {buffer.decode(errors='replace')[-2000:]!r}")


def _chat(workdir):
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat on the pseudo-terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "trm_jax.chat", f"--workdir={workdir}",
                                   "--max_new_tokens=12", "--seed=1"], ENV)
    return pid, fd


def _exit_status(pid, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    os.kill(pid, 9)
    raise AssertionError("the chat did not exit")


def test_chat_through_a_pseudo_terminal(trained):
    pid, fd = _chat(trained)
    _read_until(fd, rb"> $")
    os.write(fd, b"river stone garden\n")
    reply = _read_until(fd, rb"\n> $")
    assert "river stone garden" in reply  # the echo of the typed line, then the reply and a new prompt
    os.write(fd, b"/temperature 0.5\n")
    assert "(temperature = 0.5)" in _read_until(fd, rb"\n> $")
    os.write(fd, b"/top_p 7\n")
    assert "top_p" in _read_until(fd, rb"\n> $")
    os.write(fd, b"/reset\n")
    assert "(conversation cleared)" in _read_until(fd, rb"\n> $")
    os.write(fd, b"\x04")  # Ctrl-D
    tail = _read_until(fd, rb"bye")
    assert _exit_status(pid) == 0 and "Traceback" not in tail
    os.close(fd)

    pid, fd = _chat(trained)
    _read_until(fd, rb"> $")
    os.write(fd, b"\x03")  # Ctrl-C
    tail = _read_until(fd, rb"bye")
    assert _exit_status(pid) == 0 and "Traceback" not in tail
    os.close(fd)
