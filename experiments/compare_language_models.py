"""Tabulate and plot the language-model runs of experiments/lm_budget.sh.

    python experiments/compare_language_models.py --runs_dir=/tmp/lm_budget --budget=900 \\
        --out=experiments/results/language_cpu

Reads ``RUNS_DIR/{code,text}_{trm,transformer}/`` (metrics.jsonl, the final --eval_only metrics),
the samples and tokens/s of ``python -m trm_jax.generate`` (``*.samples.txt``, ``*.speed.txt``) and
writes ``OUT.md`` (table, samples), ``OUT.jsonl`` (one record per run) and ``OUT.png`` (validation
bits per byte and training loss against the step).
"""
from __future__ import annotations

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trm_jax.metrics_logger import read_metrics  # noqa: E402

_RUNS = flags.DEFINE_string("runs_dir", "/tmp/lm_budget", "Where lm_budget.sh put its runs.")
_BUDGET = flags.DEFINE_integer("budget", 900, "The wall-clock budget of each run, in seconds.")
_OUT = flags.DEFINE_string("out", "experiments/results/language_cpu", "Output prefix.")


def _read(path: str) -> str:
    return open(path).read().strip() if os.path.exists(path) else ""


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _final_eval(workdir: str, records: list) -> dict:
    """The --eval_only metrics of the last checkpoint (eval/<step>/metrics.json), else the last evaluation."""
    files = sorted(glob.glob(os.path.join(workdir, "eval", "*", "metrics.json")),
                   key=lambda p: int(os.path.basename(os.path.dirname(p))))
    if files:
        return json.load(open(files[-1]))
    evals = [r for r in records if "eval/bits_per_byte" in r]
    return evals[-1] if evals else {}


def main(_):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    rows, lines = [], []
    for i, task in enumerate(("code", "text")):
        for arch in ("trm", "transformer"):
            workdir = os.path.join(_RUNS.value, f"{task}_{arch}")
            if not os.path.isdir(workdir):
                continue
            records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
            final = _final_eval(workdir, records)
            ev = [(r["step"], r["eval/bits_per_byte"]) for r in records if "eval/bits_per_byte" in r]
            tr = [(r["step"], r["train/lm_loss"]) for r in records if "train/lm_loss" in r]
            if final.get("step") and (not ev or ev[-1][0] != final["step"]):
                ev.append((final["step"], final["eval/bits_per_byte"]))
            axes[0][i].plot(*zip(*ev), marker="o", label=arch) if ev else None
            axes[1][i].plot(*zip(*tr), label=arch) if tr else None
            speeds = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
            config = json.load(open(os.path.join(workdir, "config.json")))
            row = dict(task=task, arch=arch, steps=final.get("step", tr[-1][0] if tr else 0),
                       train_tokens_per_s=sum(speeds) / len(speeds) if speeds else float("nan"),
                       eval_bits_per_byte=final.get("eval/bits_per_byte"), eval_perplexity=final.get("eval/perplexity"),
                       eval_accuracy=final.get("eval/accuracy"),
                       generation=_read(os.path.join(_RUNS.value, f"{task}_{arch}.speed.txt")),
                       model={k: config["model"].get(k) for k in ("name", "hidden_size", "H_cycles", "L_cycles",
                                                                   "L_layers", "H_layers", "seq_len", "vocab_size")})
            row["curve"] = ev
            rows.append(row)
    for i, task in enumerate(("code", "text")):
        axes[0][i].set_title(f"{task}: validation bits per byte"), axes[0][i].set_xlabel("step"), axes[0][i].legend()
        axes[1][i].set_title(f"{task}: train loss (nats/token)"), axes[1][i].set_xlabel("step"), axes[1][i].legend()
    fig.suptitle(f"configs/{{code,text}}.py:tiny, TRM vs transformer at equal parameters, {_BUDGET.value} s each")
    fig.tight_layout()
    fig.savefig(_OUT.value + ".png", dpi=100)
    # The same data seen: each model's validation bits/byte at the last evaluation at or before the
    # step the slower model reached in the budget.
    for task in ("code", "text"):
        same = [r for r in rows if r["task"] == task]
        if not same:
            continue
        common = min(r["steps"] for r in same)
        for r in same:
            at = [(step, v) for step, v in r["curve"] if step <= common]
            r["same_data"] = at[-1] if at else (None, float("nan"))
    lines.append("| task | model | steps in budget | train tokens/s | val bits/byte | val perplexity "
                 "| val next-token acc | val bits/byte at the other's step | generation |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step, value = r.get("same_data", (None, float("nan")))
        lines.append(f"| {r['task']} | {r['arch']} | {r['steps']} | {_f(r['train_tokens_per_s'], 0)} | "
                     f"{_f(r['eval_bits_per_byte'], 3)} | {_f(r['eval_perplexity'], 1)} | {_f(r['eval_accuracy'], 3)} | "
                     f"{_f(value, 3)} (step {step}) | {r['generation'].strip('[]')} |")
    for task in ("code", "text"):
        speed = _read(os.path.join(_RUNS.value, f"{task}_default.speed.txt"))
        if speed:
            lines.append(f"\nGeneration at the default size (configs/{task}.py, bfloat16 on this CPU): {speed}")
    for r in rows:
        lines.append(f"\n### Samples: {r['task']} / {r['arch']}\n\n```\n"
                     f"{_read(os.path.join(_RUNS.value, r['task'] + '_' + r['arch'] + '.samples.txt'))}\n```")
    with open(_OUT.value + ".jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if k != "curve"}) + "\n")
    print("\n".join(lines))
    with open(_OUT.value + ".table.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
