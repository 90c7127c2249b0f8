"""The torch-free .pt reader/writer against real torch, and the refusal of pickles that run code."""
import collections
import os
import subprocess
import sys
import struct
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

import trm_jax
from tests.conftest import REPO
from trm_jax import pt_format

CFG = dict(seq_len=8, vocab_size=6, num_puzzle_identifiers=4, hidden_size=16, num_heads=2, expansion=2.0,
           H_cycles=2, L_cycles=1, L_layers=2, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="bfloat16")


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """The oracle: torch's own values, bfloat16 widened exactly to float32."""
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_same(got, want, where="root"):
    """``got`` (pt_format, NumPy) holds the same structure and values as ``want`` (torch.load)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, np.ndarray), where
        assert got.shape == tuple(want.shape), where
        if want.dtype == torch.bfloat16:
            assert got.dtype == ml_dtypes.bfloat16, where
            got = got.astype(np.float32)
        np.testing.assert_array_equal(got, _as_numpy(want), err_msg=where)
    elif isinstance(want, dict):
        assert type(got) is type(want), (where, type(got), type(want))
        assert list(got) == list(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    else:
        assert got == want, where


@pytest.fixture()
def reference_shaped(tmp_path):
    """A reference-like checkpoint: float32, bfloat16, int64, strided views, shared storages, nesting."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6, 16, generator=g)
    sd = collections.OrderedDict()
    sd["_orig_mod.model.inner.embed_tokens.embedding_weight"] = table
    sd["_orig_mod.model.inner.lm_head.weight"] = table.t()  # a transposed view of the same storage
    sd["_orig_mod.model.inner.slice"] = table[1:5, ::3]  # offset + non-unit strides into the shared storage
    sd["_orig_mod.model.inner.H_init"] = torch.randn(16, generator=g).to(torch.bfloat16)
    sd["_orig_mod.model.inner.q_head.bias"] = torch.nn.Parameter(torch.tensor([-5.0, -5.0]))
    sd["_orig_mod.model.inner.counts"] = torch.tensor([1, 2 ** 40, -3], dtype=torch.int64)
    sd["_orig_mod.model.inner.scalar"] = torch.tensor(2.5)
    sd["_orig_mod.model.inner.half"] = torch.randn(3, generator=g).half()
    sd["_orig_mod.model.inner.mask"] = torch.tensor([True, False, True])
    sd["_orig_mod.model.inner.empty"] = torch.zeros(0, 4)
    path = tmp_path / "step_100"
    torch.save({"model": sd, "step": 100, "name": "trm", "nested": {"lr": 1e-4, "ids": [1, 2]}}, path)
    return path


def test_reader_equals_torch_load(reference_shaped):
    got = pt_format.load_pt(reference_shaped)
    want = torch.load(reference_shaped, weights_only=True)
    _assert_same(got, want)
    assert isinstance(got["model"], collections.OrderedDict)


def test_reader_reads_a_module_state_dict_with_its_metadata(tmp_path):
    # nn.Module.state_dict() pickles an OrderedDict with a `_metadata` attribute (a BUILD opcode).
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    path = tmp_path / "module.pt"
    torch.save(module.state_dict(), path)
    got = pt_format.load_pt(path)
    _assert_same(got, torch.load(path, weights_only=True))
    assert got._metadata == module.state_dict()._metadata


def test_reader_reads_big_endian_storages(tmp_path):
    # The archive a big-endian machine writes: each storage's elements byte-swapped, byteorder "big".
    # torch numbers storages in the order the pickle first meets them: here "0", "1", "2", "3".
    want = {"f": torch.randn(3, 2), "b": torch.randn(4).to(torch.bfloat16), "l": torch.tensor([1, -2 ** 40]),
            "c": torch.randn(2, dtype=torch.complex64)}
    item_sizes = {"0": 4, "1": 2, "2": 8, "3": 4}  # complex64: two float32 halves, each swapped
    little = tmp_path / "little.pt"
    torch.save(want, little)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                item = item_sizes[info.filename.rsplit("/", 1)[1]]
                data = np.frombuffer(data, f"<u{item}").astype(f">u{item}").tobytes()
            dst.writestr(info.filename, data)
    _assert_same(pt_format.load_pt(big), want)


def test_writer_output_loads_in_torch_weights_only(tmp_path, reference_shaped):
    state = pt_format.load_pt(reference_shaped)
    path = tmp_path / "written.pt"
    pt_format.save_pt(state, path)
    back = torch.load(path, weights_only=True)
    want = torch.load(reference_shaped, weights_only=True)
    assert isinstance(back["model"], collections.OrderedDict)
    for key, tensor in want["model"].items():
        assert back["model"][key].dtype == tensor.dtype, key
        assert torch.equal(back["model"][key], tensor.detach()), key
    assert back["step"] == 100 and back["nested"] == {"lr": 1e-4, "ids": [1, 2]}
    # torch.save's layout: one archive dir, every record's data 64-byte aligned (mmap loads work).
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"written"}
        for rec in ("data.pkl", "byteorder", "version", ".format_version", ".storage_alignment",
                    ".data/serialization_id"):
            assert f"written/{rec}" in names, rec
        for info in zf.infolist():
            n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + n + e) % 64 == 0, info.filename
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(mapped["model"]["_orig_mod.model.inner.H_init"], want["model"]["_orig_mod.model.inner.H_init"])


