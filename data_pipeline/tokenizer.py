"""Byte-level BPE for the language datasets, trained with Hugging Face ``tokenizers``.

Byte-level: every string (any language, any bytes of source code) encodes, and decoding gives the
text back exactly. Two special tokens come first: ``<pad>`` = 0 (padding; its labels are ignored)
and ``<|endoftext|>`` = 1, the document separator the datasets put before every document and a
generation stops at. The tokenizer is trained on the training split only (a validation document
must not shape the vocabulary) and saved as ``tokenizer.json`` beside the dataset; a training run
copies it into its workdir, so ``generate``/``chat`` need only the workdir.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD = "<pad>"
SEPARATOR = "<|endoftext|>"
PAD_ID, SEPARATOR_ID = 0, 1
SPECIAL_TOKENS = (PAD, SEPARATOR)
FILE_NAME = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int, length: Optional[int] = None,
              min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE with at most ``vocab_size`` tokens (the 256 byte symbols and the two specials
    included) learned from ``texts``; ``length`` (the number of texts, if known) drives the progress."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS)} tokens (256 bytes + {len(SPECIAL_TOKENS)} special)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=length)
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, SEPARATOR_ID)):
        assert tokenizer.token_to_id(token) == expected, (token, tokenizer.token_to_id(token))
    return tokenizer


def load(path: str) -> Tokenizer:
    """The tokenizer saved at ``path`` (a ``tokenizer.json``, or a directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer at {path}")
    return Tokenizer.from_file(path)


def save(tokenizer: Tokenizer, directory: str) -> str:
    """Write ``directory/tokenizer.json`` atomically; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILE_NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    tokenizer.save(tmp)
    os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    """The inverse of byte-level BPE's byte -> printable-character map (GPT-2's ``bytes_to_unicode``)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(visible), 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(visible, chars)}


def token_bytes(tokenizer: Tokenizer, vocab_size: int) -> List[bytes]:
    """The UTF-8 bytes each id ``< vocab_size`` stands for (``b""`` for special and unused ids)."""
    decoder = _byte_decoder()
    out = []
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        out.append(b"" if token is None or token in SPECIAL_TOKENS else bytes(decoder[c] for c in token))
    return out


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """``[vocab_size] int32``: bytes of each token (0 for special and unused ids); a row's
    ``label_bytes`` is the sum over its labels (bits per byte)."""
    return np.asarray([len(b) for b in token_bytes(tokenizer, vocab_size)], np.int32)


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> List[List[int]]:
    """Token ids of each text (batched: the Rust encoder runs on every core)."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def stream(tokenizer: Tokenizer, texts: Iterable[str], chunk: int = 256) -> Iterator[List[int]]:
    """``[SEPARATOR_ID] + ids(text)`` per text, encoded ``chunk`` texts at a time."""
    buffer: List[str] = []
    for text in texts:
        buffer.append(text)
        if len(buffer) == chunk:
            yield from ([SEPARATOR_ID] + ids for ids in encode_documents(tokenizer, buffer))
            buffer = []
    if buffer:
        yield from ([SEPARATOR_ID] + ids for ids in encode_documents(tokenizer, buffer))
