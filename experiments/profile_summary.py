"""Where a compiled step's device time goes: a jax.profiler trace folded into a table.

    python experiments/profile_summary.py TRACE_DIR [--top=30]

``TRACE_DIR`` is what ``jax.profiler.trace`` wrote (``benchmark.py --profile_dir`` makes one).
Device time is summed per XLA op (the GPU's "XLA Ops" line; on CPU, the host thunks that
carry an ``hlo_op`` stat) and per JAX source operation (the op's ``tf_op`` / name-stack
stat, e.g. ``jvp(...)/transpose``), so the heavy kernels can be traced back to model code.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
from typing import Iterable, Iterator

import jax


def latest_xspace(trace_dir: str) -> str:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir!r}: was it written by jax.profiler.trace?")
    return paths[-1]


def _device_op_events(profile) -> Iterator[tuple[str, float, dict]]:
    """(op name, duration ns, stats) of every device op event in a profile."""
    gpu_planes = [p for p in profile.planes if p.name.startswith("/device:GPU")]
    if gpu_planes:
        for plane in gpu_planes:
            for line in plane.lines:
                if line.name == "XLA Ops":
                    for e in line.events:
                        yield e.name, e.duration_ns, dict(e.stats)
        return
    for plane in profile.planes:  # CPU: the thunk executor's events carry hlo_op
        for line in plane.lines:
            for e in line.events:
                stats = dict(e.stats)
                if "hlo_op" in stats:
                    yield e.name, e.duration_ns, stats


_HLO_OP_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name="([^"]+)"', re.M)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op_name in its metadata (from ``compiled.as_text()``)."""
    return {m.group(1): m.group(2) for m in _HLO_OP_NAME.finditer(hlo_text)}


def _short(op_name: str) -> str:
    """An op_name without the outer ``jit(...)`` wrapper, kept to its last 110 characters."""
    op_name = re.sub(r"^jit\([^)]*\)/", "", op_name)
    return op_name if len(op_name) <= 110 else "..." + op_name[-107:]


def _phase_part(op_name: str) -> str:
    """'backward | mlp/down_proj/dot_general': the pass (JAX's transpose = backward) and the leaf op."""
    phase = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else "other"
    parts = [p for p in op_name.split("/") if p and not re.fullmatch(r"layers_\d+|checkpoint|body|closed_call", p)]
    return f"{phase} | {'/'.join(parts[-3:])}"


def summarize(events: Iterable[tuple[str, float, dict]], op_names: dict[str, str] | None = None) -> dict:
    """Totals per op and per source operation (JAX op_name, from the profile or the HLO), sorted by time."""
    op_names = op_names or {}
    by_op: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, ""])
    by_source: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    by_part: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    total = 0.0
    for name, ns, stats in events:
        op_name = str(stats.get("tf_op") or op_names.get(name) or op_names.get(stats.get("hlo_op", "")) or "")
        source = _short(op_name)
        total += ns
        by_op[name][2] = by_op[name][2] or source
        for row in (by_op[name], by_source[source or name], by_part[_phase_part(op_name or name)]):
            row[0] += ns
            row[1] += 1
    ops = sorted(((n, t, c, s) for n, (t, c, s) in by_op.items()), key=lambda r: -r[1])
    sources = sorted(((n, t, c) for n, (t, c) in by_source.items()), key=lambda r: -r[1])
    parts = sorted(((n, t, c) for n, (t, c) in by_part.items()), key=lambda r: -r[1])
    return {"total_ns": total, "ops": ops, "sources": sources, "parts": parts}


def format_summary(summary: dict, top: int, steps: int = 1) -> str:
    total = summary["total_ns"] or 1.0
    lines = [f"device op time: {total / 1e6 / steps:.2f} ms per step ({steps} step(s) traced)", "",
             "| op | ms/step | share | calls/step | source |", "|---|---:|---:|---:|---|"]
    for name, ns, count, src in summary["ops"][:top]:
        lines.append(f"| {name[:60]} | {ns / 1e6 / steps:.3f} | {ns / total:.1%} | {count / steps:.0f} | {src} |")
    lines += ["", "| source operation | ms/step | share | calls/step |", "|---|---:|---:|---:|"]
    for src, ns, count in summary["sources"][:top]:
        lines.append(f"| {src} | {ns / 1e6 / steps:.3f} | {ns / total:.1%} | {count / steps:.0f} |")
    lines += ["", "| pass and op (all layers and cycles together) | ms/step | share | calls/step |",
              "|---|---:|---:|---:|"]
    for part, ns, count in summary["parts"][:top]:
        lines.append(f"| {part} | {ns / 1e6 / steps:.3f} | {ns / total:.1%} | {count / steps:.0f} |")
    return "\n".join(lines)


def summarize_trace(trace_dir: str, top: int = 30, steps: int = 1, hlo_text: str = "") -> str:
    """The table for the newest trace under ``trace_dir``; ``hlo_text`` names ops' JAX sources."""
    profile = jax.profiler.ProfileData.from_file(latest_xspace(trace_dir))
    return format_summary(summarize(_device_op_events(profile), hlo_op_names(hlo_text)), top, steps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace (for per-step figures)")
    parser.add_argument("--hlo", default="", help="the compiled step's HLO text (names each op's JAX source)")
    args = parser.parse_args()
    hlo = open(args.hlo).read() if args.hlo else ""
    print(summarize_trace(args.trace_dir, args.top, args.steps, hlo))