def test_save_torch_round_trips_through_torch_and_from_torch(tmp_path):
    variables = trm_jax.init_variables(CFG, jax.random.PRNGKey(3))
    path = tmp_path / "model.pt"
    trm_jax.save_torch(variables, CFG, path)
    loaded = torch.load(path, weights_only=True)
    expected = trm_jax.to_torch(variables, CFG)  # torch tensors, the existing path
    assert list(loaded) == list(expected)
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    assert loaded["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16
    back = trm_jax.from_torch(path, CFG)
    np.testing.assert_array_equal(back["params"]["inner"]["lm_head"]["kernel"],
                                  variables["params"]["inner"]["lm_head"]["kernel"])
    np.testing.assert_array_equal(back["buffers"]["inner"]["H_init"],
                                  np.asarray(variables["buffers"]["inner"]["H_init"], ml_dtypes.bfloat16)
                                  .astype(np.float32))


class _RunsCode:
    """Pickles as ``os.system('touch FILE')``: what a hostile checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _ExecsCode:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        import builtins
        return builtins.exec, (self.code,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_crafted_pickle_does_not_run(tmp_path, kind):
    marker = tmp_path / "PWNED"
    payload = _RunsCode(f"touch {marker}") if kind == "os.system" else _ExecsCode(f"open({str(marker)!r}, 'w')")
    path = tmp_path / "evil.pt"
    variables = trm_jax.init_variables(CFG, jax.random.PRNGKey(0))
    sd = trm_jax.to_torch(variables, CFG)
    sd["x"] = payload
    torch.save(sd, path)
    with pytest.raises(trm_jax.UnsafeCheckpointError) as err:
        trm_jax.from_torch(str(path), CFG)
    msg = str(err.value)
    assert str(path) in msg and "trust_pickle=True" in msg
    assert ("system" in msg) if kind == "os.system" else ("builtins.exec" in msg)
    assert not marker.exists()
    # The opt-in runs it (that is what trusting means): proof that the payload was live.
    with pytest.raises(trm_jax.StateDictError, match="unexpected keys.*x"):
        trm_jax.from_torch(str(path), CFG, trust_pickle=True)
    assert marker.exists()


def test_legacy_format_reads_with_torch_weights_only(tmp_path, reference_shaped):
    want = torch.load(reference_shaped, weights_only=True)
    path = tmp_path / "legacy.pt"
    torch.save(want, path, _use_new_zipfile_serialization=False)
    _assert_same(pt_format.load_pt(path), want)


def test_missing_file_and_not_a_checkpoint(tmp_path):
    missing = tmp_path / "nope" / "step_1"
    with pytest.raises(FileNotFoundError, match=f"no such checkpoint file: {missing}"):
        trm_jax.from_torch(str(missing), CFG)
    assert not missing.parent.exists()
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(trm_jax.PtFormatError, match="junk.pt is not a PyTorch checkpoint"):
        trm_jax.from_torch(str(junk), CFG)


def test_out_of_bounds_view_is_refused(tmp_path):
    # A crafted size/stride must not read past the storage (as_strided would read other memory).
    storage = np.arange(4, dtype=np.float32)
    with pytest.raises(pt_format.PtFormatError, match="reaches element"):
        pt_format._rebuild_tensor_v2(storage, 2, (2, 2), (2, 1))
    np.testing.assert_array_equal(pt_format._rebuild_tensor_v2(storage, 1, (3,), (1,)), [1, 2, 3])


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError, as after `pip install -e .`
import numpy as np
import trm_jax
cfg = {cfg!r}
v = trm_jax.from_torch({path!r}, cfg)
trm_jax.save_torch(v, cfg, {out!r})
back = trm_jax.from_torch({out!r}, cfg)
np.testing.assert_array_equal(back["params"]["inner"]["lm_head"]["kernel"], v["params"]["inner"]["lm_head"]["kernel"])
try:
    trm_jax.to_torch(v, cfg)
except ImportError as e:
    print("TO_TORCH:", e)
assert all(isinstance(a, np.ndarray) for a in trm_jax.to_torch(v, cfg, as_numpy=True).values())
print("OK", "torch" in sys.modules and sys.modules["torch"] is None)
"""


def test_reader_and_writer_work_without_torch(tmp_path):
    variables = trm_jax.init_variables(CFG, jax.random.PRNGKey(1))
    path = tmp_path / "ref.pt"
    torch.save(trm_jax.to_torch(variables, CFG), path)
    script = _NO_TORCH.format(cfg=CFG, path=str(path), out=str(tmp_path / "out.pt"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK True" in proc.stdout
    assert "TO_TORCH: to_torch returns torch tensors and needs PyTorch: pip install -e '.[torch]'" in proc.stdout
    # What the torch-free process wrote is what torch reads.
    written = torch.load(tmp_path / "out.pt", weights_only=True)
    for key, tensor in trm_jax.to_torch(variables, CFG).items():
        assert torch.equal(written[key], tensor), key
