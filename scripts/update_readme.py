#!/usr/bin/env python
"""Regenerate README.md's generated sections: the model table from the registry (``specnet-zoo models
--markdown``), the pretrained-tag table from the pretrained cfgs and ``specnet_zoo/weights/manifest.json``,
the training-memory tables from ``docs/specnet_memory.md`` (written by
``specnet-zoo reproduce specnet-memory --out docs``), the reproduction summary from ``docs/results_summary.md``
(``specnet-zoo reproduce all``, which also runs this script), the layer benchmarks from ``docs/bench_layers_cpu.md``
(``scripts/bench_layers.py --markdown``) and the step benchmarks from ``docs/bench_models_cpu.md`` /
``docs/bench_models_cuda.md`` (``scripts/bench_models.py --markdown``).

    python scripts/update_readme.py [--check]

``--check`` exits 1 when README.md is out of date instead of rewriting it.
"""
import argparse
import sys
from pathlib import Path

from specnet_zoo import model_table
from specnet_zoo._factory import pretrained_table
from specnet_zoo.paths import recipe_for_tag

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MEMORY = ROOT / "docs" / "specnet_memory.md"
BENCH = {device: ROOT / "docs" / f"bench_models_{device}.md" for device in ("cpu", "cuda")}
LAYERS = ROOT / "docs" / "bench_layers_cpu.md"
RESULTS = ROOT / "docs" / "results_summary.md"
NO_GPU = ("GPU: not measured yet (no accelerator was available when these tables were generated); on one, "
          "`bash scripts/gpu_checks.sh` runs the correctness tests on CUDA and writes `bench_models_cuda.md` "
          "(copy it to docs/ and rerun this script).")


def _recipe_for(tag: str) -> str | None:
    recipe = recipe_for_tag(tag)
    return str(recipe.relative_to(ROOT)) if recipe else None


def _section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def render(text: str) -> str:
    text = _section(text, "model-table", model_table(markdown=True))
    text = _section(text, "pretrained-table", pretrained_table(recipe_for=_recipe_for))
    text = _section(text, "specnet-memory", MEMORY.read_text())
    text = _section(text, "reproduction-results", RESULTS.read_text() if RESULTS.exists() else
                    "Not generated yet: run `specnet-zoo reproduce all`.")
    text = _section(text, "bench-layers-cpu", LAYERS.read_text())
    text = _section(text, "bench-models-cpu", BENCH["cpu"].read_text())
    return _section(text, "bench-models-cuda", BENCH["cuda"].read_text() if BENCH["cuda"].exists() else NO_GPU)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is current")
    args = parser.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's generated tables are out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
