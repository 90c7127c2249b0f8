"""Read and write PyTorch ``.pt`` checkpoints without PyTorch, and without running their pickles.

``torch.save`` (default since PyTorch 1.6) writes a zip archive::

    <archive>/data.pkl              the object (state dict), pickled; tensors are
                                    ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
                                    calls whose storages are persistent ids
    <archive>/data/<key>            the raw bytes of each storage
    <archive>/byteorder             ``little`` or ``big`` (absent in old files: native)
    <archive>/version, .format_version, .storage_alignment, .data/serialization_id

A pickle can name any importable callable, so loading an untrusted ``.pt`` with plain
``pickle`` (or ``torch.load(weights_only=False)``) can run arbitrary code. :func:`load_pt`
unpickles ``data.pkl`` with an allow-list: the tensor rebuild functions, the storage classes,
``collections.OrderedDict`` and a few harmless builtins. Anything else is refused with an
:class:`UnsafeCheckpointError` naming the file and the global it wanted, unless the caller
passes ``trust_pickle=True`` (which then uses ``torch.load(weights_only=False)``).

:func:`save_pt` writes the same layout (64-byte aligned storage records, as ``torch.save``)
from NumPy arrays, so ``torch.load(path, weights_only=True)`` reads it back.
"""
from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

PathLike = Union[str, os.PathLike]

# torch storage class name -> NumPy dtype of one element.
STORAGE_DTYPES: Dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "ComplexDoubleStorage": np.dtype(np.complex128), "ComplexFloatStorage": np.dtype(np.complex64),
    "UntypedStorage": np.dtype(np.uint8),
}
_DTYPE_STORAGES: Dict[np.dtype, str] = {d: n for n, d in STORAGE_DTYPES.items() if n != "UntypedStorage"}
STORAGE_ALIGNMENT = 64  # bytes; torch.save aligns every record's data (mmap-able files)


class PtFormatError(ValueError):
    """A file that is not a readable PyTorch checkpoint (the path is named)."""


class UnsafeCheckpointError(PtFormatError):
    """A checkpoint whose pickle asks for something other than tensors and plain containers."""


# ----------------------------------------------------------------------------- reading

