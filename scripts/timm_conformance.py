#!/usr/bin/env python
"""Run timm's own model test suite (``../shared/conformance/timm``) on specnet-zoo's models.

    python scripts/timm_conformance.py [--suite DIR] [--list] [extra pytest arguments]

Deselects exactly the (model, test) cases that the model files declare with
``exclude_from_timm_tests`` (each with its reason, printed here), and nothing else.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from specnet_zoo.models import timm_test_exclusions

ROOT = Path(__file__).resolve().parents[1]


def deselect_args(exclusions: dict[str, dict[str, str]]) -> list[str]:
    """``--deselect`` node ids (relative to the suite's rootdir) for every excluded case, ``name.tag`` cases included."""
    import timm

    tagged = timm.list_models(include_tags=True)
    args = []
    for model, tests in sorted(exclusions.items()):
        cases = [model] + [name for name in tagged if name.startswith(model + ".")]
        args += [arg for test in sorted(tests) for case in cases for arg in ("--deselect", f"test_models.py::{test}[1-{case}]")]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=str(ROOT.parent / "shared" / "conformance" / "timm"))
    parser.add_argument("--list", action="store_true", help="print the exclusions and their reasons, run nothing")
    args, extra = parser.parse_known_args(argv)
    exclusions = timm_test_exclusions()
    for model, tests in sorted(exclusions.items()):
        for test, reason in sorted(tests.items()):
            print(f"excluded {test}[{model}]: {reason}")
    if args.list:
        return 0
    suite = Path(args.suite)
    if not (suite / "run.sh").is_file():
        print(f"timm_conformance: no suite at {suite} (expected run.sh there)", file=sys.stderr)
        return 2
    command = ["bash", str(suite / "run.sh"), *deselect_args(exclusions), *extra]
    return subprocess.call(command, env=dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
