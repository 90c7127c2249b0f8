"""Base TFDS builder for puzzle datasets: options -> config name, schema, ArrayRecord, metadata.

A dataset subclasses ``PuzzleDatasetBuilder`` and provides

* ``Options``: a frozen dataclass of every option that changes the data (counts, ratings,
  augmentation, importer paths, seed, ...), with optional ``PRESETS`` (name -> overrides);
* ``static_metadata()``: seq_len, vocab_size, ... (``common.StaticMetadata``);
* ``generate_groups(split)``: yields ``common.PuzzleGroup`` in set order;
* optionally ``extra_features()``: TFDS features of per-puzzle / per-example extras
  (e.g. ARC: transform id, colour permutation, task name), and ``splits()``.

The base derives a TFDS ``BuilderConfig`` whose *name* is a readable summary plus a hash of
all options, so each option set has its own directory
``<data_dir>/<dataset>/<config name>/<version>/`` (a tiny and a full build never collide).
It numbers groups/puzzles, checks shapes and token ranges, writes ArrayRecord (works without
TensorFlow: TFDS encodes with numpy) in generation order, and stores the per-split
``PuzzleDatasetMetadata`` and the options in the dataset's ``metadata.json``.

Large splits: TFDS's writer passes every serialized example through its ``Shuffler``, which
keeps ~1 GB in memory and then spills to disk through ``tf.io.gfile`` (TensorFlow); with
``disable_shuffling`` every spilled record also lands in one bucket that is sorted in memory
when read back, i.e. the whole split in RAM. Our examples arrive in key order already, so the
builder swaps in ``KeyOrderSpool`` for the duration of its own ``_generate_splits``: an
append-only file of the serialized examples (plain Python I/O) read back sequentially. Memory
stays bounded at any size, no TensorFlow is needed, and the spool doubles as the checkpoint of
an interrupted build: whenever the column store has a full chunk (at a group boundary; about
every 65k examples or 128 MB of columns) the spool, the column chunks and the counters are
committed to ``<data_dir>/<name>/<config>/build_state/``; a re-run continues each split from
its last commit (``generate_groups_from``), and the directory is removed once the dataset is
complete. The swap goes through TFDS's module attribute ``shuffle.Shuffler`` (the one name
TFDS's ``Writer`` builds it by) and is undone when the build returns;
``tests/test_data_large_split.py`` checks the result against TFDS's own in-memory writer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import itertools
import logging
import os
import shutil
import struct
import typing
import uuid
import zlib
from typing import Any, BinaryIO, ClassVar, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tensorflow_datasets.core.constants import INCOMPLETE_PREFIX

from data_pipeline.arrays import ARRAYS_DIR, ColumnWriter
from data_pipeline.common import (DataError, PuzzleDatasetMetadata, PuzzleGroup,
                                  StaticMetadata)

METADATA_KEY = "puzzle_metadata"  # key of the per-split metadata in metadata.json
OPTIONS_KEY = "options"
BUILD_STATE_DIR = "build_state"   # <data_dir>/<name>/<config>/build_state: resumable progress
# Bump when the spool / state layout or the meaning of the records changes, so that an older
# interrupted build is started over instead of continued.
_STATE_FORMAT = 1


class _QuietCustomConfig(logging.Filter):
    """Drop TFDS's "Using custom data configuration" warning: options-derived configs are the
    normal case here, and the warning would repeat on every load."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_QuietCustomConfig())


@dataclasses.dataclass(eq=False)
class PuzzleBuilderConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying the dataset's options dataclass."""

    options: Any = None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (e.g. a string from the command line) to the field's type."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if not optional:
            raise ValueError(f"option {key!r} may not be None")
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "y"):
                    return True
                if value.lower() in ("0", "false", "no", "n"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key!r}: cannot read {value!r} as {base.__name__}") from None
    return value


def _conform(value: Any, feature: tfds.features.FeatureConnector, where: str) -> Any:
    """Cast numeric extras to the feature's dtype (TFDS refuses e.g. int64 for an int32 Tensor)
    when no value changes."""
    if not isinstance(feature, tfds.features.Tensor) or isinstance(value, (str, bytes)):
        return value
    arr = np.asarray(value)
    dtype = feature.np_dtype
    if arr.dtype == dtype or arr.dtype.kind not in "biuf":
        return value
    cast = arr.astype(dtype)
    if not np.array_equal(cast, arr):
        raise ValueError(f"{where}: values do not fit {np.dtype(dtype).name}")
    return cast