class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: only the element dtype matters here."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size: Tuple[int, ...], stride: Tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """The tensor ``storage[offset:]`` viewed with ``size``/``stride`` (in elements), as an owned array.

    The view's extent is checked against the storage first: a crafted file must not make
    ``as_strided`` read outside the buffer.
    """
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise PtFormatError(f"malformed tensor: offset {offset}, size {size}, stride {stride}")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise PtFormatError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches element {last} of a "
                            f"storage of {storage.size}")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=tuple(s * item for s in stride),
                                           writeable=False)
    return np.array(view, copy=True)  # owned and C-contiguous: no alias into the zip buffer


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> np.ndarray:
    return data


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)  # torch.device('cuda', 0) -> 'cuda:0'; the device is not used here


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); allow only that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PtFormatError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# (module, name) -> what it unpickles to. Everything a tensor state dict (or a
# {"model": ..., "step": ...} checkpoint) of the reference needs, and nothing that acts.
_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): _device,
    ("torch", "Size"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
    ("builtins", "slice"): slice, ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` resolving only allow-listed globals; storages come from the zip."""

    def __init__(self, data: bytes, path: str, load_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._path, self._load_storage = path, load_storage

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles use Python 2 names (__builtin__.set); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"refusing to load {self._path}: it needs '{module}.{name}', which is not a tensor; checkpoints from "
                "untrusted sources can run code when loaded. If you trust this file, pass trust_pickle=True "
                "(--trust_pickle on the command line; needs torch)")
        return found

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise PtFormatError(f"{self._path}: unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        return self._load_storage(str(key), storage_type.dtype, int(numel))


def _archive_prefix(names: list, path: str) -> str:
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise PtFormatError(f"{path} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl)")
    return pkl[0][: -len("data.pkl")]


def _read_storage(raw: bytes, dtype: np.dtype, numel: int, byteorder: str, where: str) -> np.ndarray:
    if len(raw) < numel * dtype.itemsize:
        raise PtFormatError(f"{where}: {len(raw)} bytes for {numel} elements of {dtype}")
    raw = raw[: numel * dtype.itemsize]
    if byteorder == sys.byteorder or dtype.itemsize == 1:
        return np.frombuffer(raw, dtype)
    if dtype.kind == "c":  # swap each real/imaginary half
        half = np.dtype(f"f{dtype.itemsize // 2}").newbyteorder(">" if byteorder == "big" else "<")
        return np.frombuffer(raw, half).astype(half.newbyteorder("=")).view(dtype)
    order = ">" if byteorder == "big" else "<"  # ml_dtypes (bfloat16) have no byte-order variant: swap as uints
    return np.frombuffer(raw, np.dtype(f"{order}u{dtype.itemsize}")).astype(f"=u{dtype.itemsize}").view(dtype)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = _archive_prefix(names, path)
        byteorder = sys.byteorder
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise PtFormatError(f"{path}: unknown byteorder record {byteorder!r}")
        cache: Dict[str, np.ndarray] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in cache:  # tensors that share a storage (views) share its array
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise PtFormatError(f"{path}: storage record {record} is missing")
                cache[key] = _read_storage(zf.read(record), dtype, numel, byteorder, f"{path}:{record}")
            return cache[key]

        return _RestrictedUnpickler(zf.read(prefix + "data.pkl"), path, load_storage).load()


def _to_numpy_tree(obj: Any) -> Any:
    """torch tensors -> NumPy (bfloat16 kept as ml_dtypes.bfloat16), containers recursed."""
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        import torch

        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.float().numpy().astype(ml_dtypes.bfloat16)  # exact: float32 holds every bfloat16
        return t.numpy().copy()
    if isinstance(obj, Mapping):
        out = {k: _to_numpy_tree(v) for k, v in obj.items()}
        return collections.OrderedDict(out) if isinstance(obj, collections.OrderedDict) else out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy_tree(v) for v in obj)
    return obj


def _torch_or_error(path: str, why: str) -> Any:
    try:
        import torch
    except ImportError:
        raise PtFormatError(f"{path}: {why}, which needs PyTorch: pip install -e '.[torch]'") from None
    return torch


def load_pt(path: PathLike, trust_pickle: bool = False) -> Any:
    """The object saved in a PyTorch checkpoint file, with tensors as NumPy arrays.

    Zip-format files (``torch.save``'s default since 1.6) are read without torch and
    without running their pickle: only tensors, ``OrderedDict`` and plain containers are
    rebuilt. bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays.

    Args:
      path: the checkpoint file.
      trust_pickle: the file is trusted: if its pickle needs more than tensors, load it
        with ``torch.load(weights_only=False)`` (runs its code; needs torch).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      UnsafeCheckpointError: the pickle names a global outside the allow-list (the file
        and the global are named) and ``trust_pickle`` is false.
      PtFormatError: the file is not a PyTorch checkpoint, or is damaged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if os.path.isdir(path):
        raise PtFormatError(f"{path} is a directory, not a PyTorch checkpoint file")
    if zipfile.is_zipfile(path):
        try:
            return _load_zip(path)
        except UnsafeCheckpointError:
            if not trust_pickle:
                raise
            torch = _torch_or_error(path, "trust_pickle=True loads it with torch.load(weights_only=False)")
            return _to_numpy_tree(torch.load(path, map_location="cpu", weights_only=False))
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError) as e:
            raise PtFormatError(f"{path} is a damaged PyTorch checkpoint: {type(e).__name__}: {e}") from e
    # Not a zip: the legacy torch.save format (before 1.6, or _use_new_zipfile_serialization=False).
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":
        raise PtFormatError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    torch = _torch_or_error(path, "is in the legacy (pre-1.6, non-zip) torch.save format, which is read by torch")
    try:
        # weights_only=True is torch's own restricted unpickler: safe for untrusted files.
        return _to_numpy_tree(torch.load(path, map_location="cpu", weights_only=not trust_pickle))
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) refused it ({str(e).splitlines()[0]}); "
            "checkpoints from untrusted sources can run code when loaded. If you trust this file, pass "
            "trust_pickle=True") from None


# ----------------------------------------------------------------------------- writing

class _Global:
    """A global written by name (``torch._utils._rebuild_tensor_v2``) without importing its module."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> None:  # the pickler requires reduce functions to be callable
        raise TypeError(f"{self.module}.{self.name} is a placeholder for pickling")


