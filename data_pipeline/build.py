"""Command line to build datasets (``ensure.ensure_built`` is the same from Python).

    python -m data_pipeline.build NAME [--data_dir DIR] [--preset P] [--rebuild]
                                       [--num_workers N] [--shard_rows N] [--OPTION VALUE ...]
    python -m data_pipeline.build --list

``--OPTION`` are the dataset's builder options (``python -m data_pipeline.build NAME -h``
lists them); e.g. ``python -m data_pipeline.build sudoku --preset tiny`` or
``python -m data_pipeline.build maze --source /data/maze-30x30-hard-1k --aug``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from typing import Sequence

from data_pipeline.ensure import ensure_built
from data_pipeline.registry import dataset_names, default_data_dir, get_builder_cls, make_builder


def _option_parser(name: str) -> argparse.ArgumentParser:
    cls = get_builder_cls(name)
    parser = argparse.ArgumentParser(prog=f"python -m data_pipeline.build {name}",
                                     description=(sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--data_dir", default=None, help=f"root data directory (default {default_data_dir()})")
    parser.add_argument("--preset", default=None, choices=sorted(cls.PRESETS) or None,
                        help="named option set; explicit options override it")
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild if present")
    parser.add_argument("--num_workers", type=int, default=None, help="generation processes")
    parser.add_argument("--shard_rows", type=int, default=None,
                        help="examples per committed shard (a run with data.incremental=True trains on them)")
    hints = typing.get_type_hints(cls.Options)
    group = parser.add_argument_group(f"{name} options")
    for field in dataclasses.fields(cls.Options):
        kind = hints[field.name]
        if kind is bool:
            group.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {field.default})")
        else:  # values are coerced to the field type by the builder
            group.add_argument(f"--{field.name}", default=None, metavar="VALUE",
                               help=f"{getattr(kind, '__name__', kind)} (default {field.default})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__.strip())
        print("\ndatasets:", ", ".join(dataset_names()))
        return 0
    name, rest = argv[0], argv[1:]
    args = _option_parser(name).parse_args(rest)
    option_names = {f.name for f in dataclasses.fields(get_builder_cls(name).Options)}
    options = {k: v for k, v in vars(args).items() if k in option_names and v is not None}
    if args.preset:
        options["preset"] = args.preset
    start = time.perf_counter()
    metadata = ensure_built(name, args.data_dir, options, rebuild=args.rebuild,
                            num_workers=args.num_workers, shard_rows=args.shard_rows)
    seconds = time.perf_counter() - start
    builder = make_builder(name, args.data_dir, options)
    print(f"{name}: {builder.data_path} ({seconds:.1f} s)")
    for split, meta in metadata.items():
        print(f"  {split}: {meta.num_examples} examples, {meta.total_puzzles} puzzles, "
              f"{meta.total_groups} groups, seq_len {meta.seq_len}, vocab {meta.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
