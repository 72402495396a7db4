"""The ``specnet-zoo`` command.

    specnet-zoo fit|validate|test|predict --config recipes/<recipe>.yaml [--dotted.overrides ...]
    specnet-zoo models [--markdown | --tags]
    specnet-zoo profile --model NAME [--threshold B | --density D] [--storage S] --batch-size N
    specnet-zoo reproduce info-preservation [--photos DIR] [--out DIR]
    specnet-zoo reproduce specnet-memory [--out DIR] [--batch-size N] [--models ...] [--no-table]
    specnet-zoo reproduce all [--quick | --budget quick|cpu|full] [--out DIR] [--runs DIR] [--device D]
    specnet-zoo export CKPT --out DIR [--tag TAG] [--no-memory]
    specnet-zoo push DIR --repo-id ORG/NAME [--revision R] [--private] [--dry-run]
    specnet-zoo --version
"""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .paths import shared_data_dir


def _reproduce_info_preservation(args: argparse.Namespace) -> int:
    from .reproduce.info_preservation import run

    run(args.photos, args.out)
    return 0


def _reproduce_specnet_memory(args: argparse.Namespace) -> int:
    from .reproduce import specnet_memory as sm

    pairs = [p for p in sm.PAIRS if p[0] in args.models] if args.models else sm.PAIRS
    if args.models and len(pairs) != len(args.models):
        known = ", ".join(p[0] for p in sm.PAIRS)
        raise ValueError(f"--models takes SpecNet models with a spatial twin ({known}), got {', '.join(args.models)}")
    sm.run(args.out, batch_size=args.batch_size, table_batch_size=args.table_batch_size, pairs=pairs,
           table=not args.no_table, timing_steps=args.timing_steps)
    return 0


