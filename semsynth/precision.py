"""Inference precision: one setting, `auto | fp32 | bf16`, for every path that runs a network
(pipelines, `synthesize`, `demo`, `evaluate`'s segmenters and feature networks, `serve`).

`auto` is bf16 where the device computes it natively (CUDA with bf16 support; CPUs with
AVX512-BF16 or AMX, as oneDNN reports) and fp32 elsewhere: on an AVX2-only CPU oneDNN emulates
bf16, several times slower than fp32. bf16 runs the network under autocast (weights stay fp32,
convolutions and matmuls compute in bf16 with fp32 accumulation); the parts that must stay exact
(spatial-transformer thetas, loss arithmetic) opt out of autocast where they are defined.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import InputError

CHOICES = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively (elsewhere it is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and any(
            getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """`auto | fp32 | bf16` (None = auto) -> the precision used on `device`: "fp32" or "bf16"."""
    precision = "auto" if precision is None else precision
    if precision not in CHOICES:
        raise InputError(f"precision {precision!r}: choose one of {', '.join(CHOICES)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """The context a forward pass runs in for a resolved precision ("fp32" or "bf16")."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
