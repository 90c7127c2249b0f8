"""Talk to a trained language model: each message is appended to the conversation and the model continues it.

    python -m trm_jax.chat --workdir=runs/text_tiny [--temperature=0.8 --top_k=0 --top_p=0.95 --max_new_tokens=64]

The model is a plain language model (trained on code or documentation, not on dialogues): a reply is
its continuation of the conversation so far, which ends at the document separator, a blank line or
``--max_new_tokens``. The conversation is kept within the model's context window (its oldest turns
are dropped, with a notice). Commands: ``/reset`` (forget the conversation), ``/temperature 0.7``,
``/top_k 40``, ``/top_p 0.9``, ``/max_tokens 64``, ``/help``, ``/quit``. Ctrl-D or Ctrl-C exits.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional

from absl import app, flags, logging

from trm_jax.lm.generation import stream_text
from trm_jax.lm.sampling import Sampling

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (or a checkpoints/<step> directory).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "At most this many tokens per reply (0: half the model's "
                                 "context window, at most 128; the rest holds the conversation).")
_TEMPERATURE = flags.DEFINE_float("temperature", Sampling.temperature, "Sampling temperature; 0: greedy.")
_TOP_K = flags.DEFINE_integer("top_k", Sampling.top_k, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", Sampling.top_p, "Nucleus sampling threshold (1: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (reply i uses seed + i).")

HELP = ("commands: /reset  /temperature T  /top_k K  /top_p P  /max_tokens N  /help  /quit   "
        "(Ctrl-D or Ctrl-C exits)")


class Chat:
    """The conversation state and the commands; ``read``/``write`` are the terminal (tests pass their own)."""

    def __init__(self, lm, max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                 write: Callable[[str], None]):
        self.lm = lm
        self.settings: Dict[str, float] = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                           "max_tokens": max_new_tokens}
        self.seed = seed
        self.write = write
        self.turn = 0
        self.history: List[int] = []
        self.reset()

    def reset(self) -> None:
        from data_pipeline.tokenizer import SEPARATOR_ID

        self.history = [SEPARATOR_ID]

    def command(self, line: str) -> bool:
        """Run a ``/command``; False to quit."""
        name, _, arg = line[1:].strip().partition(" ")
        if name in ("quit", "exit", "q"):
            return False
        if name == "reset":
            self.reset()
            self.write("(conversation cleared)\n")
        elif name == "help":
            self.write(HELP + "\n")
        elif name in ("temperature", "top_k", "top_p", "max_tokens"):
            try:
                value = int(arg) if name in ("top_k", "max_tokens") else float(arg)
                self._check(name, value)
            except ValueError as e:
                self.write(f"/{name}: {e if str(e).startswith(name) else f'cannot read {arg!r}'}\n")
            else:
                self.settings[name] = value
                self.write(f"({name} = {value})\n")
        else:
            self.write(f"unknown command /{name}; {HELP}\n")
        return True

    def _check(self, name: str, value: float) -> None:
        if name == "max_tokens":
            if not 1 <= value < self.lm.config.seq_len:
                raise ValueError(f"max_tokens must be in [1, {self.lm.config.seq_len})")
            return
        Sampling(**{**{k: self.settings[k] for k in ("temperature", "top_k", "top_p")}, name: value})

    def reply(self, message: str) -> str:
        """Append ``message``, stream the model's continuation to the terminal, keep both; returns the reply."""
        lm, s = self.lm, self.settings
        max_new = int(s["max_tokens"])
        self.history += lm.encode(message.rstrip("\n") + "\n")
        room = lm.config.seq_len - max_new
        if len(self.history) > room:
            self.history = self.history[-room:]
            self.write(f"(conversation trimmed to its last {room} tokens)\n")
        text = ""
        tokens = lm.stream(self.history, max_new, Sampling(s["temperature"], int(s["top_k"]), s["top_p"]),
                           seed=self.seed + self.turn)
        for piece in stream_text(lm, tokens):
            if "\n\n" in text + piece:  # a blank line ends the reply
                piece = (text + piece).split("\n\n", 1)[0][len(text):]
                self.write(piece)
                text += piece
                break
            self.write(piece)
            text += piece
        self.write("\n")
        self.turn += 1
        self.history += lm.encode(text.rstrip("\n") + "\n")
        return text


def read_line(prompt: str) -> Optional[str]:
    """A line typed at ``prompt`` (with line editing where ``readline`` exists); None at Ctrl-D."""
    try:
        return input(prompt)
    except EOFError:
        return None


def run(lm, chat: Chat, read: Callable[[str], Optional[str]], write: Callable[[str], None]) -> None:
    write(f"{lm.source}: {lm.config.seq_len}-token context. {HELP}\n")
    while True:
        line = read("> ")
        if line is None:  # Ctrl-D
            write("\n")
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            if not chat.command(line):
                return
            continue
        chat.reply(line)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from trm_jax.checkpoint import CheckpointError
    from trm_jax.lm.generation import GenerationError, LanguageModel

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
        lm = LanguageModel.load(_WORKDIR.value)
        max_new = _MAX_NEW.value or min(128, lm.config.seq_len // 2)
        if not 1 <= max_new < lm.config.seq_len:
            raise GenerationError(f"--max_new_tokens must be in [1, {lm.config.seq_len}) (the context window)")
    except (CheckpointError, GenerationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        import readline  # noqa: F401  (line editing and history for input, where available)
    except ImportError:
        pass
    lm.warm_up(1)
    chat = Chat(lm, max_new, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _SEED.value, write)
    try:
        run(lm, chat, read_line, write)
    except KeyboardInterrupt:  # Ctrl-C: leave quietly
        write("\n")
    write("bye\n")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
