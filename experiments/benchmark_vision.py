"""Throughput of the pixel path's parts: the encoder, the renderer and the dataset builds.

    python experiments/benchmark_vision.py [--json_out=FILE] [--skip_builds]

* encoder: images/s of ``TRMInner.image_capsules`` (patch embedding, the encoder's blocks or, for
  ``unified``, the TRM's recursion, and the pooling), forward only, jitted, at the sizes of
  ``configs/vision.py`` (default and ``tiny``) and ``configs/arc.py:pixels``;
* render: images/s of ``data_pipeline.vision.render_batch`` for a batch of text lines and of ARC
  canvases (what the loader does per batch);
* build: examples/s of building ``vision_unified:tiny`` and the default ``rendered_text`` from
  scratch into a temporary directory (what a streaming run waits for).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

_JSON = flags.DEFINE_string("json_out", "", "Append each result as a JSON line to this file.")
_SKIP_BUILDS = flags.DEFINE_bool("skip_builds", False, "Skip the dataset builds.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per encoder call.")


def _emit(record: dict) -> None:
    record = {"machine": platform.node(), "backend": jax.default_backend(), **record}
    print(json.dumps(record))
    if _JSON.value:
        with open(_JSON.value, "a") as f:
            f.write(json.dumps(record) + "\n")


def _timed(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats


def encoder(target: str) -> None:
    from trm_jax import check
    from trm_jax.families import family_of
    from trm_jax.models.trm import TRMInner, image_batch, init_variables

    config = check.load_config(target)
    cfg = family_of(config.model).config_cls.from_any(config.model)
    variables = init_variables(cfg, jax.random.key(0))
    inner = {"params": variables["params"]["inner"], "buffers": variables["buffers"]["inner"]}
    batch = image_batch(cfg, _BATCH.value, jax.random.key(1))
    run = jax.jit(functools.partial(TRMInner(cfg).apply, method=TRMInner.image_capsules))
    seconds = _timed(run, inner, batch)
    _emit({"what": "encoder", "config": target, "image": [cfg.image_height, cfg.image_width],
           "patches": cfg.num_patches, "capsules": cfg.vision_capsules, "dtype": cfg.forward_dtype,
           "batch": _BATCH.value, "images_per_s": round(_BATCH.value / seconds, 1)})


def render() -> None:
    from data_pipeline import render as r
    from data_pipeline.vision import render_batch

    rng = np.random.default_rng(0)
    style = r.TextStyle(224, 224, 12)
    lines = np.array(["def render(text, style): return image  # " + str(i) for i in range(64)])
    batch = {"inputs": np.zeros((64, 65), np.int32), "causal": np.ones(64, np.int32)}
    cols = {"text": lines, "inputs": np.zeros((64, 65), np.uint8), "causal": np.ones(64, np.uint8)}
    t0 = time.perf_counter()
    render_batch(batch, cols, np.arange(64), text_style=style, grid_size=None)
    _emit({"what": "render", "kind": "text 224x224", "images_per_s": round(64 / (time.perf_counter() - t0), 1)})
    canvases = rng.integers(0, 12, (768, 900)).astype(np.uint8)
    batch = {"inputs": canvases.astype(np.int32), "causal": np.zeros(768, np.int32)}
    cols = {"inputs": canvases, "causal": np.zeros(768, np.uint8), "text": np.array([""] * 768)}
    t0 = time.perf_counter()
    render_batch(batch, cols, np.arange(768), text_style=None, grid_size=224)
    _emit({"what": "render", "kind": "ARC canvas 224x224", "images_per_s": round(768 / (time.perf_counter() - t0), 1)})


def build(name: str, options: dict) -> None:
    import data_pipeline as dp

    root = tempfile.mkdtemp(prefix="trm_vision_build_")
    try:
        t0 = time.perf_counter()
        meta = dp.ensure_built(name, root, options)
        seconds = time.perf_counter() - t0
        examples = sum(m.num_examples for m in meta.values())
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        _emit({"what": "build", "dataset": name, "options": options, "examples": examples,
               "seconds": round(seconds, 1), "examples_per_s": round(examples / seconds, 1),
               "megabytes": round(size / 2 ** 20, 1)})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(_):
    for target in ("configs/vision.py:tiny", "configs/vision.py", "configs/vision.py:unified",
                   "configs/arc.py:pixels"):
        encoder(target)
    render()
    if not _SKIP_BUILDS.value:
        build("vision_unified", {"preset": "tiny"})
        build("rendered_text", {})


if __name__ == "__main__":
    app.run(main)
