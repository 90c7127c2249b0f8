"""Tabulate and plot the runs of experiments/vision_cpu.sh.

    python experiments/compare_vision.py --runs_dir=/tmp/vision --out=experiments/results/vision_cpu

Reads ``RUNS_DIR/rendered_text`` (configs/vision.py:tiny), ``token_reference.jsonl``,
``arc_tiny`` / ``arc_tiny_pixels`` (configs/arc.py:tiny[,pixels]) and ``throughput.jsonl``; writes
``OUT.md`` (tables), ``OUT.jsonl`` (one record per row) and ``OUT.png`` (curves). The chance level
of greedy reading is the best an image-blind reader can do: one fixed string for every line (a blind
model's greedy output does not depend on the line), the per-position majority of the training
labels, scored on the test lines.
"""
from __future__ import annotations

import json
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trm_jax.metrics_logger import read_metrics  # noqa: E402

_RUNS = flags.DEFINE_string("runs_dir", "/tmp/vision", "Where vision_cpu.sh put its runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/vision_cpu", "Output prefix.")


def _evals(workdir: str, keys: tuple) -> list:
    path = os.path.join(workdir, "metrics.jsonl")
    rows = [r for r in read_metrics(path) if keys[0] in r] if os.path.exists(path) else []
    return [{"step": r["step"], **{k: r.get(k) for k in keys}} for r in rows]


def _jsonl(path: str) -> list:
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def blind_reading_accuracy(config: str = "configs/vision.py:tiny") -> float:
    """Greedy character accuracy of the best image-blind reader on the tiny config's test lines."""
    import data_pipeline as dp
    from trm_jax import check

    data = check.load_config(config).data
    train = np.asarray(dp.load(data.name, "train", data.data_dir or None, **dict(data.options)).columns["labels"])
    test = np.asarray(dp.load(data.name, "test", data.data_dir or None, **dict(data.options)).columns["labels"])
    guess = np.array([np.bincount(col[col != 0], minlength=269).argmax() for col in train.T.astype(np.int64)])
    valid = test != 0
    return float((((test == guess[None]) & valid).sum(1) / valid.sum(1)).mean())


def main(_):
    runs = _RUNS.value
    records, lines = [], ["# The pixel path on a 2-core CPU", "",
                          "Produced by `experiments/vision_cpu.sh` (commands there) and "
                          "`experiments/compare_vision.py`.", ""]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    text = _evals(os.path.join(runs, "rendered_text"), ("eval/char_accuracy", "eval/line_accuracy", "eval/accuracy"))
    chance = blind_reading_accuracy() if text else None
    lines += ["## configs/vision.py:tiny (rendered_text: read a line of code or prose from a 16x160 image)", "",
              f"Best image-blind greedy reader (one fixed string, the per-position majority of the training "
              f"labels) on the same test lines: character accuracy **{chance:.3f}**." if chance is not None else "",
              "", "| step | eval/char_accuracy (greedy) | eval/line_accuracy | eval/accuracy (teacher-forced) |",
              "|---|---|---|---|"]
    for r in text:
        lines.append(f"| {r['step']} | {r['eval/char_accuracy']:.4f} | {r['eval/line_accuracy']:.4f} | "
                     f"{r['eval/accuracy']:.4f} |")
        records.append({"run": "rendered_text", **r})
    if text:
        steps = [r["step"] for r in text]
        axes[0].plot(steps, [r["eval/char_accuracy"] for r in text], "o-", label="character accuracy (greedy)")
        axes[0].plot(steps, [r["eval/line_accuracy"] for r in text], "s-", label="line accuracy")
        axes[0].axhline(chance, color="gray", ls="--", label="best image-blind reader")
        axes[0].set(title="vision.py:tiny (rendered_text)", xlabel="step", ylim=(0, 1))
        axes[0].legend()

    ref = _jsonl(os.path.join(runs, "token_reference.jsonl"))
    lines += ["", "## The pixel path's cost: random 10-letter strings, the same TRM reading pixels or tokens", "",
              "| step | pixels: char accuracy | pixels: loss | tokens: char accuracy | tokens: loss |", "|---|---|---|---|---|"]
    by_step: dict = {}
    for r in ref:
        by_step.setdefault(r["step"], {})[r["input"]] = r
        records.append(r)
    for step, both in sorted(by_step.items()):
        p, t = both.get("pixels", {}), both.get("tokens", {})
        lines.append(f"| {step} | {p.get('char_accuracy', float('nan')):.4f} | {p.get('loss', float('nan')):.3f} | "
                     f"{t.get('char_accuracy', float('nan')):.4f} | {t.get('loss', float('nan')):.3f} |")
    for name in ("pixels", "tokens"):
        pts = [(s, b[name]["char_accuracy"]) for s, b in sorted(by_step.items()) if name in b]
        if pts:
            axes[1].plot(*zip(*pts), "o-", label=f"{name} input")
    axes[1].set(title="random letters: pixels vs tokens", xlabel="step", ylabel="character accuracy", ylim=(0, 1))
    axes[1].legend()

    lines += ["", "## ARC from pixels vs from tokens (configs/arc.py:tiny,pixels vs configs/arc.py:tiny)", "",
              "| run | step | eval/accuracy (output tokens) | eval/exact_accuracy |", "|---|---|---|---|"]
    for name in ("arc_tiny", "arc_tiny_pixels"):
        rows = _evals(os.path.join(runs, name), ("eval/accuracy", "eval/exact_accuracy"))
        for r in rows:
            lines.append(f"| {name} | {r['step']} | {r['eval/accuracy']:.4f} | {r['eval/exact_accuracy']:.4f} |")
            records.append({"run": name, **r})
        if rows:
            axes[2].plot([r["step"] for r in rows], [r["eval/accuracy"] for r in rows], "o-",
                         label="pixels" if "pixels" in name else "tokens")
    axes[2].set(title="ARC tiny: output token accuracy", xlabel="step", ylim=(0, 1))
    axes[2].legend()

    lines += ["", "## Throughput (experiments/benchmark_vision.py)", "", "| what | detail | rate |", "|---|---|---|"]
    for r in _jsonl(os.path.join(runs, "throughput.jsonl")):
        records.append(r)
        if r["what"] == "encoder":
            lines.append(f"| encoder forward | {r['config']} ({r['image'][0]}x{r['image'][1]}, {r['patches']} "
                         f"patches, {r['capsules']} capsules, {r['dtype']}, batch {r['batch']}) | "
                         f"{r['images_per_s']} images/s |")
        elif r["what"] == "render":
            lines.append(f"| render | {r['kind']} | {r['images_per_s']} images/s |")
        else:
            lines.append(f"| build | {r['dataset']} {r['options']} ({r['examples']} examples, {r['megabytes']} MB) | "
                         f"{r['examples_per_s']} examples/s ({r['seconds']} s) |")
    fig.tight_layout()
    fig.savefig(_OUT.value + ".png", dpi=90)
    with open(_OUT.value + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(_OUT.value + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
