"""CRN / SIMS forward passes against this machine's convolution peak, variants interleaved in one
run (a shared or throttled machine moves every number; the ratios stay comparable).

    python benchmarks/crn_forward.py crn-256p                 # fast (Winograd / direct convs) vs reference ops, fp32
    python benchmarks/crn_forward.py crn-256p --precision bf16 --profile
    python benchmarks/crn_forward.py crn-tiny --rounds 1      # smoke test (CI)

Each round times every variant once (after one warm-up pass each) and measures the fp32/bf16
3x3-conv peak again; the table gives the best round, as `semsynth bench` does.
"""

import argparse
import contextlib

import torch

from semsynth.bench import conv_peak, count_macs, time_forward
from semsynth.models import build_model
from semsynth.models.layers import direct_convolutions, reference_ops
from semsynth.precision import autocast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="crn-256p")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops per variant")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    cfg = model.config
    label = torch.zeros(1, cfg.num_classes + 1, *cfg.size)
    label[:, 0] = 1
    macs, _, wino = count_macs(model, label)
    variants = {"reference": reference_ops, "fast-direct": direct_convolutions, "fast": contextlib.nullcontext}
    best = {v: float("inf") for v in variants}
    peak = 0.0
    outs = {}
    for _ in range(args.rounds):
        peak = max(peak, conv_peak(args.precision))
        for name, ctx in variants.items():
            with ctx():
                sec, out = time_forward(model, label, repeats=1, precision=args.precision)
            best[name] = min(best[name], sec)
            outs[name] = out.float()
    print(
        f"{args.preset} {args.precision}: {macs / 1e9:.0f} GMACs ({wino / macs:.0%} by Winograd in 'fast'); "
        f"{args.precision} 3x3-conv peak {peak:.0f} GFLOP/s"
    )
    for name, sec in best.items():
        g = 2 * macs / sec / 1e9
        print(f"  {name:10s} {sec:7.2f} s  {g:6.0f} GFLOP/s  {g / peak:.2f} of peak")
    for name in ("fast-direct", "fast"):
        print(f"  max |{name} - reference| = {(outs[name] - outs['reference']).abs().max().item():.2e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, ctx in variants.items():
            with ctx(), torch.inference_mode(), autocast("cpu", args.precision):
                with profile(activities=[ProfilerActivity.CPU]) as p:
                    model(label)
            print(f"--- {name}")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
