"""The `semsynth` command. Each subcommand is one `_cmd_<name>(sub)` function that declares its
arguments and sets `func`; the work itself lives in the library modules."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(sub):
    p = sub.add_parser("info", help="list model presets, label spaces and where data/weights are looked up")

    def run(args):
        from . import __version__
        from .labels import available_spaces
        from .models import PRESETS, build_model, count_parameters
        from .utils import shared_dir

        print(f"semsynth {__version__}")
        print("model presets:")
        for name in sorted(PRESETS):
            print(f"  {name:16s} {count_parameters(build_model(name)):>12,} parameters")
        print("label spaces:", ", ".join(available_spaces()))
        print("shared dir:", shared_dir(), "(exists)" if shared_dir().is_dir() else "(missing)")

    p.set_defaults(func=run)


def _cmd_train(sub):
    p = sub.add_parser("train", help="train a model from a preset or config file",
                       description="Train PRESET (a name in semsynth/configs, e.g. crn-256p, or a "
                       "YAML file). Re-running with the same --out resumes from its latest checkpoint.")
    p.add_argument("preset", help="preset name (crn-256p, crn-512p, crn-1024p, crn-gta-256p, crn-tiny, ...) or config .yaml")
    p.add_argument("--data", help="dataset folder (Cityscapes layout, images/+labels/, CamVid, ...)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, samples, metrics.jsonl, tb/")
    p.add_argument("--steps", type=int, help="total optimisation steps (overrides epochs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--init-from", help="checkpoint of the previous stage (256p -> 512p -> 1024p)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any config entry, e.g. data.size=[128,256] loss.preset=squeezenet")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    def run(args):
        import yaml

        from .train import load_config, parse_overrides, train

        o = parse_overrides(args.set)
        for key, val in [("data.path", args.data), ("steps", args.steps), ("epochs", args.epochs),
                         ("init_from", args.init_from), ("optim.batch_size", args.batch_size),
                         ("optim.lr", args.lr), ("seed", args.seed), ("device", args.device)]:
            if val is not None:
                o[key] = val
        if args.epochs is not None and args.steps is None:
            o["steps"] = None
        cfg = load_config(args.preset, o)
        if args.print_config:
            print(yaml.safe_dump(cfg, sort_keys=False))
            return 0
        final = train(cfg, args.out, resume=not args.no_resume)
        print(f"checkpoint: {final}")

    p.set_defaults(func=run)


def _cmd_synthesize(sub):
    p = sub.add_parser("synthesize", help="label maps -> photos with a trained checkpoint",
                       description="CHECKPOINT is a run folder, a step folder, a .safetensors file "
                       "or a bundled model name ('default', 'camvid'). Inputs are label-map files or "
                       "folders in any supported format; no photos needed.")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="label-map files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--k", type=int, help="number of variants per layout (at most the model's k)")
    p.add_argument("--grid", action="store_true", help="also write the k variants tiled in one image")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="synthesis size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--bank", help="SIMS memory bank (SIMS checkpoints only)")
    p.add_argument("--save-intermediates", action="store_true", help="SIMS: also write canvases and chosen segments")

    def run(args):
        from .pipelines import load_pipeline

        kwargs = {}
        if args.bank:
            kwargs["bank"] = args.bank
        pipe = load_pipeline(args.checkpoint, device=args.device, **kwargs)
        extra = {"save_intermediates": True} if args.save_intermediates else {}
        written = pipe.synthesize_files(args.inputs, args.out, k=args.k, grid=args.grid,
                                        overwrite=args.overwrite, batch_size=args.batch_size,
                                        size=tuple(args.size) if args.size else None, **extra)
        print(f"wrote {len(written)} image(s) to {args.out}")

    p.set_defaults(func=run)


def _cmd_convert(sub):
    p = sub.add_parser("convert", help="convert a released CRN TensorFlow checkpoint to a semsynth checkpoint",
                       description="CKPT_PREFIX is the TF checkpoint prefix (e.g. result_256p/model.ckpt, "
                       "with .index and .data-00000-of-00001 next to it) or its .index file. No TensorFlow "
                       "needed. Adam slots and beta powers are dropped.")
    p.add_argument("prefix", metavar="CKPT_PREFIX")
    p.add_argument("--preset", help="model preset (crn-256p, crn-512p, crn-1024p, crn-gta-256p); "
                   "default: the structure read from the index")
    p.add_argument("-o", "--out", required=True, help="output checkpoint folder (model.safetensors)")
    p.add_argument("--label-space", default="cityscapes")
    p.add_argument("--no-verify", action="store_true", help="skip the CRC32C checks of index and data")

    def run(args):
        from .convert import convert_official_crn

        target = convert_official_crn(args.prefix, args.out, preset=args.preset,
                                      label_space=args.label_space, verify=not args.no_verify)
        print(f"wrote {target} ({args.preset or 'structure inferred from the index'})")

    p.set_defaults(func=run)


def _cmd_layouts(sub):
    p = sub.add_parser("layouts", help="write procedural street-scene label maps (Cityscapes classes)",
                       description="Writes DIR/layout_<seed>_trainIds.png (grey class indices, 255 = void) "
                       "and with --color DIR/layout_<seed>_color.png previews. Deterministic per seed.")
    p.add_argument("-n", type=int, default=4, help="number of layouts")
    p.add_argument("--seed", type=int, default=0, help="seed of the first layout (then seed+1, ...)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--color", action="store_true", help="also write colour previews")

    def run(args):
        from .layouts import write_layouts

        written = write_layouts(args.out, n=args.n, seed=args.seed, size=tuple(args.size), color=args.color)
        print(f"wrote {len(written)} file(s) to {args.out}")

    p.set_defaults(func=run)


def _cmd_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="score synthesized images: segmentation consistency, FID/KID, diversity",
        description="IMAGES is a folder of synthesized images named after their layouts (<stem>.png, or "
        "<stem>_k<i>.png for k variants), or of real photos to score alone. Writes REPORT_DIR/report.json, "
        "report.md and report.html (tables with the real photos' scores side by side, thumbnails).")
    p.add_argument("images", metavar="IMAGES", help="synthesized images (or photos) folder")
    p.add_argument("--labels", required=True, help="folder of the layouts (label maps)")
    p.add_argument("--real", help="folder of the real photos of the same layouts (the ceiling column)")
    p.add_argument("--segmenter", help="registered segmenter (espnet-cityscapes, espnet-camvid) or "
                   "module:attribute of a plug-in; default: the label space's")
    p.add_argument("--label-space", help="label space of the layouts (default: the segmenter's)")
    p.add_argument("--label-encoding", help="id encoding of grey label maps (default: by file name)")
    p.add_argument("--inception", metavar="PATH", help="pt_inception-2015-12-05-6726825d.pth for the "
                   "standard FID (default: looked up in the weight folders, never downloaded)")
    p.add_argument("--fd-network", default="auto", choices=["auto", "squeezenet1_1", "espnet", "none"],
                   help="network of the non-standard Fréchet distance")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device")
    p.add_argument("--thumbnails", type=int, default=4, help="layouts shown as thumbnails")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("-o", "--out", required=True, metavar="REPORT_DIR")

    def run(args):
        from .evaluate import evaluate, write_report

        space = args.label_space
        if space is None and args.segmenter is None:
            space = "cityscapes"
        report = evaluate(args.images, args.labels, args.real, segmenter=args.segmenter,
                          label_space=space, label_encoding=args.label_encoding,
                          inception=args.inception, fd_network=args.fd_network, device=args.device,
                          batch_size=args.batch_size, kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size, thumbnails=args.thumbnails,
                          progress=lambda s: print(s, file=sys.stderr))
        paths = write_report(report, args.out)
        print(open(paths["md"], encoding="utf-8").read().split("## Per-class IoU")[0].rstrip())
        print(f"\nwrote {paths['json']}, {paths['md']}, {paths['html']}")

    p.set_defaults(func=run)


COMMANDS = [_cmd_info, _cmd_train, _cmd_synthesize, _cmd_convert, _cmd_layouts, _cmd_evaluate]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semsynth", description="Photographs from semantic layouts.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        # User errors (bad input files, unknown presets, ...) get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"semsynth {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