class _Storage:
    def __init__(self, key: str, storage_name: str, numel: int):
        self.key, self.storage_name, self.numel = key, storage_name, numel


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")


class _Tensor:
    """Pickles as ``_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage, shape: Tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        stride, acc = [], 1
        for n in reversed(self.shape):
            stride.append(acc)
            acc *= n
        return _REBUILD_TENSOR, (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False,
                                 collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the Python pickler: its dispatch table can write _Global by name
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj: Any) -> Optional[Tuple[Any, ...]]:
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.storage_name), obj.key, "cpu", obj.numel)
        return None

    def _save_global_by_name(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_by_name


def _prepare(obj: Any, storages: Dict[str, np.ndarray], where: str) -> Any:
    """``obj`` with every array replaced by a :class:`_Tensor` whose bytes go to ``storages``."""
    if isinstance(obj, Mapping):
        items = [(k, _prepare(v, storages, f"{where}[{k!r}]")) for k, v in obj.items()]
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_prepare(v, storages, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        array = np.asarray(obj)
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # (keeps 0-d arrays 0-d)
        if array.dtype not in _DTYPE_STORAGES:
            raise TypeError(f"{where}: dtype {array.dtype} has no PyTorch storage type")
        key = str(len(storages))
        storages[key] = array
        return _Tensor(_Storage(key, _DTYPE_STORAGES[array.dtype], int(array.size)), tuple(array.shape))
    raise TypeError(f"{where}: cannot save a {type(obj).__name__} in a tensor checkpoint")


def _aligned_record(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Write ``data`` stored (uncompressed) so that it starts at a multiple of STORAGE_ALIGNMENT,
    padding the local header with an ``FB`` extra field exactly as torch's writer does."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for adding a 20-byte zip64 field
    header = 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = (-(zf.start_dir + header)) % STORAGE_ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 0x4246 = "FB"
    zf.writestr(info, data)


def save_pt(obj: Any, path: PathLike) -> None:
    """Write ``obj`` (nested dicts/lists of NumPy or JAX arrays and Python scalars) as a ``.pt`` file.

    The file has ``torch.save``'s zip layout, so ``torch.load(path, weights_only=True)``
    returns the same structure with torch tensors (bfloat16 arrays become bfloat16 tensors).
    No torch is needed. The archive is named after the file, as ``torch.save`` does.
    """
    path = os.fspath(path)
    storages: Dict[str, np.ndarray] = {}
    prepared = _prepare(obj, storages, "checkpoint")
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(prepared)
    stem = os.path.splitext(os.path.basename(path))[0]
    archive = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "archive"
    digest = hashlib.sha1(buf.getvalue())
    for array in storages.values():
        digest.update(array.tobytes())
    serialization_id = str(int(digest.hexdigest(), 16))[:40].rjust(40, "0")
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        _aligned_record(zf, f"{archive}/data.pkl", buf.getvalue())
        _aligned_record(zf, f"{archive}/.format_version", b"1")
        _aligned_record(zf, f"{archive}/.storage_alignment", str(STORAGE_ALIGNMENT).encode())
        _aligned_record(zf, f"{archive}/byteorder", sys.byteorder.encode())
        for key, array in storages.items():
            _aligned_record(zf, f"{archive}/data/{key}", array.tobytes())
        _aligned_record(zf, f"{archive}/version", b"3\n")
        _aligned_record(zf, f"{archive}/.data/serialization_id", serialization_id.encode())
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint
