"""``python -m training COMMAND``: one CLI for every offline stage.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``,
so stages stay independent. User errors (``SidrecError``) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from training.errors import SidrecError
from training.provenance import invocation

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("training.data.cli", "read a raw dataset and write the canonical dataset + stats.json"),
    "tokenizer": ("training.tokenizer.cli", "train the HiD-VAE (or RQ-VAE) tokenizer and assign unique IDs"),
    "generator": ("training.generator.cli", "train the H2Rec-harmonised generator over the tokenizer's IDs"),
    "evaluate": ("training.evaluate.cli", "evaluate a generator run (full ranking, sampled-100, head/tail)"),
    "export": ("training.export.cli", "export a run to a verified ONNX bundle for the service"),
    "pipeline": ("training.pipeline", "prepare -> tokenizer -> generator -> evaluate -> export in one go"),
    "demo": ("training.demo", "build the synthetic demo end to end and show the result"),
}


def main(argv: list[str] | None = None) -> int:
    modules = {name: importlib.import_module(module) for name, (module, _) in COMMANDS.items()}
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="sidrec offline pipeline. Every command has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in modules.items():
        help_text = COMMANDS[name][1]
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__ or help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    try:
        with invocation(sys.argv[1:] if argv is None else argv):  # what each stage's metrics record
            return int(modules[args.command].run(args))
    except SidrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
