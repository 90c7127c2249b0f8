"""Throughput of the data pipeline: builders (examples/s) and loaders (batches/s at B=768).

    python experiments/benchmark_data.py [--data_dir DIR] [--out experiments/results/data_throughput.md]
                                         [--scale small|medium] [--batch 768]

Measures, on this machine:

* build: wall time of ``ensure_built(..., rebuild=True)`` per dataset configuration, as
  examples written per second and original puzzles generated per second (generation runs
  on ``default_num_workers()`` processes);
* import: the Sudoku-Extreme / Maze-Hard CSV importers on synthetic CSVs in the public layout;
* load: global batches of 768 per second for (a) the column-store gather alone, (b) the Grain
  train iterator without prefetch (the synchronous cost of one batch), (c) the Grain train
  iterator with its default thread prefetch as a trainer sees it, (d) the Grain eval
  iterator, and (e) for contrast, decoding 768 records from ArrayRecord through TFDS.

Writes a markdown report with the figures, the command line and the machine description.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data_pipeline as dp  # noqa: E402
from data_pipeline.maze import generate_mazes  # noqa: E402
from data_pipeline.source import open_split  # noqa: E402
from data_pipeline.sudoku import generate_sudokus  # noqa: E402

SCALES = {
    "small": {
        "sudoku": {"num_train": 200, "num_test": 100, "num_aug": 4},
        "maze": {"num_train": 200, "num_test": 100, "aug": True, "min_path_length": 60},
        "import_rows": 20_000,
    },
    "medium": {
        "sudoku": {"num_train": 1000, "num_test": 1000, "num_aug": 100},
        "maze": {"num_train": 1000, "num_test": 1000, "aug": True, "min_path_length": 110},
        "import_rows": 100_000,
    },
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    import grain
    import jax
    import tensorflow_datasets as tfds
    return (f"{cpu}, {dp.default_num_workers()} cores available, {mem:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}, jax {jax.__version__}, grain {grain.__version__}, "
            f"tensorflow-datasets {tfds.__version__} (no TensorFlow installed: "
            f"{'tensorflow' not in sys.modules})")


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_build(name: str, options: dict, data_dir: str) -> dict:
    meta, seconds = timed(lambda: dp.ensure_built(name, data_dir, options, rebuild=True))
    examples = sum(m.num_examples for m in meta.values())
    originals = sum(m.total_groups for m in meta.values())
    return {"name": name, "options": options, "seconds": seconds, "examples": examples,
            "groups": originals, "examples_per_s": examples / seconds, "groups_per_s": originals / seconds}


def write_sudoku_csv(path: str, rows: int) -> None:
    """A public-layout CSV: 50 generated puzzles and their digit relabellings (valid rows)."""
    base = generate_sudokus(50, seed=123, split="csv")
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for i in range(rows):
            k = i % len(base)
            perm = np.concatenate([[0], rng.permutation(np.arange(1, 10))])
            q, a = perm[base.questions[k]], perm[base.answers[k]]
            f.write(f"bench,{''.join('.' if v == 0 else str(v) for v in q)},"
                    f"{''.join(str(v) for v in a)},{int(base.ratings[k])}\n")


def write_maze_csv(path: str, rows: int) -> None:
    base = generate_mazes(20, seed=123, split="csv", min_path_length=110)
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for i in range(rows):
            k = i % len(base)
            f.write(f"bench,{bytes(base.questions[k].reshape(-1)).decode()},"
                    f"{bytes(base.answers[k].reshape(-1)).decode()},{int(base.ratings[k])}\n")


def bench_import(name: str, rows: int, tmp: str, data_dir: str) -> dict:
    src = os.path.join(tmp, f"{name}_csv")
    os.makedirs(src, exist_ok=True)
    writer = write_sudoku_csv if name == "sudoku" else write_maze_csv
    writer(os.path.join(src, "train.csv"), rows)
    writer(os.path.join(src, "test.csv"), max(1, rows // 10))
    result = bench_build(name, {"source": src}, data_dir)
    result["rows"] = rows + max(1, rows // 10)
    return result


def rate(fn, count: int) -> float:
    fn()  # warm up (page cache, first plan)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def bench_load(name: str, options: dict, data_dir: str, batch: int, steps: int) -> dict:
    source = dp.load(name, "train", data_dir, **options)
    groups = source.metadata.total_groups
    epochs_per_iter = max(1, -(-4 * batch // groups))  # an iteration holds several batches
    rng = np.random.default_rng(0)
    gather = rate(lambda: source.gather(rng.integers(0, len(source), batch)), steps)

    def train_it(threads: int, prefetch: int):
        return dp.train_iterator(name, data_dir, options, global_batch_size=batch, seed=0,
                                 epochs_per_iter=epochs_per_iter, process_index=0, process_count=1,
                                 num_threads=threads, prefetch=prefetch)

    sync_it = train_it(0, 0)
    sync = rate(lambda: next(sync_it), steps)
    pre_it = train_it(2, 4)
    prefetched = rate(lambda: next(pre_it), steps)
    test = dp.load(name, "test", data_dir, **options)
    n_eval = -(-len(test) // batch)

    def one_eval_pass():
        for _ in dp.eval_iterator(name, data_dir, options, global_batch_size=batch,
                                  process_index=0, process_count=1):
            pass

    one_eval_pass()  # warm up
    _, eval_seconds = timed(one_eval_pass)
    builder = dp.make_builder(name, data_dir, options)
    records = builder.as_data_source("train")
    decode = rate(lambda: records.__getitems__(rng.integers(0, len(records), batch).tolist()),
                  max(3, steps // 20))
    return {"name": name, "seq_len": source.metadata.seq_len, "examples": len(source),
            "gather": gather, "sync": sync, "prefetched": prefetched,
            "eval_seconds": eval_seconds, "eval_batches": n_eval, "decode": decode,
            "epochs_per_iter": epochs_per_iter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="default: a temporary directory")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "data_throughput.md"))
    parser.add_argument("--scale", default="medium", choices=sorted(SCALES))
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    scale = SCALES[args.scale]
    tmp = tempfile.mkdtemp(prefix="trm_bench_")
    data_dir = args.data_dir or os.path.join(tmp, "data")
    load_before = load_average()

    builds = [bench_build(name, scale[name], data_dir) for name in ("sudoku", "maze")]
    for b in builds:
        print(f"build {b['name']}: {b['examples']} examples in {b['seconds']:.1f} s")
    generation = []
    for name, fn in (("sudoku", lambda: generate_sudokus(200, seed=9, split="bench",
                                                         num_workers=dp.default_num_workers())),
                     ("maze", lambda: generate_mazes(200, seed=9, split="bench", min_path_length=110,
                                                     num_workers=dp.default_num_workers()))):
        _, seconds = timed(fn)
        generation.append((name, 200, seconds))
        print(f"generate {name}: 200 puzzles in {seconds:.1f} s")
    imports = [bench_import(name, scale["import_rows"] if name == "sudoku" else scale["import_rows"] // 10,
                            tmp, data_dir) for name in ("sudoku", "maze")]
    for b in imports:
        print(f"import {b['name']}: {b['rows']} rows in {b['seconds']:.1f} s")
    loads = [bench_load(name, scale[name], data_dir, args.batch, args.steps) for name in ("sudoku", "maze")]
    for r in loads:
        print(f"load {r['name']}: prefetched {r['prefetched']:.0f} batches/s, sync {r['sync']:.0f}")
    rebuild_columns = []
    for name in ("sudoku", "maze"):
        builder = dp.make_builder(name, data_dir, scale[name])
        path = os.fspath(builder.data_path)
        shutil.rmtree(os.path.join(path, "arrays"))
        _, seconds = timed(lambda: open_split(builder, "train"))
        rebuild_columns.append((name, builder.split_metadata()["train"].num_examples, seconds))

    cmd = "python experiments/benchmark_data.py " + " ".join(sys.argv[1:])
    lines = [
        "# Data pipeline throughput",
        "",
        f"Command: `{cmd.strip()}` (from the repository root, venv active).",
        "",
        f"Machine: {machine()}.",
        f"Load average before / after the run: {load_before} / {load_average()} "
        "(the machine is shared with other jobs, so figures are indicative).",
        "",
        f"## Build (ensure_built with rebuild=True; {dp.default_num_workers()} generation workers)",
        "",
        "| dataset | options | examples written | original puzzles | seconds | examples/s | puzzles/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for b in builds + imports:
        opts = ", ".join(f"{k}={v}" for k, v in b["options"].items() if k != "source")
        opts = ("CSV import of " + str(b["rows"]) + " rows" + (", " + opts if opts else "")) if "rows" in b else opts
        lines.append(f"| {b['name']} | {opts} | {b['examples']} | {b['groups']} | {b['seconds']:.1f} | "
                     f"{b['examples_per_s']:.0f} | {b['groups_per_s']:.1f} |")
    lines += ["", "Generation alone (original puzzles, no augmentation, no writing):", ""]
    for name, n, seconds in generation:
        extra = " (min_path_length=110)" if name == "maze" else ""
        lines.append(f"- {name}{extra}: {n} puzzles in {seconds:.1f} s = {n / seconds:.1f} puzzles/s")
    lines += [
        "",
        "A build's time is generation (sudoku: a pure-Python bitmask search that digs each puzzle "
        "down to a minimal unique one, then rates it) plus writing; the CSV imports, which "
        "generate nothing, show the writing rate (TFDS encoding + ArrayRecord + the .npy columns, "
        "plus CSV validation).",
        "",
        f"## Load (global batch {args.batch}, one process; batches/s, higher is better)",
        "",
        "| dataset | seq_len | train examples | column gather | Grain train, no prefetch | "
        "Grain train, prefetch (2 threads) | Grain eval pass (open + all batches) | TFDS ArrayRecord decode |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in loads:
        lines.append(f"| {r['name']} | {r['seq_len']} | {r['examples']} | {r['gather']:.0f} | {r['sync']:.0f} | "
                     f"{r['prefetched']:.0f} | {1000 * r['eval_seconds']:.0f} ms for {r['eval_batches']} batches | "
                     f"{r['decode']:.1f} |")
    lines += [
        "",
        "The Grain iterators gather from memory-mapped `.npy` columns written next to the "
        "ArrayRecord files; decoding the same batch from ArrayRecord through TFDS (last column) "
        "is what the column store avoids.",
        "",
        "Rebuilding the column store from ArrayRecord (fallback path, once per split):",
        "",
    ]
    for name, n, seconds in rebuild_columns:
        lines.append(f"- {name} train: {n} examples in {seconds:.1f} s ({n / seconds:.0f} examples/s)")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)  # the CSVs, and the data unless --data_dir was given


if __name__ == "__main__":
    main()
