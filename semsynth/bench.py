"""Costs of networks against this machine's limit: parameters, multiply-accumulates, seconds,
achieved GFLOP/s as a fraction of the 3x3-convolution peak measured in the same run, peak memory.

`semsynth bench crn-tiny crn-256p --precision fp32 bf16` prints a table. MACs are counted exactly
from the layers that actually run (conv and linear, by forward hooks), as the direct convolution
computes them, the usual convention; the share run by Winograd F(4x4, 3x3) (`models/winograd.py`,
1/4 of the multiplies) is its own column, and GFLOP/s and the fraction of peak count the direct
multiplies, so above 1 a network runs faster than any direct kernel at the measured peak could.
Seconds are the median of `repeats` timed passes after a warm-up; the peak is the best of a few
channels_last 3x3 convolutions (the shapes the networks spend their time in) in the kernels the
precision runs on (bf16 rows say which: `autocast`, or `fp32-compute` where the CPU has no bf16
kernels), measured before every model so a throttled or shared machine moves both numbers
together. Memory is CUDA's peak allocation, or on Linux the process's peak resident set during
the passes (VmHWM after resetting it).

Networks: any preset of `build_model` (CRN, SIMS synthesis), a bundled model's name (`default`,
`camvid`, `sims-cityscapes`), and `espnet-cityscapes` / `espnet-camvid` (the evaluation segmenter
at its input size, 1024x512 for Cityscapes, randomly initialised: time does not depend on weights).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import BUNDLED, load_model
from .models import build_model, count_parameters
from .models.layers import winograd_tally
from .precision import autocast, bf16_mode, resolve_precision

PEAK_SHAPES = ((512, 32, 64), (256, 64, 128), (128, 128, 256))  # (C, H, W), C -> C 3x3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_peak(precision: str = "fp32", device: str | torch.device = "cpu", rounds: int = 3) -> float:
    """This machine's 3x3-convolution throughput in GFLOP/s (2 FLOP per MAC) for "fp32" or
    "bf16": the best over PEAK_SHAPES of channels_last, bias-free C -> C convolutions, batch 1,
    in the kernels that precision runs on: bf16 ones, or fp32 ones where bf16 computes in fp32
    (`precision.bf16_mode`; the peak is then the fp32 one, the strict reference)."""
    device = torch.device(device)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if precision == "bf16" and bf16_mode(device) == "fp32-compute":
        dt = torch.float32
    best = 0.0
    for C, H, W in PEAK_SHAPES:
        x = torch.randn(1, C, H, W, device=device, dtype=dt).contiguous(memory_format=torch.channels_last)
        conv = nn.Conv2d(C, C, 3, padding=1, bias=False).to(device, dt).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            conv(x), conv(x)
            for _ in range(rounds):
                _sync(device)
                t = time.perf_counter()
                conv(x), conv(x)
                _sync(device)
                best = max(best, 2 * C * C * 9 * H * W / ((time.perf_counter() - t) / 2) / 1e9)
    return best


def count_macs(model: nn.Module, *inputs) -> tuple[int, int, int]:
    """(MACs, activation bytes, MACs of the convolutions that ran by Winograd) of one forward
    pass. MACs are the direct convolution's: Winograd F(4x4, 3x3) runs 1/4 of them."""
    macs, act = 0, 0

    def hook(m, inp, out):
        nonlocal macs, act
        if isinstance(out, torch.Tensor):
            act += out.numel() * out.element_size()
            if isinstance(m, nn.Conv2d):
                macs += out.numel() * m.weight[0].numel()  # in/groups * kh * kw per output
            elif isinstance(m, nn.Linear):
                macs += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode(), winograd_tally() as wino:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return macs, act, wino[0]


def time_forward(model: nn.Module, *inputs, repeats: int = 3, precision: str = "fp32", warmup: bool = True):
    """(median seconds of `repeats` passes, last output), under inference mode and the
    precision's autocast; after one untimed warm-up pass unless the caller has just run one."""
    device = next(model.parameters()).device
    times = []
    with torch.inference_mode(), autocast(device, precision):
        out = model(*inputs) if warmup else None
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            out = model(*inputs)
            _sync(device)
            times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def network(name: str, size: tuple[int, int] | None = None, num_classes: int | None = None):
    """(model in eval mode, example inputs, output size) for a preset name."""
    if name.startswith("espnet-"):
        from .models.espnet import ESPNET_PRESETS, build_espnet

        model = build_espnet(name).eval()
        h, w = size or ESPNET_PRESETS[name]["size"]
        return model, (torch.rand(1, 3, h, w),), (h, w)
    if name in BUNDLED:  # a shipped checkpoint: its own architecture (the weights do not change time)
        model, _ = load_model(name)
    else:
        model = build_model(name).eval()
    cfg = model.config
    h, w = size or tuple(cfg.size)
    c = (num_classes or cfg.num_classes) + 1
    label = torch.zeros(1, c, h, w)
    label[:, 0] = 1
    if name.startswith("sims-synthesis") or type(model).__name__ == "SIMSSynthesis":
        return model, (label, torch.rand(1, 3, h, w), torch.ones(1, 1, h, w)), (h, w)
    return model, (label,), (h, w)


def bench_model(
    name: str,
    size: tuple[int, int] | None = None,
    device: str = "cpu",
    repeats: int = 3,
    precision: str = "fp32",
    peak: float | None = None,
) -> dict:
    """One row of the table. `peak` (GFLOP/s) is measured now unless given."""
    dev = torch.device(device)
    precision = resolve_precision(precision, dev)
    model, inputs, (h, w) = network(name, size)
    model = model.to(dev)
    inputs = tuple(x.to(dev) for x in inputs)
    peak = peak if peak is not None else conv_peak(precision, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss = _rss_peak_reset()
    with autocast(dev, precision):  # the counting pass is also the timed passes' warm-up
        macs, act, wino = count_macs(model, *inputs)
    seconds, _ = time_forward(model, *inputs, repeats=repeats, precision=precision, warmup=False)
    mem = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_peak() if rss else act
    gflops = 2 * macs / seconds / 1e9
    return {
        "model": name,
        "size": f"{h}x{w}",
        "k": getattr(getattr(model, "config", None), "k", 1),
        "params": count_parameters(model),
        "gmacs": macs / 1e9,
        "winograd": wino / macs if macs else 0.0,
        "precision": precision if precision == "fp32" else f"bf16 ({bf16_mode(dev)})",
        "seconds": seconds,
        "gflops": gflops,
        "peak_gflops": peak,
        "of_peak": gflops / peak,
        "memory_mb": mem / 2**20,
        "device": str(dev),
    }


def format_table(rows: list[dict]) -> str:
    head = (
        "| model | size | k | parameters | GMACs | by Winograd | precision | s / forward | GFLOP/s | conv peak "
        "| of peak | peak memory (MB) | device |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['model']} | {r['size']} | {r['k']} | {r['params']:,} | {r['gmacs']:.1f} | {r['winograd']:.0%} | "
        f"{r['precision']} | "
        f"{r['seconds']:.3f} | {r['gflops']:.0f} | {r['peak_gflops']:.0f} | {r['of_peak']:.2f} | "
        f"{r['memory_mb']:.0f} | {r['device']} |"
        for r in rows
    ]
    return "\n".join([head, *lines])
