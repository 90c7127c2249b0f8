"""What the pixel path costs: one TRM reading random letters from an image vs from tokens.

    python experiments/vision_token_reference.py --steps=600 [--json_out=FILE]

Random 10-letter strings (a-z) have no language prior, so a model gets them right only by reading
its input. Both models are the TRM of ``configs/vision.py:tiny`` (hidden 128, 4 heads, H_cycles 2 x
L_cycles 2 over 2 layers, one supervision step), trained side by side on the same batches (Adam,
lr 1e-3, batch 32; fresh strings every step, so training accuracy is held-out accuracy):

* ``pixels``: the string rendered on a 16x160 image (the tiny config's style), encoded into 20
  capsules (8x8 patches, 2 encoder blocks, column regions), then read left to right (prefix-LM);
* ``tokens``: the same TRM as a causal model whose sequence is ``[letters, BOS, letters]``: the
  letters are given as tokens and copied after ``BOS``.

Reported every 50 steps: teacher-forced character accuracy of the 10 letters and the end token,
and the loss (nats; uniform guessing is ln 26 = 3.26).
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from data_pipeline import render
from data_pipeline.vision import BOS, EOS, encode_text
from trm_jax.models.config import TRMConfig
from trm_jax.models.trm import build_model, init_variables

_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of each model.")
_JSON = flags.DEFINE_string("json_out", "", "Append each record as a JSON line to this file.")

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
STYLE = render.TextStyle(height=16, width=160, font_size=12, margin=0)
SIZE = dict(vocab_size=269, hidden_size=128, num_heads=4, expansion=4.0, H_cycles=2, L_cycles=2, L_layers=2,
            puzzle_emb_ndim=0, halt_max_steps=1, halt_exploration_prob=0.0, forward_dtype="float32",
            loss_type="softmax_cross_entropy")


def batches(seed: int, n: int = 32):
    rng = np.random.default_rng(seed)
    while True:
        texts = ["".join(rng.choice(LETTERS, 10)) for _ in range(n)]
        tokens = np.stack([encode_text(t) for t in texts])                       # [n, 10]
        image = np.stack([render.render_text(t, STYLE) for t in texts])
        ones = np.ones((n, 1), np.int32)
        pixels = dict(inputs=np.concatenate([BOS * ones, tokens], 1),           # [BOS, t0 .. t9]
                      labels=np.concatenate([tokens, EOS * ones], 1),           # [t0 .. t9, EOS]
                      image=image, causal=np.ones(n, np.int32))
        ignore = np.full((n, 10), -100, np.int32)
        copy = dict(inputs=np.concatenate([tokens, BOS * ones, tokens], 1),     # [letters, BOS, letters]
                    labels=np.concatenate([ignore, tokens, EOS * ones], 1))     # copied after BOS
        for b in (pixels, copy):
            b["puzzle_identifiers"] = np.zeros(n, np.int32)
        yield {k: jnp.asarray(v) for k, v in pixels.items()}, {k: jnp.asarray(v) for k, v in copy.items()}


def trainer(cfg: TRMConfig):
    model = build_model(cfg)
    variables = init_variables(cfg, jax.random.key(0))
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt, batch):
        def loss_fn(p):
            _, out = model.apply({**variables, "params": p}, model.initial_carry(batch), batch)
            valid = batch["labels"] != -100
            labels = jnp.where(valid, batch["labels"], 0)
            nll = -jnp.take_along_axis(jax.nn.log_softmax(out["logits"]), labels[..., None], -1)[..., 0]
            right = (out["logits"].argmax(-1) == labels) & valid
            return (nll * valid).sum() / valid.sum(), right.sum() / valid.sum()

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, acc

    params = variables["params"]
    return step, [params, tx.init(params)]


def main(_):
    pixels_cfg = TRMConfig(seq_len=11, **SIZE, image_height=16, image_width=160, patch_size=8, vision_capsules=20,
                           vision_layers=2, vision_pooling="regions", prefix_lm=True)
    tokens_cfg = TRMConfig(seq_len=21, **SIZE, causal=True)
    runs = {"pixels": trainer(pixels_cfg), "tokens": trainer(tokens_cfg)}
    sums = {name: [0.0, 0.0, 0] for name in runs}
    t0 = time.perf_counter()
    for i, (pixel_batch, token_batch) in zip(range(1, _STEPS.value + 1), batches(0)):
        for name, batch in (("pixels", pixel_batch), ("tokens", token_batch)):
            step, state = runs[name]
            state[0], state[1], loss, acc = step(state[0], state[1], batch)
            s = sums[name]
            s[0], s[1], s[2] = s[0] + float(loss), s[1] + float(acc), s[2] + 1
        if i % 50 == 0:
            for name, (loss, acc, n) in sums.items():
                record = {"what": "token_reference", "input": name, "step": i, "loss": round(loss / n, 4),
                          "char_accuracy": round(acc / n, 4), "seconds": round(time.perf_counter() - t0, 1)}
                print(json.dumps(record), flush=True)
                if _JSON.value:
                    with open(_JSON.value, "a") as f:
                        f.write(json.dumps(record) + "\n")
            sums = {name: [0.0, 0.0, 0] for name in runs}


if __name__ == "__main__":
    app.run(main)
