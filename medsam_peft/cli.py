"""``medsam-peft`` command line: thin wrappers that turn arguments into calls of the package's functions."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

from medsam_peft.benchmark import BASELINE_TUNER  # standard library only: keeps the CLI's start-up light
from medsam_peft.errors import ConfigError, MedsamPeftError


def _parse_value(text: str) -> Any:
    """Tuner option values from the command line: JSON where it parses (numbers, booleans, null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _tuner_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def cmd_params(args: argparse.Namespace) -> int:
    from medsam_peft.tuners import build_tuned_sam

    options = _tuner_options(args.option)
    if args.rank is not None:
        options["r"] = args.rank
    # The meta device builds the structure without allocating weights: ViT-H counts in a second.
    model = build_tuned_sam(args.backbone, None, args.tuner, image_size=args.image_size, device="meta",
                            tuner_options=options, mask_tokens=_parse_value(args.mask_tokens),
                            num_classes=args.num_classes, query_init=args.query_init)
    report = model.parameter_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"backbone  {report['backbone']}")
    print(f"tuner     {report['tuner']}")
    print(f"trainable {report['trainable']:,}")
    print(f"total     {report['total']:,}")
    print(f"ratio     {100 * report['ratio']:.2f}%")
    for group, count in report["trainable_by_group"].items():
        print(f"  {group:<14}{count:,}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from medsam_peft.data import DATASETS, prepare_colin27_aal, prepare_dataset, prepare_invesalius_ct

    if args.name == "colin27_aal":
        structures = tuple(int(s) for s in args.structures.split(",")) if args.structures else None
        kwargs = {"structures": structures} if structures else {}
        path = prepare_colin27_aal(args.root, source=args.source, plane=args.plane, min_pixels=args.min_pixels,
                                   slice_step=args.slice_step, multiclass=args.multiclass, **kwargs)
    elif args.name == "invesalius_ct":
        path = prepare_invesalius_ct(args.root, source=args.source, plane=args.plane, min_pixels=args.min_pixels)
    elif args.name in DATASETS:
        path = prepare_dataset(args.name, args.root, source=args.source, seed=args.seed, mirror=args.mirror)
    else:
        raise ValueError(f"unknown dataset {args.name!r}; known: colin27_aal, invesalius_ct, "
                         f"{', '.join(sorted(DATASETS))}")
    datalist = json.loads(path.read_text())
    counts = ", ".join(f"{len(v)} {k}" for k, v in datalist.items() if k != "meta" and not k.endswith("_volumes"))
    print(f"wrote {path}: {counts}")
    return 0


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from medsam_peft.export import export_bundle

    out = export_bundle(args.run_dir, args.out_dir, adapter=args.adapter, name=args.name, label_name=args.label)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"wrote MONAI bundle {out}: {', '.join(files)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsam_peft.predict import predict

    done = predict(args.adapter, args.input, args.output, boxes=args.boxes, prompt_free=args.prompt_free,
                   device=args.device, checkpoint=args.checkpoint,
                   progress=lambda items: tqdm(items, desc="predict", unit="file", disable=args.quiet))
    empty = sum(1 for p in done if p.foreground == 0)
    print(f"wrote {len(done)} masks to {args.output} ({empty} empty); summary in "
          f"{args.output.rstrip('/')}/predictions.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medsam_peft.graph_export import export_graphs

    summary = export_graphs(args.adapter, args.output, formats=tuple(args.format), merge=args.merge,
                            checkpoint=args.checkpoint, example=args.example, box=args.box, atol=args.atol)
    state = "merged into the base weights" if summary["merged"] else "unmerged"
    print(f"{summary['tuner']} on {summary['backbone']} ({state}), inputs "
          + ", ".join(f"{k} {v}" for k, v in summary["inputs"].items()) + f" -> masks {summary['outputs']['masks']}")
    for name, check in summary["checks"].items():
        print(f"  {name}: {args.output.rstrip('/')}/{check['file']} ({check['bytes'] / 2**20:.1f} MiB), max |graph - "
              f"eager| {check['max_abs_diff']:.2e}, mask agreement {100 * check['mask_agreement']:.3f}%")
    return 0


def cmd_log_model(args: argparse.Namespace) -> int:
    from medsam_peft.mlflow_model import log_tuned_model

    logged = log_tuned_model(args.source, tracking_uri=args.tracking_uri, registered_name=args.register,
                             run_id=args.run_id, label=args.label)
    registered = f"; registered as {args.register!r} version {logged['version']}" if args.register else ""
    print(f"logged MLflow model {logged['model_uri']} in run {logged['run_id']} ({logged['tracking_uri']}){registered}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from medsam_peft.hub import push

    pushed = push(args.source, args.repo_id, hub=args.hub, token=args.token, private=args.private, label=args.label)
    print(f"pushed {len(pushed['files'])} files to {pushed['repo']}: {', '.join(pushed['files'])}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from medsam_peft.hub import pull

    pulled = pull(args.repo_id, args.out_dir, hub=args.hub, revision=args.revision, token=args.token)
    print(f"pulled {args.repo_id} into {pulled['dir']} ({len(pulled['files'])} files, adapter checksum verified); "
          f"use it with: medsam-peft predict --adapter {pulled['dir']} ...")
    return 0


@functools.lru_cache(maxsize=None)
def _mergeable(backbone: str, tuner: str) -> bool:
    from medsam_peft.tuners import build_tuned_sam

    if tuner == "base":
        return False
    model = build_tuned_sam(backbone, None, tuner, device="meta")
    return all(layer.supports_merge for _, layer in model.tuner_layers())


def cmd_bench(args: argparse.Namespace) -> int:
    from itertools import product

    from medsam_peft.benchmark import BenchCase, add_ratios, format_table, merge_rounds, run_case

    cases = []
    for backbone, size, dtype, batch, mode, tuner, attention, checkpointing, cache, allocator, experts, compiled in product(
        args.backbone, args.size, args.dtype, args.batch, args.mode, args.tuner, args.attention, args.checkpointing,
        args.trunk_cache, args.cpu_allocator, args.conv_experts, args.compile,
    ):
        if experts == "plain" and tuner != "conv_lora":
            continue  # only Conv-LoRA has the experts
        if (mode in ("train", "epochs") and tuner == "base") or (
            mode == "infer_merged" and not _mergeable(backbone, tuner)
        ):
            print(f"  {backbone} {tuner} {mode}: skipped (nothing to train / not mergeable)")
            continue
        cases.append(BenchCase(backbone, tuner, size, dtype, batch, mode, args.device, args.warmup, args.repeats,
                               attention, checkpointing == "on", cache, args.images, allocator, experts,
                               compiled == "on"))
    # Round-robin over the cases: on a shared or throttling machine later runs are slower, and the ratios should
    # not depend on the order the cases were listed in.
    measured: list[list[dict]] = [[] for _ in cases]
    for round_index in range(args.rounds):
        for i in range(len(cases)) if round_index % 2 == 0 else reversed(range(len(cases))):
            case = cases[i]
            measured[i].append(run_case(case))
            print(f"  {case.backbone} {case.label} {case.mode} {case.size} {case.dtype} b{case.batch} "
                  f"(round {round_index + 1}): {measured[i][-1]['median_s']:.3f} s", flush=True)
    results = [merge_rounds(rounds) for rounds in measured]
    print(format_table(add_ratios(results, args.baseline)))
    if args.json:
        from medsam_peft.utils.atomic_io import write_json_atomic

        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    """``--adapter`` / ``--checkpoint``: the tuned model of the commands that serve one (``predict.open_model``)."""
    parser.add_argument("--adapter", required=True,
                        help="training run folder, exported bundle folder, or an adapter file inside one")
    parser.add_argument("--checkpoint", default=None, help="base SAM weights (default: the run's or bundle's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-peft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    params = sub.add_parser("params", help="count trainable and total parameters of a backbone + tuner")
    params.add_argument("--backbone", default="vit_b")
    params.add_argument("--tuner", default="conv_lora")
    params.add_argument("--image-size", type=int, default=None)
    params.add_argument("--rank", type=int, default=None, help="shortcut for --option r=N")
    params.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="tuner option")
    params.add_argument("--mask-tokens", default="reference",
                        help="decoder mask tokens: 'reference' (the tuner paper's decoder), null (SAM's four) or N")
    params.add_argument("--num-classes", type=int, default=None, help="multi-class decoder with N classes")
    params.add_argument("--query-init", default=None, choices=["class", "perturbed", "token0"],
                        help="multi-class queries: class (default, one per class), perturbed, token0 (the reference)")
    params.add_argument("--json", action="store_true")
    params.set_defaults(func=cmd_params)

    prepare = sub.add_parser("prepare", help="turn a dataset into a MONAI datalist (datalist.json) under --root")
    prepare.add_argument("name", help="colin27_aal, invesalius_ct (offline), or a seed dataset (kvasir, isic2017, ...)")
    prepare.add_argument("--root", required=True, help="output folder")
    prepare.add_argument("--source", default=None,
                         help="folder with the raw files or archives (default: download / the installed package)")
    prepare.add_argument("--mirror", default=None, help="base URL serving the official archive names")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the splits the publisher does not fix")
    prepare.add_argument("--plane", default="axial", choices=["axial", "coronal", "sagittal"])
    prepare.add_argument("--min-pixels", type=int, default=50, help="keep (slice, structure) pairs with >= N pixels")
    prepare.add_argument("--slice-step", type=int, default=1, help="use every N-th slice")
    prepare.add_argument("--structures", default="", help="comma-separated AAL ids (default: 12 subcortical)")
    prepare.add_argument("--multiclass", action="store_true",
                         help="colin27_aal: one sample per slice, the structures as classes 1..K (0 = background)")
    prepare.set_defaults(func=cmd_prepare)

    bench = sub.add_parser("bench", help="time training steps / inference per tuner, with ratios to a baseline")
    bench.add_argument("--backbone", nargs="+", default=["vit_b"])
    bench.add_argument("--tuner", nargs="+", default=["lora", "conv_lora"],
                       help="tuners to time; 'base' = SAM without adapter (inference baseline)")
    bench.add_argument("--size", nargs="+", type=int, default=[256])
    bench.add_argument("--dtype", nargs="+", default=["auto"], choices=["auto", "bfloat16", "float16", "float32"],
                       help="autocast precision; auto: bfloat16 where the device runs it natively, else float32")
    bench.add_argument("--batch", nargs="+", type=int, default=[1])
    bench.add_argument("--mode", nargs="+", default=["train"], choices=["train", "infer", "infer_merged", "epochs"],
                       help="'epochs': epoch 1 then --repeats epochs over --images distinct images (trunk cache)")
    bench.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "eager", "sdpa", "chunked"],
                       help="auto (default): chunked global attention; windowed through SDPA for inference, the "
                            "official code in training")
    bench.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"],
                       help="activation checkpointing of the encoder blocks")
    bench.add_argument("--trunk-cache", nargs="+", default=["off"], help="off, auto, memory or a directory")
    bench.add_argument("--cpu-allocator", nargs="+", default=["reuse"], choices=["reuse", "system"],
                       help="reuse (default, as in training): keep freed CPU memory; system: glibc's defaults")
    bench.add_argument("--conv-experts", nargs="+", default=["fast"], choices=["fast", "plain"],
                       help="Conv-LoRA experts: fast (default: up-scaling + convolution as matrix products, on the CPU in float32 or bf16 autocast) or plain")
    bench.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                       help="torch.compile the model (compiled in the warm-up; Conv-LoRA then runs every expert)")
    bench.add_argument("--images", type=int, default=4, help="distinct images per epoch in 'epochs' mode")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--rounds", type=int, default=1,
                       help="measure every case this many times, alternating the order (median over all rounds)")
    bench.add_argument("--baseline", default=BASELINE_TUNER, help="tuner the training ratios are taken against")
    bench.add_argument("--json", default=None, help="also write the results to this JSON file")
    bench.set_defaults(func=cmd_bench)

    export = sub.add_parser("export-bundle", help="write a self-contained MONAI bundle from a training run")
    export.add_argument("run_dir", help="the training run's output_dir")
    export.add_argument("out_dir", help="new folder for the bundle")
    export.add_argument("--adapter", default=None, help="adapter file (default: the run's adapter_best.safetensors)")
    export.add_argument("--name", default=None, help="bundle name in metadata.json")
    export.add_argument("--label", default="foreground", help="name of the segmented structure")
    export.set_defaults(func=cmd_export_bundle)

    predict = sub.add_parser("predict", help="segment images or volumes with a tuned adapter, masks into a folder")
    _add_model_source(predict)
    predict.add_argument("--input", required=True,
                         help="an image (PNG/JPG/TIFF), a volume (NIfTI/MHA/NRRD, DICOM folder) or a folder of them")
    prompt = predict.add_mutually_exclusive_group()
    prompt.add_argument("--boxes", default=None,
                        help="JSON {\"<input file name>\": [x0, y0, x1, y1]} (image pixels; volumes: "
                             "[i0, i1, j0, j1, k0, k1] voxel indices, or a MONAI Label request object)")
    prompt.add_argument("--prompt-free", action="store_true", help="the model was trained without prompts")
    predict.add_argument("--output", required=True, help="folder for <stem>_pred.png / <stem>_pred.nii.gz")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    graph = sub.add_parser("export", help="TorchScript / ONNX graph of a tuned model, checked against the eager model")
    _add_model_source(graph)
    graph.add_argument("--output", required=True, help="folder for model.ts / model.onnx and export.json")
    graph.add_argument("--format", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"])
    graph.add_argument("--merge", default="auto", choices=["auto", "yes", "no"],
                       help="fold mergeable adapters (LoRA, SAM-PARSER, ...) into the base weights (auto: when possible)")
    graph.add_argument("--example", default=None, help="image the exports are checked on (default: a random image)")
    graph.add_argument("--box", nargs=4, type=float, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                       help="check box in the example's pixels (default: its middle half)")
    graph.add_argument("--atol", type=float, default=1e-4, help="largest accepted |graph - eager| logit difference")
    graph.set_defaults(func=cmd_export)

    log_model = sub.add_parser("log-model", help="log a tuned model as an MLflow pyfunc (image + box -> mask)")
    log_model.add_argument("source", help="training run folder (logged into its own MLflow run) or exported bundle")
    log_model.add_argument("--tracking-uri", default=None, help="default: the run folder's sqlite:///.../mlruns.db")
    log_model.add_argument("--register", default=None, metavar="NAME", help="also register it under this name")
    log_model.add_argument("--run-id", default=None, help="log into this MLflow run (default: the training run)")
    log_model.add_argument("--label", default="foreground", help="name of the segmented structure")
    log_model.set_defaults(func=cmd_log_model)

    hub_help = "Hub endpoint (default: $HF_ENDPOINT or https://huggingface.co) or a file:// mirror folder"
    push = sub.add_parser("push", help="publish a run or exported bundle as a Hugging Face Hub repository")
    push.add_argument("source", help="training run folder or exported bundle folder")
    push.add_argument("repo_id", help="OWNER/NAME")
    push.add_argument("--hub", default=None, help=hub_help)
    push.add_argument("--token", default=None, help="Hub token (default: huggingface_hub's login / $HF_TOKEN)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--label", default="foreground", help="name of the segmented structure")
    push.set_defaults(func=cmd_push)

    pull = sub.add_parser("pull", help="download a model repository into a bundle folder (checksum verified)")
    pull.add_argument("repo_id", help="OWNER/NAME")
    pull.add_argument("out_dir", help="new folder")
    pull.add_argument("--hub", default=None, help=hub_help)
    pull.add_argument("--revision", default=None)
    pull.add_argument("--token", default=None)
    pull.set_defaults(func=cmd_pull)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedsamPeftError as err:  # the package's own one-line messages: 1 for files and data, 2 for settings
        print(f"medsam-peft {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"medsam-peft {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
