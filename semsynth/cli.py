"""The `semsynth` command. Each subcommand is one `_cmd_<name>(sub)` function that declares its
arguments and sets `func`; the work itself lives in the library modules."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path


def _cmd_info(sub):
    p = sub.add_parser("info", help="list model presets, label spaces and where data/weights are looked up")

    def run(args):
        import torch

        from . import __version__
        from .labels import available_spaces
        from .models import PRESETS, build_model, count_parameters
        from .models.layers import winograd_enabled
        from .precision import bf16_mode, native_bf16
        from .utils import pick_device, shared_dir

        print(f"semsynth {__version__}")
        dev = pick_device(None)
        print(
            f"device: {dev}; --precision auto = {'bf16' if native_bf16(dev) else 'fp32'} here "
            f"({'native' if native_bf16(dev) else 'no native'} bf16; --precision bf16 runs as {bf16_mode(dev)})"
        )
        wino = "on" if winograd_enabled() else "off (SEMSYNTH_WINOGRAD=0)"
        print(f"CPU inference 3x3 convolutions by Winograd F(4x4, 3x3): {wino}")
        print("model presets:")
        for name in sorted(PRESETS):
            with torch.device("meta"):  # shapes only: no memory, no init cost
                n = count_parameters(build_model(name))
            print(f"  {name:22s} {n:>12,} parameters")
        print("label spaces:", ", ".join(available_spaces()))
        print("shared dir:", shared_dir(), "(exists)" if shared_dir().is_dir() else "(missing)")

    p.set_defaults(func=run)


def _cmd_bench(sub):
    p = sub.add_parser("bench", help="parameters, MACs, seconds, fraction of this machine's conv peak, memory")
    p.add_argument(
        "models",
        nargs="*",
        default=["crn-tiny", "crn-256p"],
        help="presets (crn-*, sims-synthesis-*, default-cityscapes, ...) or espnet-cityscapes",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: native)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--precision",
        nargs="+",
        choices=["auto", "fp32", "bf16"],
        default=["fp32", "bf16"],
        help="one row per precision (default: fp32 bf16)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row (the median is shown)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    def run(args):
        import json

        from .bench import bench_model, conv_peak, format_table
        from .errors import InputError
        from .precision import resolve_precision
        from .utils import pick_device

        dev = pick_device(args.device)
        if args.repeats < 1:
            raise InputError(f"--repeats must be at least 1 (got {args.repeats})")
        rows = []
        for prec in dict.fromkeys(resolve_precision(p, dev) for p in args.precision):
            for m in args.models:
                peak = conv_peak(prec, dev)  # before every row: a throttled machine moves both
                rows.append(bench_model(m, tuple(args.size) if args.size else None, str(dev), args.repeats, prec, peak))
        print(json.dumps(rows, indent=1) if args.json else format_table(rows))

    p.set_defaults(func=run)


def _add_train_options(p) -> None:
    """Options shared by `train` and `sims train`: where data and outputs go, common overrides."""
    p.add_argument("--data", help="dataset folder (Cityscapes layout, images/+labels/, CamVid, ...)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, samples, metrics.jsonl, tb/")
    p.add_argument("--steps", type=int, help="total optimisation steps (overrides epochs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int, help="steps between checkpoints (config key save_every)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    _add_label_options(p, space_help="label space of the training data (config key label_space)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override any config entry, e.g. data.size=[128,256] loss.preset=squeezenet; repeatable, later values win",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_label_options(p, space_help: str = "label space of the layouts (default: the model's)") -> None:
    """--label-space / --label-encoding: the same two options on every command that reads layouts."""
    p.add_argument(
        "--label-space",
        help=space_help + "; a built-in name (cityscapes, camvid, cocostuff, ade20k) or a label-space YAML file",
    )
    p.add_argument(
        "--label-encoding",
        help="id encoding of grey label maps, e.g. labelId or trainId for "
        "Cityscapes (default: by file name, else the space's default)",
    )


def _add_precision_option(p) -> None:
    """--precision: the same option on every command that runs networks (`semsynth.precision`).
    Checked by the library (one-line error), not by argparse (which would print its usage too)."""
    p.add_argument(
        "--precision",
        default="auto",
        metavar="{auto,fp32,bf16}",
        help="auto (default): bf16 where the device computes it natively (CUDA, CPUs with "
        "AVX512-BF16 or AMX), else fp32",
    )


def _check_precision(args) -> None:
    from .precision import resolve_precision

    resolve_precision(args.precision, "cpu")  # refuses a bad value before anything is loaded


def _train_from_args(args, preset: str, extra: dict, task: str | None = None):
    import yaml

    from .config import load_config, parse_overrides
    from .errors import ConfigError
    from .train import train

    o = parse_overrides(args.set)
    flags = {
        "data.path": args.data,
        "steps": args.steps,
        "epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "seed": args.seed,
        "save_every": args.save_every,
        "device": args.device,
        "label_space": args.label_space,
        "data.label_encoding": args.label_encoding,
        **extra,
    }
    o.update({k: v for k, v in flags.items() if v is not None})
    if args.epochs is not None and args.steps is None:
        o["steps"] = None  # --epochs replaces a preset's step count
    cfg = load_config(preset, o)
    if task and cfg.get("task") != task:
        raise ConfigError(f"{preset}: task is {cfg.get('task')!r}, not {task!r}")
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return
    print(f"checkpoint: {train(cfg, args.out, resume=not args.no_resume)}")


def _cmd_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model from a preset or config file",
        description="Train PRESET (a name in semsynth/configs, e.g. crn-256p, or a "
        "YAML file). Re-running with the same --out resumes from its latest checkpoint.",
    )
    p.add_argument(
        "preset",
        help="preset name (crn-256p, crn-512p, crn-1024p, crn-gta-256p, crn-tiny, sims-256p, ...) or config .yaml",
    )
    p.add_argument("--init-from", help="checkpoint of the previous stage (256p -> 512p -> 1024p)")
    _add_train_options(p)
    p.set_defaults(func=lambda args: _train_from_args(args, args.preset, {"init_from": args.init_from}))


def _cmd_synthesize(sub):
    p = sub.add_parser(
        "synthesize",
        help="label maps -> photos with a trained checkpoint",
        description="CHECKPOINT is a run folder, a step folder, a .safetensors file "
        "or a bundled model name ('default', 'camvid'). Inputs are label-map files or "
        "folders in any supported format; no photos needed.",
    )
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="label-map files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--k", type=int, help="number of variants per layout (at most the model's k)")
    p.add_argument("--grid", action="store_true", help="also write the k variants tiled in one image")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="synthesis size (default: the model's)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="layouts per forward (default: 4 on a GPU; on a CPU as many as make 256x512 pixels, 1 to 4)",
    )
    p.add_argument("--device")
    _add_precision_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out layouts whose outputs all exist (finishes an interrupted run)",
    )
    _add_label_options(p)
    p.add_argument("--bank", help="SIMS memory bank (SIMS checkpoints only; an error with others)")
    p.add_argument("--save-intermediates", action="store_true", help="SIMS: also write canvases and chosen segments")
    p.add_argument("--transform", help="SIMS: transformation-network checkpoint (default: identity placement)")
    p.add_argument("--order", help="SIMS: ordering-network checkpoint (default: class-order prior)")

    def run(args):
        from .pipelines import check_count, load_pipeline
        from .utils import check_writable_dir

        check_count(args.k, "--k")
        check_count(args.batch_size, "--batch-size")
        _check_precision(args)
        check_writable_dir(args.out)  # before loading anything
        pipe = load_pipeline(
            args.checkpoint,
            device=args.device,
            precision=args.precision,
            bank=args.bank,
            transform=args.transform,
            order=args.order,
        )
        written = pipe.synthesize_files(
            args.inputs,
            args.out,
            k=args.k,
            grid=args.grid,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            size=tuple(args.size) if args.size else None,
            skip_existing=args.skip_existing,
            label_space=args.label_space,
            label_encoding=args.label_encoding,
            save_intermediates=args.save_intermediates,
        )
        print(f"wrote {len(written)} image(s) to {args.out}")

    p.set_defaults(func=run)


def _cmd_convert(sub):
    p = sub.add_parser(
        "convert",
        help="convert a released CRN TensorFlow checkpoint to a semsynth checkpoint",
        description="CKPT_PREFIX is the TF checkpoint prefix (e.g. result_256p/model.ckpt, "
        "with .index and .data-00000-of-00001 next to it) or its .index file. No TensorFlow "
        "needed. Adam slots and beta powers are dropped.",
    )
    p.add_argument("prefix", metavar="CKPT_PREFIX")
    p.add_argument(
        "--preset",
        help="model preset (crn-256p, crn-512p, crn-1024p, crn-gta-256p); default: the structure read from the index",
    )
    p.add_argument("-o", "--out", required=True, help="output checkpoint folder (model.safetensors)")
    p.add_argument("--label-space", default="cityscapes")
    p.add_argument("--no-verify", action="store_true", help="skip the CRC32C checks of index and data")

    def run(args):
        from .convert import convert_official_crn
        from .utils import check_writable_dir

        check_writable_dir(args.out)
        target = convert_official_crn(
            args.prefix, args.out, preset=args.preset, label_space=args.label_space, verify=not args.no_verify
        )
        print(f"wrote {target} ({args.preset or 'structure inferred from the index'})")

    p.set_defaults(func=run)


def _cmd_export(sub):
    p = sub.add_parser(
        "export",
        help="export a CRN model or SIMS synthesis network to ONNX or TorchScript",
        description="MODEL is a run folder, step folder, .safetensors file or bundled model "
        "name. The format follows -o's suffix (.onnx, or .pt for TorchScript). The graph has a "
        "dynamic batch axis at a fixed size (--size, default native); after writing, the file "
        "is run on a random layout and compared with PyTorch.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--out", required=True, help="output file (.onnx or .pt)")
    p.add_argument("--format", choices=["onnx", "torchscript"], help="default: by the suffix of -o")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the model's)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    def run(args):
        from .errors import OutputExistsError
        from .export import export_model
        from .utils import check_writable_dir

        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_writable_dir(out.parent)
        r = export_model(args.model, out, fmt=args.format, size=args.size, verify=not args.no_verify)
        print(
            f"wrote {r['path']} ({r['format']}, {r['task']}, {r['size'][0]}x{r['size'][1]}, "
            f"inputs {', '.join(r['inputs'])} -> {', '.join(r['outputs'])}, {r['bytes'] / 1e6:.1f} MB)"
        )
        if r.get("verified"):
            print(
                f"{r['runner']} vs PyTorch, batch {r['batch']}: max abs diff {r['max_abs_diff']:.2e}, "
                f"mean {r['mean_abs_diff']:.2e}"
            )
        elif "why" in r:
            print(f"not verified: {r['why']}")

    p.set_defaults(func=run)


def _cmd_layouts(sub):
    p = sub.add_parser(
        "layouts",
        help="write procedural street-scene label maps (Cityscapes classes)",
        description="Writes DIR/layout_<seed>_trainIds.png (grey class indices, 255 = void) "
        "and with --color DIR/layout_<seed>_color.png previews. Deterministic per seed.",
    )
    p.add_argument("-n", type=int, default=4, help="number of layouts")
    p.add_argument("--seed", type=int, default=0, help="seed of the first layout (then seed+1, ...)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--color", action="store_true", help="also write colour previews")
    p.add_argument("--overwrite", action="store_true", help="replace layout files that already exist")

    def run(args):
        from .layouts import write_layouts

        written = write_layouts(
            args.out, n=args.n, seed=args.seed, size=tuple(args.size), color=args.color, overwrite=args.overwrite
        )
        print(f"wrote {len(written)} file(s) to {args.out}")

    p.set_defaults(func=run)


def _cmd_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score synthesized images: segmentation consistency, FID/KID, diversity",
        description="IMAGES are folders of synthesized images named after their layouts (<stem>.png, or "
        "<stem>_k<i>.png for k variants), one per model (NAME=FOLDER names its column), or one folder of "
        "real photos to score alone. Writes REPORT_DIR/report.json, report.md and report.html: a column "
        "per model and the real photos' ceiling, intervals over layouts, paired comparisons of the "
        "models on the same layouts, FD/KID at matched sample sizes, thumbnails.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="image folder(s), or NAME=FOLDER; the first is the baseline of the comparisons",
    )
    p.add_argument("--labels", required=True, help="folder of the layouts (label maps)")
    p.add_argument("--real", help="folder of the real photos of the same layouts (the ceiling column)")
    p.add_argument(
        "--segmenter",
        help="registered segmenter (espnet-cityscapes, espnet-camvid) or "
        "module:attribute of a plug-in; default: the label space's",
    )
    p.add_argument(
        "--segmenter-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resolution the segmenter runs at (default: its own, 512 1024 for ESPNet Cityscapes)",
    )
    p.add_argument("--label-space", help="label space of the layouts (default: the segmenter's)")
    p.add_argument("--label-encoding", help="id encoding of grey label maps (default: by file name)")
    p.add_argument(
        "--polegroup",
        choices=["pole", "ignore"],
        default="pole",
        help="Cityscapes polegroup (labelId 18): scored as pole, as the generators read it "
        "(default), or ignored, as the official Cityscapes evaluation does",
    )
    p.add_argument(
        "--inception",
        metavar="PATH",
        help="pt_inception-2015-12-05-6726825d.pth for the "
        "standard FID (default: looked up in the weight folders, never downloaded)",
    )
    p.add_argument(
        "--fid-method",
        default="auto",
        choices=["auto", "sqrtm", "eigh", "lowrank"],
        help="Tr sqrt(S1 S2) of the FID: auto = scipy sqrtm (the reference) when there are at "
        "least 2048 images per set, else the exact low-rank formula (fast)",
    )
    p.add_argument(
        "--fd-network",
        default="auto",
        choices=["auto", "squeezenet1_1", "espnet", "none"],
        help="network of the non-standard Fréchet distance",
    )
    p.add_argument(
        "--draws",
        "--kid-subsets",
        dest="draws",
        type=int,
        default=50,
        help="random splits of the layouts into equal halves for FD/KID (default 50; all of them when there are fewer)",
    )
    p.add_argument(
        "--kid-subset-size", type=int, default=1000, help="KID on at most this many images per set and split"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the layouts (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples and splits (default 0)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device")
    _add_precision_option(p)
    p.add_argument("--thumbnails", type=int, default=4, help="layouts shown as thumbnails")
    p.add_argument(
        "--json", action="store_true", help="print the JSON report (docs/evaluate-report.md) instead of the summary"
    )
    p.add_argument("-o", "--out", metavar="REPORT_DIR", help="report folder (optional with --json)")

    def run(args):
        from .evaluate import evaluate
        from .utils import check_writable_dir

        if args.out is None and not args.json:
            p.error("give -o REPORT_DIR (or --json to print the report)")
        _check_precision(args)
        if args.out is not None:
            check_writable_dir(args.out, "report folder")  # before minutes of computing
        report = evaluate(
            args.images,
            args.labels,
            args.real,
            segmenter=args.segmenter,
            segmenter_size=tuple(args.segmenter_size) if args.segmenter_size else None,
            label_space=args.label_space,
            label_encoding=args.label_encoding,
            polegroup=args.polegroup,
            inception=args.inception,
            fid_method=args.fid_method,
            fd_network=args.fd_network,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            draws=args.draws,
            kid_subset_size=args.kid_subset_size,
            bootstrap=args.bootstrap,
            seed=args.seed,
            thumbnails=args.thumbnails if args.out else 0,
            progress=lambda s: print(s, file=sys.stderr),
        )
        paths = report.write(args.out) if args.out else None
        if args.json:
            print(report.to_json())
        else:
            print(report.summary_markdown())
            print(f"\nwrote {paths['json']}, {paths['md']}, {paths['html']}")

    p.set_defaults(func=run)


# --------------------------------------------------------------------------- sims
# `semsynth sims <sub>`: each sub-subcommand is one function in SIMS_COMMANDS taking the `sims`
# subparsers object (add more, e.g. `sims train`, by appending a function to SIMS_COMMANDS).


def _sims_build_bank(ssub):
    p = ssub.add_parser(
        "build-bank",
        help="build or extend a SIMS memory bank of training segments",
        description="Cut every (layout, photo) pair of the dataset(s) into segments and store them in "
        "BANK (sharded; resumable: images already in BANK are skipped, so re-running after an "
        "interrupt, or with another --data, only adds what is missing).",
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        help="dataset folder (Cityscapes, images/+labels/, ...); repeat to add several",
    )
    p.add_argument("--out", required=True, help="bank folder")
    p.add_argument("--split", default="train")
    p.add_argument("--label-space", help="label space (default: the dataset's own)")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="segment resolution (new banks: 256 512, as the original)"
    )
    p.add_argument(
        "--rgb-scale",
        type=int,
        help="photos kept at this multiple of --size (new banks: 2, "
        "photos at 512x1024; sims-1024p needs 4, full 1024x2048 photos)",
    )
    p.add_argument("--shard-images", type=int, default=64, help="source images per shard")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes decoding, cutting and encoding images (default: one per CPU, "
        "at most 8; 0: all in this process). The bank is the same for any number",
    )
    p.add_argument("--limit", type=int, help="add at most this many new images")
    p.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="leave out samples whose name matches (glob; repeat), e.g. held-out frames",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args):
        import time

        from .sims.bank import build_bank_from_paths
        from .utils import check_writable_dir

        check_writable_dir(args.out, "bank folder")
        t0 = time.perf_counter()
        bank = build_bank_from_paths(
            args.data,
            args.out,
            space=args.label_space,
            split=args.split,
            size=args.size,
            rgb_scale=args.rgb_scale,
            shard_images=args.shard_images,
            workers=args.workers,
            limit=args.limit,
            exclude=args.exclude,
            progress=not args.quiet,
        )
        st = bank.build_stats
        rate = f", {st['images'] / st['seconds']:.2f} images/s with {st['workers']} worker(s)" if st["images"] else ""
        print(f"{bank}: {bank.disk_bytes() / 1e6:.1f} MB on disk, {time.perf_counter() - t0:.1f} s{rate}")

    p.set_defaults(func=run)


def _sims_canvas(ssub):
    p = ssub.add_parser(
        "canvas",
        help="retrieve segments for layouts and write their canvases (no networks needed)",
        description="For each LABEL map: retrieve bank segments, paste them back to front in the "
        "class-order prior with identity placement, and write <name>_canvas.png, <name>_support.png "
        "and <name>_layout.png (the revised layout) into OUT.",
    )
    p.add_argument("labels", nargs="+", metavar="LABEL", help="label maps or folders of them")
    p.add_argument("--bank", required=True)
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument(
        "--mode",
        choices=("iou", "context"),
        default="iou",
        help="retrieval score: mask IoU (released) or IoU + context IoU (paper)",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="canvas size (default: the bank's RGB size)")
    _add_label_options(p, "label space of the layouts (default: the bank's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random elision")
    p.add_argument("--overwrite", action="store_true", help="replace canvases that already exist")
    p.add_argument("--prior", help="class-order prior .json (from `sims order-prior`); default: the original")
    p.add_argument("--no-outer-elision", action="store_true")

    def run(args):
        from .data import check_size, save_image
        from .labels import layout_reader, save_label
        from .pipelines import plan_outputs
        from .sims.bank import Bank
        from .sims.canvas import CanvasConfig, compose_canvas
        from .sims.order import coarse_order
        from .sims.retrieval import Retriever

        size = check_size(args.size, "--size")
        bank = Bank.open(args.bank)
        read = layout_reader(bank.space, args.label_space, args.label_encoding)
        plan = plan_outputs(
            args.labels,
            args.out,
            lambda s: [f"{s}_{x}.png" for x in ("canvas", "support", "layout")],
            overwrite=args.overwrite,
        )
        retriever = Retriever(bank)
        order = coarse_order(bank.space, prior=args.prior) if args.prior else None
        cfg = CanvasConfig(outer_elision=not args.no_outer_elision)
        out = Path(args.out)
        for i, (f, _) in enumerate(plan):
            lab = read(f)
            res = retriever.search(lab, mode=args.mode)
            cv = compose_canvas(bank, res, size=size, order=order, config=cfg, rng=args.seed + i)
            save_image(out / f"{f.stem}_canvas.png", cv.rgb)
            save_image(out / f"{f.stem}_support.png", (cv.support * 255).astype("uint8"))
            save_label(out / f"{f.stem}_layout.png", cv.label, bank.space)
            n = int(res.searched.sum())
            print(
                f"{f.name}: {n} of {len(res.query)} segments retrieved ({res.seconds * 1000:.0f} ms), "
                f"support {cv.support.mean():.0%} -> {out / (f.stem + '_canvas.png')}"
            )

    p.set_defaults(func=run)


def _sims_order_prior(ssub):
    p = ssub.add_parser(
        "order-prior",
        help="the class-order prior (back to front), from order_frequency.mat or data",
        description="Without --data: recompute the original order from SIMS' order_frequency.mat "
        "(--mat, default ../shared/reference/sims_priors/order_frequency.mat). With --data: count "
        "which class is behind which over the label maps (B.4.2 pairs; lower-region cue, no depth) "
        "and derive the order from those counts.",
    )
    p.add_argument("--data", action="append", help="dataset folder(s) or label files (label maps only are read)")
    p.add_argument("--mat", help="an order_frequency.mat file")
    p.add_argument("--label-space", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("-o", "--out", help="write the prior (counts + order) as JSON")

    def run(args):
        import numpy as np

        from .data import open_dataset
        from .labels import get_space
        from .sims.order import back_ratio, load_order_frequency, occlusion_counts, order_from_counts, save_prior
        from .utils import check_writable_dir

        if args.out:
            check_writable_dir(Path(args.out).parent)
        if args.data:
            counts, space = None, None
            for d in args.data:
                ds = open_dataset(d, space=args.label_space, split=args.split, require_images=False, cache=False)
                space = space or ds.space
                c = occlusion_counts(ds, space, progress=True)
                counts = c if counts is None else counts + c
        else:
            space = get_space(args.label_space or "cityscapes")
            counts = load_order_frequency(args.mat)
        order = order_from_counts(counts)
        ratio = back_ratio(counts)
        print("back to front:")
        for r, c in enumerate(order):
            print(
                f"  {r + 1:2d}. {space.names[c]:14s} back ratio {ratio[c]:.3f}  "
                f"({int(np.asarray(counts)[c].sum())} behind / {int(np.asarray(counts)[:, c].sum())} in front)"
            )
        if args.out:
            print("->", save_prior(args.out, counts, space))

    p.set_defaults(func=run)


def _sims_bench_retrieval(ssub):
    p = ssub.add_parser("bench-retrieval", help="time retrieval per layout on a bank replicated to N segments")
    p.add_argument("--bank", required=True)
    p.add_argument("--segments", type=int, default=100_000)
    p.add_argument("--layouts", nargs="*", help="query label maps/folders (default: 16 of the bank's own layouts)")
    p.add_argument("--k", type=int, default=10)
    _add_label_options(p, "label space of the layouts (default: the bank's)")

    def run(args):
        import json

        from .data import list_label_files
        from .labels import layout_reader
        from .sims.bank import Bank
        from .sims.retrieval import benchmark_retrieval

        bank = Bank.open(args.bank)
        if args.layouts:
            read = layout_reader(bank.space, args.label_space, args.label_encoding)
            lays = [read(f) for f in list_label_files(args.layouts)]
        else:
            lays = [bank.source_label(i) for i in range(min(16, bank.num_images))]
        print(json.dumps(benchmark_retrieval(bank, lays, n_segments=args.segments, k=args.k), indent=1))

    p.set_defaults(func=run)


def _sims_train(ssub):
    p = ssub.add_parser(
        "train",
        help="train the SIMS transformation or ordering network",
        description="Train NETWORK from the preset sims-transform / sims-order (or "
        "--config FILE). The synthesis network trains with `semsynth train sims-256p`, "
        "sims-512p, sims-1024p. Re-running with the same --out resumes.",
    )
    p.add_argument("network", choices=["transform", "order"])
    p.add_argument("--config", help="a config .yaml instead of the preset")
    p.add_argument("--disparity", help="order: folder of *_disparity.png maps (larger = closer)")
    p.add_argument("--depth", help="order: folder of depth maps (.png/.npy, smaller = closer)")
    _add_train_options(p)
    p.set_defaults(
        func=lambda args: _train_from_args(
            args,
            args.config or f"sims-{args.network}",
            {"data.disparity": args.disparity, "data.depth": args.depth},
            task=f"sims-{args.network}",
        )
    )


SIMS_COMMANDS = [_sims_build_bank, _sims_canvas, _sims_order_prior, _sims_bench_retrieval, _sims_train]


def _cmd_sims(sub):
    p = sub.add_parser(
        "sims",
        help="SIMS: memory bank, retrieval, canvases, class-order prior",
        description="Semi-parametric image synthesis (SIMS) tools.",
    )
    ssub = p.add_subparsers(dest="sims_command", required=True, metavar="SUBCOMMAND")
    for add in SIMS_COMMANDS:
        add(ssub)


def _cmd_demo(sub):
    p = sub.add_parser(
        "demo",
        help="synthesize a few layouts with the bundled model and write a web page of the results",
        description="Without LABELS: N procedural street layouts (seeds S, S+1, ...) at the model's native "
        "size. With LABELS (label-map files or folders, any format of the model's label space): those "
        "maps, resized to the native size. Writes DIR/layouts/, DIR/outputs/ and DIR/index.html "
        "(layout | outputs side by side) and prints the page's path.",
    )
    p.add_argument("labels", nargs="*", metavar="LABELS", help="label maps or folders (default: procedural layouts)")
    p.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="output folder (default: ./semsynth-demo, or semsynth-demo-2, ... when that one is taken)",
    )
    p.add_argument("-n", type=int, default=4, help="number of procedural layouts (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first procedural layout")
    p.add_argument("--k", type=int, help="variants per layout (default: all the model makes)")
    p.add_argument("--model", default="default", help="bundled model name or checkpoint path (default: default)")
    p.add_argument("--bank", help="SIMS memory bank: also show the SIMS canvas and output beside the CRN outputs")
    p.add_argument(
        "--sims-model",
        default="sims-cityscapes",
        help="SIMS synthesis checkpoint used with --bank (default: the bundled sims-cityscapes)",
    )
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    _add_precision_option(p)
    p.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty DIR, replacing files of the same names"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_label_options(p)

    def run(args):
        from .demo import run_demo

        _check_precision(args)
        index = run_demo(
            args.out,
            inputs=args.labels or None,
            n=args.n,
            seed=args.seed,
            k=args.k,
            model=args.model,
            device=args.device,
            progress=not args.quiet,
            overwrite=args.overwrite,
            bank=args.bank,
            sims_model=args.sims_model,
            label_space=args.label_space,
            label_encoding=args.label_encoding,
            precision=args.precision,
        )
        print(f"open {index}  ({index.resolve().as_uri()})")

    p.set_defaults(func=run)


def _cmd_serve(sub):
    p = sub.add_parser(
        "serve",
        help="paint a layout in the browser and see photographs (local web app)",
        description="Serves a page to paint layouts and an API (see README) on HOST:PORT. "
        "Only the models named here can be used; nothing leaves this machine.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME|PATH",
        help="bundled model name or checkpoint; repeat for several (default: every bundled model)",
    )
    p.add_argument("--bank", help="SIMS memory bank (needed to serve SIMS models)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    _add_precision_option(p)
    p.add_argument("--queue", type=int, default=4, help="requests waiting or running per model (429 beyond)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (503 beyond)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit (413 beyond)")
    p.add_argument("--max-pixels", type=int, default=4096 * 2048, help="uploaded layout limit (413 beyond)")

    def run(args):
        from .errors import InputError
        from .serve import Limits, load_models
        from .serve import run as serve

        if min(args.timeout, args.max_body_mb, args.max_pixels) <= 0:
            raise InputError("--timeout, --max-body-mb and --max-pixels must be positive")
        _check_precision(args)
        slots = load_models(args.model, bank=args.bank, device=args.device, precision=args.precision, queue=args.queue)
        serve(
            slots,
            Limits(int(args.max_body_mb * 2**20), args.max_pixels, args.queue, args.timeout),
            host=args.host,
            port=args.port,
        )

    p.set_defaults(func=run)


COMMANDS = [
    _cmd_info,
    _cmd_bench,
    _cmd_train,
    _cmd_synthesize,
    _cmd_convert,
    _cmd_export,
    _cmd_layouts,
    _cmd_evaluate,
    _cmd_sims,
    _cmd_demo,
    _cmd_serve,
]


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """semsynth's own warnings (label maps probably misread, ...) as one line each."""
    from .labels import LabelWarning

    if issubclass(category, LabelWarning):
        from tqdm import tqdm

        tqdm.write(f"semsynth: warning: {message}", file=sys.stderr)  # on its own line, above any bar
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    """Expected failures (`SemsynthError`, and the OS refusing a file operation) print one line
    naming the file, key or value and return 2; anything else is a bug and keeps its traceback.
    `--debug` shows the traceback in both cases."""
    parser = argparse.ArgumentParser(prog="semsynth", description="Photographs from semantic layouts.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of expected errors too (accepted anywhere on the command line)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    warnings.showwarning = _show_warning
    from .errors import SemsynthError

    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`semsynth info | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE
    except (SemsynthError, OSError) as e:
        if args.debug:
            raise
        if isinstance(e, SemsynthError):
            msg = str(e)
        else:  # the OS refused: name the file, say what it said
            where = ": ".join(str(f) for f in (e.filename, e.filename2) if f)
            msg = f"{where}: {e.strerror or e}" if where else str(e)
        print(f"semsynth {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
