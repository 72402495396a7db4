"""The ``specnet-zoo`` command.

    specnet-zoo fit|validate|test|predict --config recipes/<recipe>.yaml [--dotted.overrides ...]
    specnet-zoo models [--markdown]
    specnet-zoo reproduce info-preservation [--photos DIR] [--out DIR]
    specnet-zoo --version
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .paths import shared_data_dir


def _reproduce_info_preservation(args: argparse.Namespace) -> int:
    from .reproduce.info_preservation import run

    run(args.photos, args.out)
    return 0


def _models(args: argparse.Namespace) -> int:
    from ._factory import model_table

    print(model_table(markdown=args.markdown))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specnet-zoo",
        description="Spectral-domain CNNs: layers, models, recipes. Training: specnet-zoo {fit,validate,test,predict} "
        "--config recipes/<recipe>.yaml (LightningCLI; --help on each).",
    )
    parser.add_argument("--version", action="version", version=f"specnet-zoo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = commands.add_parser("models", help="list the registered architectures")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in README.md)")
    models.set_defaults(handler=_models)
    reproduce = commands.add_parser("reproduce", help="reproduce a figure of the papers")
    experiments = reproduce.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    info = experiments.add_parser("info-preservation", help="Rippel et al. 2015 Fig. 4(a): spectral vs max pooling")
    info.add_argument("--photos", default=str(shared_data_dir() / "photos"), help="folder of photographs")
    info.add_argument("--out", default="outputs/info_preservation", help="where to write the CSV and PNG")
    info.set_defaults(handler=_reproduce_info_preservation)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        from .training.cli import run

        return run(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except FileNotFoundError as error:
        print(f"specnet-zoo: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
