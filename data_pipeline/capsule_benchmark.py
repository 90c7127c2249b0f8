"""Encoder throughput on real capsule text: ``python -m data_pipeline.capsule_benchmark``.

Takes the capsules (sentences) and children (word windows) of the first ``--docs`` documents
of a source in the capsule dataset's order, encodes each list once to compile the shapes,
then again to time it, and prints texts/s and word pieces/s (real, not padded) as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Sequence

from data_pipeline.capsule_windows import WindowSpec, document_windows
from data_pipeline.text_encoder import SentenceEncoder, default_encoder
from data_pipeline.text_sources import iter_documents


def capsule_texts(source: str, docs: int, spec: WindowSpec, seed: int = 0) -> tuple[list[str], list[str]]:
    """(capsule texts, child texts) of the first ``docs`` documents that yield a window."""
    capsules, children = [], []
    used = 0
    for doc in iter_documents(source, order_seed=seed):
        windows = document_windows(doc, spec)
        if not windows:
            continue
        for w in windows:
            capsules.extend(w.capsules)
            children.extend(c for kids in w.children for c in kids)
        used += 1
        if used == docs:
            break
    return capsules, children


def time_encode(encoder: SentenceEncoder, texts: Sequence[str]) -> dict[str, float]:
    """Encode twice (compile, then steady state); texts/s and real word pieces/s of the second."""
    start = time.perf_counter()
    encoder.encode(texts)
    first = time.perf_counter() - start
    start = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - start
    pieces = sum(len(ids) for ids in encoder.tokenize(texts))
    return {"texts": len(texts), "first_call_s": round(first, 2), "seconds": round(seconds, 2),
            "texts_per_s": round(len(texts) / seconds, 1), "word_pieces_per_s": round(pieces / seconds)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="both")
    parser.add_argument("--docs", type=int, default=20)
    args = parser.parse_args(argv)
    capsules, children = capsule_texts(args.source, args.docs, WindowSpec())
    encoder = default_encoder()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "source": args.source,
                      "docs": args.docs, "capsules": time_encode(encoder, capsules),
                      "children": time_encode(encoder, children)}, indent=1))


if __name__ == "__main__":
    main()
