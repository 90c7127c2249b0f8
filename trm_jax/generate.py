"""Generate text with a trained language model (configs/code.py, configs/text.py).

    python -m trm_jax.generate --workdir=runs/code_tiny --prompt="def fib(n):" --max_new_tokens=128
    python -m trm_jax.generate --workdir=W --prompt="The" --temperature=0 (greedy)
    python -m trm_jax.generate --workdir=W --prompt="import os" --num_samples=3 --seed=1

The continuation streams to stdout as it is sampled and stops at the document separator or after
``--max_new_tokens``; tokens/s goes to stderr. The same ``--seed`` gives the same text.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

from trm_jax.lm.sampling import Sampling

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (or a checkpoints/<step> directory).")
_PROMPT = flags.DEFINE_string("prompt", "", "The text to continue (a document's beginning).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "At most this many tokens per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", Sampling.temperature, "Sampling temperature; 0: greedy (argmax).")
_TOP_K = flags.DEFINE_integer("top_k", Sampling.top_k, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", Sampling.top_p, "Nucleus sampling: the smallest set with this probability "
                            "(1: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same text.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations to generate, one after another.")
_RAW = flags.DEFINE_bool("raw_weights", False, "Use the raw parameters, not the EMA weights.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from trm_jax.checkpoint import CheckpointError
    from trm_jax.lm.generation import GenerationError, LanguageModel, stream_text

    try:
        if _MAX_NEW.value < 1 or _NUM_SAMPLES.value < 1:
            raise GenerationError("--max_new_tokens and --num_samples must be >= 1")
        sampling = Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
        lm = LanguageModel.load(_WORKDIR.value, ema=not _RAW.value)
    except (CheckpointError, GenerationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    prompt = lm.prompt(_PROMPT.value)
    lm.warm_up(len(prompt))
    try:
        for i in range(_NUM_SAMPLES.value):
            if _NUM_SAMPLES.value > 1:
                print(f"{'' if i == 0 else chr(10)}--- sample {i + 1} (seed {_SEED.value}, sample {i}) ---", flush=True)
            sys.stdout.write(_PROMPT.value)
            tokens = lm.stream(prompt, _MAX_NEW.value, sampling, seed=_SEED.value * 1_000_003 + i)
            for piece in stream_text(lm, tokens):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    sys.stdout.flush()
    s = lm.stats
    print(f"[{s.tokens} tokens in {s.seconds:.2f} s: {s.tokens_per_s:.1f} tokens/s on {_device()}; "
          f"compiling took {s.compile_seconds:.1f} s]", file=sys.stderr)


def _device() -> str:
    import jax

    return f"{jax.default_backend()} ({jax.devices()[0].device_kind})"


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
