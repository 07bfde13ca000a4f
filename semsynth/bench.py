"""Costs of model presets: parameters, multiply-accumulates, seconds and memory per forward pass.

`semsynth bench crn-256p crn-tiny` prints a table; MACs are counted exactly from the layers that
actually run (conv and linear, by forward hooks), time is the median of a few timed passes after a
warm-up, memory is CUDA's peak allocation or, on CPU, the sum of activation bytes produced.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from .models import build_model, count_parameters


def count_macs(model: nn.Module, *inputs) -> tuple[int, int]:
    """(MACs, activation bytes) of one forward pass."""
    macs, act = 0, 0

    def hook(m, inp, out):
        nonlocal macs, act
        if isinstance(out, torch.Tensor):
            act += out.numel() * out.element_size()
            if isinstance(m, nn.Conv2d):
                k = m.weight[0].numel()  # in/groups * kh * kw
                macs += out.numel() * k
            elif isinstance(m, nn.Linear):
                macs += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return macs, act


def bench_model(name: str, size: tuple[int, int] | None = None, device: str = "cpu",
                repeats: int = 3, num_classes: int = 19) -> dict:
    model = build_model(name).to(device).eval()
    cfg = getattr(model, "config", None)
    size = size or cfg.size
    label = torch.zeros(1, num_classes + 1, *size, device=device)
    label[:, 0] = 1
    macs, act = count_macs(model, label)
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(label)  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(label)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() if device.startswith("cuda") else act
    return {"model": name, "size": f"{size[0]}x{size[1]}", "k": getattr(cfg, "k", 1),
            "params": count_parameters(model), "gmacs": macs / 1e9,
            "seconds": sorted(times)[len(times) // 2], "memory_mb": mem / 2 ** 20, "device": device}


def format_table(rows: list[dict]) -> str:
    head = "| model | size | k | parameters | GMACs | s / forward | memory (MB) | device |\n|---|---|---|---|---|---|---|---|"
    lines = [f"| {r['model']} | {r['size']} | {r['k']} | {r['params']:,} | {r['gmacs']:.1f} | "
             f"{r['seconds']:.3f} | {r['memory_mb']:.0f} | {r['device']} |" for r in rows]
    return "\n".join([head, *lines])
