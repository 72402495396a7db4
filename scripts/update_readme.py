#!/usr/bin/env python
"""Regenerate README.md's model table from the registry (``specnet-zoo models --markdown``).

    python scripts/update_readme.py [--check]

``--check`` exits 1 when README.md is out of date instead of rewriting it.
"""
import argparse
import sys
from pathlib import Path

from specnet_zoo import model_table

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{model_table(markdown=True)}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is current")
    args = parser.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md model table is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