# -- Writing without TensorFlow, resumably ------------------------------------------------------
_LENGTH = struct.Struct("<Q")


class KeyOrderSpool:
    """Drop-in for TFDS's ``shuffle.Shuffler`` when shuffling is disabled and keys are 0, 1, 2, ...

    TFDS's ``Writer`` calls ``add(key, serialized)`` per example and, in ``finalize``, reads
    ``num_examples`` / ``size`` / ``bucket_lengths`` and iterates ``(key, serialized)`` in key
    order to write the ArrayRecord shards. This class appends each record (8-byte little-endian
    length + the zlib-compressed bytes: token records are mostly padding, and an uncompressed
    spool of ARC-AGI-1 would take ~30 GB) to ``path`` with ordinary file I/O and streams them
    back in the same order: no sort, no TensorFlow, a few MB of memory at any split size.
    ``resume`` = (byte offset, examples, payload bytes) of a commit: the file is truncated
    there and appending continues.
    """

    def __init__(self, path: str, resume: tuple[int, int, int] | None = None):
        self.path = path
        offset, self._num_examples, self._total_bytes = resume or (0, 0, 0)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if resume:
            self._file: BinaryIO | None = open(path, "r+b")
            self._file.truncate(offset)
            self._file.seek(offset)
        else:
            self._file = open(path, "wb")
        self._read_only = False

    # The attributes TFDS's Writer uses.
    @property
    def size(self) -> int:
        """Bytes of the records (not counting the length prefixes), as ``Shuffler.size``."""
        return self._total_bytes

    @property
    def num_examples(self) -> int:
        return self._num_examples

    @property
    def bucket_lengths(self) -> list[int]:
        return [self._num_examples]  # one "bucket", like the Shuffler's in-memory mode

    def add(self, key: Any, data: bytes) -> None:
        if self._read_only:
            raise AssertionError("add() cannot be called after __iter__.")
        if key != self._num_examples:
            raise ValueError(f"KeyOrderSpool: example key {key!r} arrived as example "
                             f"{self._num_examples}; keys must be 0, 1, 2, ... in order")
        assert self._file is not None
        packed = zlib.compress(data, 1)
        self._file.write(_LENGTH.pack(len(packed)))
        self._file.write(packed)
        self._num_examples += 1
        self._total_bytes += len(data)

    def commit(self) -> tuple[int, int, int]:
        """Make the records so far durable; returns (byte offset, examples, payload bytes)."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell(), self._num_examples, self._total_bytes

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        self._read_only = True
        if self._file is not None:
            self._file.close()
            self._file = None
        with open(self.path, "rb", buffering=1 << 22) as f:
            for key in range(self._num_examples):
                head = f.read(_LENGTH.size)
                size = _LENGTH.unpack(head)[0] if len(head) == _LENGTH.size else -1
                data = f.read(size) if size >= 0 else b""
                if size < 0 or len(data) != size:
                    raise OSError(f"{self.path}: spool ends at record {key} of {self._num_examples}")
                yield key, zlib.decompress(data)


@dataclasses.dataclass
class _SplitProgress:
    """Counters of a split at its last commit (``build_state/<split>/state.json``)."""

    examples: int = 0
    puzzles: int = 0
    groups: int = 0
    last_set: int = 0
    complete: bool = False
    spool: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0])  # KeyOrderSpool.commit()
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)        # ColumnWriter.checkpoint()


class _SplitCheckpoint:
    """The resumable state of one split being written: its spool, column chunks and counters."""

    def __init__(self, directory: str, fingerprint: str):
        self.directory = directory
        self.fingerprint = fingerprint
        self.state_path = os.path.join(directory, "state.json")
        self.columns_dir = os.path.join(directory, "columns")
        self.progress = self._load()
        if self.progress.examples == 0:  # nothing usable: start clean
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory)
        resume = tuple(self.progress.spool) if self.progress.examples else None
        self.spool = KeyOrderSpool(os.path.join(directory, "records.bin"), resume)

    def _load(self) -> _SplitProgress:
        try:
            with open(self.state_path) as f:
                stored = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return _SplitProgress()
        if stored.get("format") != _STATE_FORMAT or stored.get("fingerprint") != self.fingerprint:
            logging.getLogger(__name__).warning("%s: build state of another version; starting over",
                                                self.directory)
            return _SplitProgress()
        progress = _SplitProgress(**stored["progress"])
        # The files of the commit must all be there (a partly deleted state starts over).
        records = os.path.join(self.directory, "records.bin")
        chunks = [os.path.join(self.columns_dir, name)
                  for names in progress.columns.get("chunks", {}).values() for name in names]
        if (not os.path.isfile(records) or os.path.getsize(records) < progress.spool[0]
                or not all(os.path.isfile(c) for c in chunks)):
            logging.getLogger(__name__).warning("%s: build state is incomplete; starting over",
                                                self.directory)
            return _SplitProgress()
        return progress

    def commit(self, progress: _SplitProgress) -> None:
        """Record ``progress`` (its columns already flushed) after syncing the spool to it."""
        progress.spool = list(self.spool.commit())
        if progress.spool[1] != progress.examples:
            raise RuntimeError(f"{self.directory}: the spool holds {progress.spool[1]} examples but "
                               f"{progress.examples} were generated")
        tmp = self.state_path + f".tmp{uuid.uuid4().hex[:6]}"
        with open(tmp, "w") as f:
            json.dump({"format": _STATE_FORMAT, "fingerprint": self.fingerprint,
                       "progress": dataclasses.asdict(progress)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        self.progress = progress


class PuzzleDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class of the puzzle dataset builders (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    Options: ClassVar[type] = type(None)
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # Extras that the loader's batches carry beside inputs/labels/puzzle_identifiers
    # (e.g. the capsule dataset's float ``sketches``); other extras stay per-example only.
    batch_extras: ClassVar[tuple[str, ...]] = ()
    # Files of the built dataset a training run copies into its workdir (a language dataset's
    # tokenizer.json): what using a checkpoint needs besides the checkpoint.
    artifacts: ClassVar[tuple[str, ...]] = ()
    # Examples per committed chunk of a build in progress (None: ~65k, arrays.py). A committed chunk
    # is a shard a run can train on while the build goes on (data_pipeline/streaming.py); a
    # dataset meant for incremental training commits small ones.
    SHARD_ROWS: ClassVar[int | None] = None

    def batch_view(self) -> Any:
        """``view(batch, columns, indices) -> batch`` applied to every gathered batch, or None.

        For what is cheaper to derive when read than to store: the pixel datasets render their
        images from the stored text or grid here (data_pipeline/vision.py), where storing them
        would take 150 KB per example (400 GB for ARC with 1000 augmentations). ``columns`` are
        the split's stored columns, ``indices`` the example rows of the batch; it must be a pure
        function of them (so a resumed run sees the same batches)."""
        return None

    def __init_subclass__(cls, **kwargs: Any):
        # Datasets live in this package's registry (registry.py), not TFDS's global one, so a
        # re-imported or test-defined builder never clashes with a name TFDS already holds.
        kwargs.setdefault("skip_registration", True)
        super().__init_subclass__(**kwargs)

    def __init__(self, *, options: Any = None, data_dir: str | None = None, num_workers: int = 1,
                 shard_rows: int | None = None,
                 **kwargs: Any):
        opts = self.make_options(options)
        # True while TFDS describes the features (``_info``): a builder whose static metadata needs
        # costly planning (ARC's identifier count) answers with what describing needs (seq_len).
        self._describing = False
        config = PuzzleBuilderConfig(name=self.config_name(opts), description=self.describe(opts),
                                     options=opts)
        self.options = opts
        self.num_workers = max(1, int(num_workers))  # generation speed only; not in the name
        # Examples per committed shard of a build in progress (not in the name: the data is the same).
        self.shard_rows = int(shard_rows or 0) or self.SHARD_ROWS
        self._checkpoints: dict[str, _SplitCheckpoint] = {}  # split -> its state while writing
        super().__init__(data_dir=data_dir, config=config, file_format="array_record", **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        # TFDS's default probes the `importlib_resources` backport, which only the optional
        # etils[epath] extra installs; the class's own file is all TFDS needs here.
        return epath.Path(inspect.getfile(cls))

    # -- options ----------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.Options)}

    @classmethod
    def make_options(cls, options: Any = None) -> Any:
        """Options dataclass from a mapping (or an instance); ``preset`` expands ``PRESETS``.

        Unknown keys raise ValueError listing the valid ones; values are coerced to the
        field types, and path options are made absolute so the directory name is stable.
        """
        if isinstance(options, cls.Options):
            return cls.normalize_options(options)
        # None means "the default" (config files often spell unset options as None).
        raw = {k: v for k, v in dict(options or {}).items() if v is not None}
        preset = raw.pop("preset", None)
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.PRESETS:
                raise ValueError(f"{cls.name}: unknown preset {preset!r}; known: {sorted(cls.PRESETS)}")
            values.update(cls.PRESETS[preset])
        values.update(raw)
        fields = cls.option_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{cls.name}: unknown options {unknown}; valid options: {sorted(fields)}"
                             " (and 'preset')")
        hints = typing.get_type_hints(cls.Options)
        coerced = {k: _coerce(v, hints[k], k) for k, v in values.items()}
        return cls.normalize_options(cls.Options(**coerced))

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        """Hook: resolve defaults / check values. The base makes path options (``source``,
        ``*_csv``, ``*_dir``, ``*_path``) absolute, so the directory name does not depend on
        the working directory."""
        updates = {}
        for name in cls.option_fields():
            value = getattr(options, name)
            if value and isinstance(value, str) and (
                    name == "source" or name.endswith(("_csv", "_dir", "_path"))):
                updates[name] = os.path.abspath(os.path.expanduser(value))
        return dataclasses.replace(options, **updates) if updates else options

    @classmethod
    def summary(cls, options: Any) -> str:
        """Hook: short readable part of the config name."""
        return "cfg"

    @classmethod
    def config_name(cls, options: Any) -> str:
        canonical = json.dumps(dataclasses.asdict(options), sort_keys=True)
        digest = hashlib.sha1(f"{cls.name}:{canonical}".encode()).hexdigest()[:10]
        return f"{cls.summary(options)}_{digest}"

    @classmethod
    def describe(cls, options: Any) -> str:
        return json.dumps(dataclasses.asdict(options), sort_keys=True)

    # -- hooks for subclasses -------------------------------------------------------------
    def static_metadata(self) -> StaticMetadata:
        raise NotImplementedError

    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {}

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        raise NotImplementedError

    def planned_size(self, split: str) -> tuple[int, int, int] | None:
        """``(groups, puzzles, examples)`` that ``split`` will have, if known before generating it
        (None: unknown). Incremental training needs the training split's, for the length of its
        schedule while the build is still running (data_pipeline/streaming.py)."""
        return None

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        """The groups of ``split`` from group ``start`` on (a resumed build skips the groups it
        has written). The default generates and drops the first ``start``; a builder that can
        jump ahead cheaply overrides this (the output must equal the tail of
        ``generate_groups``)."""
        return itertools.islice(self.generate_groups(split), start, None)

    # -- resumable building ----------------------------------------------------------------
    @property
    def build_state_dir(self) -> str:
        """Where an interrupted build keeps its progress (outside TFDS's temporary directory,
        which a failed build deletes): ``<data_dir>/<name>/<config>/build_state``."""
        return os.path.join(os.fspath(self.data_dir_root), self.name, self.builder_config.name,
                            BUILD_STATE_DIR)

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        # A killed build leaves TFDS's temporary directory (incomplete.XXXXXX_<version>, as big
        # as the dataset) behind; its progress is in build_state, so the leftover is garbage.
        # (One builder per configuration at a time, as ensure.py asks of multi-host setups.)
        config_dir = os.path.dirname(os.fspath(self.data_path))
        if os.path.isdir(config_dir):
            for entry in os.listdir(config_dir):
                if entry.startswith(INCOMPLETE_PREFIX) and entry.endswith(f"_{self.version}"):
                    logging.getLogger(__name__).warning("removing %s left by an interrupted build",
                                                        os.path.join(config_dir, entry))
                    shutil.rmtree(os.path.join(config_dir, entry), ignore_errors=True)
        super().download_and_prepare(*args, **kwargs)
        # The dataset is complete: its progress is no longer needed (a rebuild starts over).
        shutil.rmtree(self.build_state_dir, ignore_errors=True)

    def _generate_splits(self, dl_manager: Any, download_config: Any) -> Any:
        # TFDS's Writer builds its Shuffler as ``shuffle.Shuffler(dirpath=..., hash_salt=<split
        # name>, disable_shuffling=..., ignore_duplicates=...)``. For our builds only, that name
        # makes a KeyOrderSpool (see the module docstring for why); restored afterwards.
        original = tfds_shuffle.Shuffler

        def make_shuffler(dirpath: Any, hash_salt: Any, disable_shuffling: bool = False,
                          ignore_duplicates: bool = False) -> Any:
            if not disable_shuffling or ignore_duplicates:
                return original(dirpath=dirpath, hash_salt=hash_salt,
                                disable_shuffling=disable_shuffling, ignore_duplicates=ignore_duplicates)
            split = str(hash_salt)  # TFDS salts with the split name
            checkpoint = _SplitCheckpoint(os.path.join(self.build_state_dir, split),
                                          fingerprint=f"{self.builder_config.name}/{self.version}")
            self._checkpoints[split] = checkpoint
            return checkpoint.spool

        tfds_shuffle.Shuffler = make_shuffler
        try:
            return super()._generate_splits(dl_manager, download_config)
        finally:
            tfds_shuffle.Shuffler = original
            self._checkpoints.clear()

    # -- TFDS ------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        self._describing = True
        try:
            seq_len = self.static_metadata().seq_len
        finally:
            self._describing = False
        # BYTES encoding keeps int32 as raw bytes: 2-8x faster to decode than int64 lists.
        token = lambda: tfds.features.Tensor(shape=(seq_len,), dtype=np.int32,
                                             encoding=tfds.features.Encoding.BYTES)
        features = {
            "inputs": token(),
            "labels": token(),
            "puzzle_identifier": tfds.features.Scalar(dtype=np.int32),
            "group_id": tfds.features.Scalar(dtype=np.int32),
            "puzzle_index": tfds.features.Scalar(dtype=np.int32),
            "set_index": tfds.features.Scalar(dtype=np.int32),
        }
        extras = self.extra_features()
        clash = set(extras) & set(features)
        if clash:
            raise ValueError(f"extra features {sorted(clash)} clash with the core schema")
        features.update(extras)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name} puzzles for tiny recursive models; options {self.describe(self.options)}",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,  # keep (set, group, puzzle) order: the loader relies on it
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(split) for split in self.splits()}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        static = self.static_metadata()
        set_position = {name: i for i, name in enumerate(static.sets)}
        extra_specs = self.extra_features()
        extra_names = tuple(extra_specs)
        # Inside download_and_prepare, data_path is TFDS's temporary directory, renamed to the
        # final one on success: the columns are published together with the ArrayRecord files.
        columns_dir = os.path.join(os.fspath(self.data_path), ARRAYS_DIR)
        os.makedirs(columns_dir, exist_ok=True)
        # Within our _generate_splits the TFDS writer has made this split's checkpoint (its
        # spool); called any other way there is nothing to resume and no state is kept.
        checkpoint = self._checkpoints.get(split)
        progress = checkpoint.progress if checkpoint else _SplitProgress()
        columns = ColumnWriter(columns_dir, split, auto_flush=checkpoint is None, chunk_rows=self.shard_rows,
                               spool_dir=checkpoint.columns_dir if checkpoint else None)
        if progress.examples:
            columns.restore(progress.columns)
            logging.getLogger(__name__).warning(
                "%s %s: resuming an interrupted build after %d groups (%d examples)%s", self.name,
                split, progress.groups, progress.examples, " (split complete)" if progress.complete else "")
        example, puzzle, group = progress.examples, progress.puzzles, progress.groups
        last_set = progress.last_set

        def commit(complete: bool = False) -> None:
            columns.flush()
            assert checkpoint is not None
            checkpoint.commit(_SplitProgress(examples=example, puzzles=puzzle, groups=group,
                                             last_set=last_set, complete=complete,
                                             columns=columns.checkpoint()))

        groups = iter(()) if progress.complete else self.generate_groups_from(split, group)
        for grp in groups:
            # Every example of the groups before this one has reached the spool (TFDS writes
            # each yielded example before asking for the next): a consistent commit point.
            if checkpoint is not None and columns.chunk_full:
                commit()
            where = f"{self.name} {split} group {group}"
            if grp.set_name not in set_position:
                raise ValueError(f"{where}: set {grp.set_name!r} is not in {static.sets}")
            set_index = set_position[grp.set_name]
            if set_index < last_set:
                raise ValueError(f"{where}: groups must come in set order {static.sets}")
            last_set = set_index
            if not grp.puzzles:
                raise ValueError(f"{where}: a group needs at least one puzzle")
            for pz in grp.puzzles:
                inputs = np.asarray(pz.inputs)
                labels = np.asarray(pz.labels)
                n = inputs.shape[0] if inputs.ndim == 2 else 0
                if inputs.shape != (n, static.seq_len) or labels.shape != inputs.shape or n == 0:
                    raise ValueError(f"{where} puzzle {puzzle}: inputs {inputs.shape} / labels "
                                     f"{labels.shape} must both be [examples>=1, {static.seq_len}]")
                for name, arr in (("inputs", inputs), ("labels", labels)):
                    if arr.min() < 0 or arr.max() >= static.vocab_size:
                        raise ValueError(f"{where} puzzle {puzzle}: {name} tokens outside "
                                         f"[0, {static.vocab_size})")
                if not 0 <= pz.identifier < static.num_puzzle_identifiers:
                    raise ValueError(f"{where} puzzle {puzzle}: identifier {pz.identifier} outside "
                                     f"[0, {static.num_puzzle_identifiers})")
                missing = set(extra_names) - set(pz.extras) - set(pz.example_extras)
                if missing:
                    raise ValueError(f"{where} puzzle {puzzle}: missing extras {sorted(missing)}")
                for i in range(n):
                    record = {
                        "inputs": inputs[i].astype(np.int32),
                        "labels": labels[i].astype(np.int32),
                        "puzzle_identifier": pz.identifier,
                        "group_id": group,
                        "puzzle_index": puzzle,
                        "set_index": set_index,
                    }
                    for name in extra_names:
                        value = (pz.example_extras[name][i] if name in pz.example_extras
                                 else pz.extras[name])
                        record[name] = _conform(value, extra_specs[name], f"{where} extra {name!r}")
                    # The columns take the builder's own (narrow, e.g. uint8) token rows: a
                    # pending chunk then holds 4x fewer bytes than with the int32 copies.
                    columns.add({**record, "inputs": inputs[i], "labels": labels[i]})
                    yield example, record
                    example += 1
                puzzle += 1
            group += 1
        if example == 0:
            raise DataError(f"{self.name} {split}: no examples (every puzzle was filtered out?)")
        if checkpoint is not None and not progress.complete:
            commit(complete=True)
        columns.finish()
        meta = PuzzleDatasetMetadata(
            seq_len=static.seq_len, vocab_size=static.vocab_size, pad_id=static.pad_id,
            ignore_label_id=static.ignore_label_id, blank_identifier_id=static.blank_identifier_id,
            num_puzzle_identifiers=static.num_puzzle_identifiers, total_groups=group,
            mean_puzzle_examples=example / puzzle, total_puzzles=puzzle, sets=tuple(static.sets),
            num_examples=example)
        self.info.metadata.setdefault(METADATA_KEY, {})[split] = meta.to_json()
        self.info.metadata[OPTIONS_KEY] = dataclasses.asdict(self.options)


    # -- reading back ------------------------------------------------------------------------
    def is_built(self) -> bool:
        """Whether the dataset is prepared. (TFDS's ``is_prepared`` logs a misleading warning
        for a directory that does not exist yet; TFDS renames the finished directory into
        place, so the info file marks a complete build.)"""
        return os.path.isfile(os.path.join(os.fspath(self.data_path), "dataset_info.json"))

    def split_metadata(self) -> dict[str, PuzzleDatasetMetadata]:
        """Per-split metadata of the prepared dataset (from ``<data_path>/metadata.json``)."""
        path = os.path.join(os.fspath(self.data_path), "metadata.json")
        try:
            with open(path) as f:
                stored = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.name}: no prepared dataset at {self.data_path}; build it "
                                    "with data_pipeline.ensure_built(...) or "
                                    f"`python -m data_pipeline.build {self.name}`") from None
        if METADATA_KEY not in stored:
            raise DataError("no puzzle metadata in the dataset's metadata.json", path=path)
        return {split: PuzzleDatasetMetadata.from_json(m) for split, m in stored[METADATA_KEY].items()}
