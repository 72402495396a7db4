"""Train, test and export one pretrained tag with its recipe; ``--bundle`` ships it in the package.

    python scripts/train_zoo.py speclenet.mnist            # fit (resumes from last.ckpt), test, export
    python scripts/train_zoo.py speclenet.mnist --bundle   # ... and write specnet_zoo/weights + model_cards
    python scripts/train_zoo.py specdensenet.cifar10 -- --trainer.devices 1   # extra LightningCLI arguments

The run lives in ``--root/<tag>`` (checkpoints, CSV logs, hardware.json) and the export in
``--root/<tag>/export``. The exported file is evaluated again on the full test set, so the accuracy in
the manifest is that of the stored weights.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from specnet_zoo.paths import recipe_for_tag

REPO = Path(__file__).resolve().parents[1]


def best_checkpoint(run: Path) -> Path:
    """The best checkpoint recorded by ModelCheckpoint in last.ckpt (read with weights_only=True)."""
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key, state in last.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_path"):
            return Path(state["best_model_path"])
    return run / "checkpoints" / "last.ckpt"


def bundle(tag: str, export: Path, accuracy: float, images: int, recipe: Path, command: str) -> None:
    from specnet_zoo.pretrained import MANIFEST, WEIGHTS_DIR

    config = json.loads((export / "config.json").read_text())
    record = config["specnet_zoo"]
    WEIGHTS_DIR.mkdir(exist_ok=True)
    shutil.copyfile(export / "model.safetensors", WEIGHTS_DIR / f"{tag}.safetensors")
    shutil.copyfile(export / "README.md", REPO / "model_cards" / f"{tag}.md")
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    model_args = {k: v for k, v in config["model_args"].items() if k not in ("num_classes", "in_chans")}
    manifest[tag] = dict(
        file=f"{tag}.safetensors", sha256=record["sha256"], bytes=record["bytes"], hf_hub_id=f"specnet-zoo/{tag}",
        hf_revision=None, model_args=model_args, metrics={**record["metrics"], "test/acc": accuracy},
        logged_metrics=record["metrics"], test_set=f"the full {tag.split('.')[1]} test set ({images:,} images)",
        recipe=str(recipe.relative_to(REPO)), command=command, hardware=record["hardware"],
        train_time_s=record["train_time_s"], epochs=record["epochs"], card=f"model_cards/{tag}.md",
    )
    MANIFEST.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    print(f"bundled {tag}: {WEIGHTS_DIR / (tag + '.safetensors')}, manifest entry, model_cards/{tag}.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="arguments after -- go to specnet-zoo fit (LightningCLI)")
    parser.add_argument("tag", help="model.tag with a recipe in recipes/zoo/")
    parser.add_argument("--root", default="outputs/zoo", help="where runs live (one folder per tag)")
    parser.add_argument("--bundle", action="store_true", help="ship the export in the package (small models only)")
    parser.add_argument("--skip-fit", action="store_true", help="export an existing run without training")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.cli_args = extra
    recipe = recipe_for_tag(args.tag)
    if recipe is None:
        parser.error(f"no recipe for {args.tag} (recipes/zoo/{args.tag}.yaml or recipes/<dataset>_<model>.yaml)")
    run = Path(args.root) / args.tag
    command = f"python scripts/train_zoo.py {args.tag}"
    if not args.skip_fit:
        fit = [sys.executable, "-m", "specnet_zoo.cli", "fit", "--config", str(recipe),
               "--trainer.default_root_dir", str(run), *args.cli_args]
        if (run / "checkpoints" / "last.ckpt").is_file():
            fit += ["--ckpt_path", "last"]
        print("+", " ".join(fit), flush=True)
        subprocess.run(fit, check=True)

    import timm

    import specnet_zoo  # noqa: F401  (registers the architectures)
    from specnet_zoo.export import evaluate_accuracy, export_checkpoint

    checkpoint = best_checkpoint(run)
    export = export_checkpoint(checkpoint, run / "export", tag=args.tag.split(".", 1)[1], command=command)
    logged = json.loads((export / "config.json").read_text())["specnet_zoo"]["metrics"].get("test/acc")
    model = timm.create_model(f"local-dir:{export.resolve()}", pretrained=True)  # the stored file, its model_args
    accuracy, images = evaluate_accuracy(model, args.tag.split(".", 1)[1])
    print(f"{args.tag}: exported {checkpoint.name} to {export}; test accuracy of the stored file {accuracy:.4f} on "
          f"{images:,} images (logged at training: {logged})")
    if args.bundle:
        bundle(args.tag, export, accuracy, images, recipe, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