def _reproduce_all(args: argparse.Namespace) -> int:
    import torch

    from .reproduce.results import run_all

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {args.device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    budget = "quick" if args.quick else args.budget
    if budget is None:
        budget = "full" if torch.cuda.is_available() else "cpu"
    out = args.out or ("outputs/reproduce/quick" if budget == "quick" else "docs")
    runs = args.runs or f"outputs/reproduce/runs-{budget}"
    run_all(budget, out, runs, device=args.device, data_root=args.data, memory=not args.no_memory,
            speed=not args.no_speed)
    return 0


def _models(args: argparse.Namespace) -> int:
    from ._factory import model_table, pretrained_table

    print(pretrained_table() if args.tags else model_table(markdown=args.markdown))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import CARD_TEMPLATE, export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, tag=args.tag, memory=not args.no_memory,
                            card_template=args.card_template or CARD_TEMPLATE, command=args.train_command)
    config = json.loads((out / "config.json").read_text())
    record = config["specnet_zoo"]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()) or "no logged test metrics"
    print(f"exported {config['architecture']}.{config['pretrained_cfg']['tag']} to {out}: model.safetensors "
          f"({record['bytes']:,} bytes, sha256 {record['sha256']}), config.json, README.md; {metrics}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_export

    print(push_export(args.folder, args.repo_id, revision=args.revision, private=args.private, dry_run=args.dry_run))
    return 0


def _profile(args: argparse.Namespace) -> int:
    import json

    import torch

    from ._factory import create_model, spatial_twin
    from .data import sample_batch
    from .profiling import MB, measure_memory

    kwargs = {}
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    if args.density is not None:
        kwargs["density"] = args.density
    if args.storage is not None:
        kwargs["storage"] = args.storage
    model = create_model(args.model, **kwargs)
    twin_name = spatial_twin(args.model) if args.twin == "auto" else (None if args.twin == "none" else args.twin)
    in_chans, size = model.pretrained_cfg["input_size"][0], model.pretrained_cfg["input_size"][1:]
    data = args.data
    if data == "auto":
        data = "mnist" if in_chans == 1 else "cifar10"
    if data == "random":
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(args.batch_size, in_chans, *size, generator=generator)
        targets = torch.randint(0, model.num_classes, (args.batch_size,), generator=generator)
    else:
        inputs, targets = sample_batch(data, args.batch_size)
        if tuple(inputs.shape[1:]) != (in_chans, *size):
            raise ValueError(f"{args.model} expects {in_chans}x{size[0]}x{size[1]} input; {data} batches are "
                             f"{'x'.join(map(str, inputs.shape[1:]))}; pass --data random or another dataset")
    device = torch.device(args.device)
    inputs, targets = inputs.to(device), targets.to(device)

    def measure(name, net):
        net = net.to(device).train()
        return measure_memory(net, inputs, targets, optimizer=args.optimizer, peak=not args.no_peak,
                              timing_steps=args.timing_steps, name=name)

    report = measure(args.model, model)
    twin = measure(twin_name, create_model(twin_name)) if twin_name else None
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
    print(f"{args.model} ({settings}), batch {args.batch_size} of {data} {in_chans}x{size[0]}x{size[1]}, "
          f"device {device}, optimizer {args.optimizer}")
    print(report.table(depth=args.depth, twin=twin))
    rows = [("saved activations", "saved_bytes"), ("parameters", "param_bytes"), ("gradients", "grad_bytes"),
            ("optimizer state", "optimizer_bytes"), ("step peak", "peak_bytes")]
    print()
    print(f"{'':<22}{args.model:>14}" + (f"{twin_name:>16}{'ratio':>8}" if twin else ""))
    for label, key in rows:
        mine = getattr(report, key)
        if mine is None:
            continue
        line = f"{label + ' MB':<22}{mine / MB:>14.2f}"
        if twin:
            theirs = getattr(twin, key)
            line += f"{theirs / MB:>16.2f}{mine / max(theirs, 1):>8.3f}"
        print(line)
    if report.step_time_s is not None:
        line = f"{'step time s':<22}{report.step_time_s:>14.3f}"
        if twin and twin.step_time_s:
            line += f"{twin.step_time_s:>16.3f}{report.step_time_s / twin.step_time_s:>8.3f}"
        print(line)
    if report.peak_bytes is not None:
        print(f"(step peak: {report.peak_method}, bytes allocated above the step's start)")
    if args.betas and any(type(m).__name__ == "SpectralConv2d" for m in model.modules()):
        print()
        print(kept_fraction_table(args.model, model, inputs, args.betas))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": report.as_dict(), "twin": twin.as_dict() if twin else None}, f, indent=1)
    return 0


def kept_fraction_table(name: str, model, inputs, betas) -> str:
    """Each spectral layer's kept fraction at every beta (SpecNet eq. 4 on eq. 7's scale), same weights and batch."""
    import torch

    from ._factory import create_model
    from .layers import spectral_densities

    columns = {}
    for beta in betas:
        probe = create_model(name, threshold=beta).to(inputs.device).train()
        probe.load_state_dict(model.state_dict())
        with torch.no_grad():
            probe(inputs)
        columns[beta] = spectral_densities(probe)
    layers = list(next(iter(columns.values())))
    width = max(len("kept fraction by layer"), *(len(n) for n in layers))
    lines = [f"{'kept fraction by layer':<{width}}" + "".join(f"{f'beta {b:g}':>11}" for b in betas)]
    for layer in layers:
        lines.append(f"{layer:<{width}}" + "".join(f"{columns[b][layer]:>11.4f}" for b in betas))
    mean = {b: sum(columns[b].values()) / len(layers) for b in betas}
    lines.append(f"{'mean':<{width}}" + "".join(f"{mean[b]:>11.4f}" for b in betas))
    return "\n".join(lines)


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
    models.add_argument("--tags", action="store_true", help="print every pretrained tag: its weights (test accuracy, "
                        "file, training, command) or why it has none (Markdown)")
    models.set_defaults(handler=_models)
    profile = commands.add_parser(
        "profile", help="training memory of a model layer by layer, against its spatial twin",
        description="Count the bytes one training step keeps for backward (per layer, de-duplicated by storage), "
        "the parameter/gradient/optimizer bytes and the step's peak, for the model and its spatial twin.")
    profile.add_argument("--model", required=True, help="model name, e.g. specvgg16")
    sparsity = profile.add_mutually_exclusive_group()
    sparsity.add_argument("--threshold", type=float, help="SpecNet beta: zero spectral entries with |Y| < beta")
    sparsity.add_argument("--density", type=float, help="keep this fraction of each spectrum (per sample)")
    profile.add_argument("--storage", choices=("compact", "float16", "int8", "dense"),
                         help="what spectral blocks keep for backward (default: compact, lossless)")
    profile.add_argument("--batch-size", type=int, default=64)
    profile.add_argument("--data", default="auto", choices=("auto", "mnist", "cifar10", "random"),
                         help="a real test batch from the shared data (auto: by input channels) or random normal")
    profile.add_argument("--twin", default="auto", help="spatial model to compare with (auto, none or a name)")
    profile.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw", "none"))
    profile.add_argument("--depth", type=int, default=2, help="module-name depth of the table rows")
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--timing-steps", type=int, default=1, help="timed steps (median reported); 0: none")
    profile.add_argument("--no-peak", action="store_true", help="skip the (profiled) peak measurement")
    profile.add_argument("--json", help="also write both reports to this JSON file")
    profile.add_argument("--betas", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.5, 0.7, 1.0, 1.5],
                         help="SpecNet models: print every spectral layer's kept fraction at these betas "
                         "(comma-separated, on the paper's unnormalised DFT scale; empty to skip)")
    profile.set_defaults(handler=_profile)
    export = commands.add_parser(
        "export", help="write model.safetensors, config.json and a model card from a training checkpoint",
        description="Read a Lightning checkpoint (weights_only=True) and write DIR/model.safetensors, a timm-style "
        "config.json and README.md (model card from model_cards/template.md with the run's logged test metrics).")
    export.add_argument("checkpoint", help="a .ckpt written by specnet-zoo fit")
    export.add_argument("--out", required=True, help="folder to write (created if needed)")
    export.add_argument("--tag", help="pretrained tag (default: the dataset, e.g. mnist)")
    export.add_argument("--no-memory", action="store_true", help="skip measuring training memory against the twin")
    export.add_argument("--card-template", help="Jinja model card template (default: model_cards/template.md)")
    export.add_argument("--train-command", help="the command that trained the checkpoint (shown in the card)")
    export.set_defaults(handler=_export)
    push = commands.add_parser(
        "push", help="upload an export folder to the Hugging Face Hub",
        description="Create the model repo (exist_ok) and upload the folder with huggingface_hub.HfApi; the token "
        "comes from HF_TOKEN or `hf auth login`.")
    push.add_argument("folder", help="a folder written by specnet-zoo export")
    push.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--dry-run", action="store_true", help="check the folder and print what would be uploaded")
    push.set_defaults(handler=_push)
    reproduce = commands.add_parser("reproduce", help="reproduce a figure of the papers")
    experiments = reproduce.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    info = experiments.add_parser("info-preservation", help="Rippel et al. 2015 Fig. 4(a): spectral vs max pooling")
    info.add_argument("--photos", default=str(shared_data_dir() / "photos"), help="folder of photographs")
    info.add_argument("--out", default="outputs/info_preservation", help="where to write the CSV and PNG")
    info.set_defaults(handler=_reproduce_info_preservation)
    memory = experiments.add_parser("specnet-memory", help="SpecNet Fig. 3: relative training memory vs beta and density")
    memory.add_argument("--out", default="outputs/specnet_memory", help="where to write the CSVs and PNG")
    memory.add_argument("--batch-size", type=int, default=64, help="batch of the beta/density sweep (SpecNet's)")
    memory.add_argument("--table-batch-size", type=int, default=128, help="batch of the comparison table")
    memory.add_argument("--models", nargs="+", help="SpecNet models to sweep (default: all four)")
    memory.add_argument("--no-table", action="store_true", help="skip the checkpoint/offload comparison table")
    memory.add_argument("--timing-steps", type=int, default=2, help="timed steps per table row (median)")
    memory.set_defaults(handler=_reproduce_specnet_memory)
    every = experiments.add_parser(
        "all", help="every accuracy reproduction, then results.md with figures (and the README's tables)",
        description="SpecNet accuracy vs beta/density with memory (Fig. 3 d-f), Rippel's spectral-parametrization "
        "speedup (Fig. 5) and spectral pooling vs max pooling (Sec. 5.1), trained at one budget; writes "
        "OUT/results.md, OUT/figures/, one CSV per experiment and hardware.json. Runs resume: finished ones are "
        "reused, a killed one continues from its last checkpoint. With OUT the checkout's docs/ folder it also "
        "regenerates docs/specnet_memory.md and the benchmark tables and rewrites the README's tables.")
    budget = every.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="same as --budget quick (minutes on a CPU)")
    budget.add_argument("--budget", choices=("quick", "cpu", "full"),
                        help="quick: pipeline check; cpu: ~2 h on 2 cores; full: an accelerator (default: full on "
                        "CUDA, else cpu)")
    every.add_argument("--out", help="report folder (default: docs, or outputs/reproduce/quick for --quick)")
    every.add_argument("--runs", help="where runs keep logs, checkpoints and results (default: "
                       "outputs/reproduce/runs-<budget>)")
    every.add_argument("--device", default="cpu", help="torch device of the training runs (cpu, cuda, cuda:1)")
    every.add_argument("--data", default=str(shared_data_dir()), help="the shared data folder (mnist/, cifar10-jpg/)")
    every.add_argument("--no-memory", action="store_true", help="skip the SpecNet memory sweep (specnet_memory.md)")
    every.add_argument("--no-speed", action="store_true", help="skip the benchmark scripts (README speed tables)")
    every.set_defaults(handler=_reproduce_all)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        from .training.cli import run

        # From the shell, LightningCLI reads sys.argv itself (passing it again as args makes Lightning warn).
        return run(None if sys.argv[1:] == argv else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    import torch

    from .pretrained import WeightsError

    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, TypeError, PermissionError, WeightsError) as error:
        # bad arguments, missing data or unusable weights: one line says it
        print(f"specnet-zoo: error: {error}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError as error:
        print(f"specnet-zoo: error: out of memory ({type(error).__name__}): {error}\n"
              "try a smaller --batch-size, --storage int8 or a sparser --density", file=sys.stderr)
        return 1
    # Any other error (a bug, a failing kernel) propagates with its traceback and cause.


if __name__ == "__main__":
    sys.exit(main())
