"""Inference precision: one setting, `auto | fp32 | bf16`, for every path that runs a network
(pipelines, `synthesize`, `demo`, `evaluate`'s segmenters and feature networks, `serve`).

`auto` is bf16 where the device computes it natively (CUDA with bf16 support; CPUs with
AVX512-BF16 or AMX, as oneDNN reports) and fp32 elsewhere. bf16 means what autocast computes:
convolutions and matrix products take bf16 operands, accumulate in fp32 and return bf16 results;
the parts that must stay exact (spatial-transformer thetas, loss arithmetic) opt out of autocast
where they are defined.

How bf16 runs depends on the kernels the CPU has. Where oneDNN has bf16 kernels (AVX512 and up)
it is plain `torch.autocast`. Where it has none (AVX2-only CPUs) torch's bf16 convolution falls
back to im2col and a bf16 GEMM at about 1/5 of the fp32 speed (measured here: 24 against 130
GFLOP/s). There `bf16_on_fp32` computes the same thing faster: operands are rounded to bf16 and
the convolution runs in fp32, which is exact for them (the product of two bf16 numbers fits in
fp32's mantissa), then the result is rounded to bf16. Only the summation order differs from a bf16
kernel. Deliberately beyond autocast: the elementwise ops between two convolutions (norms,
activations, resampling) keep fp32, where a bf16 kernel would round after each; their inputs and
outputs at every convolution are bf16 values all the same. Activations are stored in fp32, so
this saves no memory: it is bf16's numerics at nearly fp32's speed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import InputError
from .models.layers import CHUNK, DerivedCache, conv2d, memory_order

CHOICES = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively (elsewhere it is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bf16_kernels() and any(
            getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def bf16_kernels() -> bool:
    """Whether oneDNN has bf16 convolution kernels on this CPU (without them torch's bf16
    convolution is its slow im2col fallback)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """`auto | fp32 | bf16` (None = auto) -> the precision used on `device`: "fp32" or "bf16"."""
    precision = "auto" if precision is None else precision
    if precision not in CHOICES:
        raise InputError(f"precision {precision!r}: choose one of {', '.join(CHOICES)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def bf16_mode(device: torch.device | str) -> str:
    """How bf16 runs on `device`: "autocast" (bf16 kernels) or "fp32-compute" (`bf16_on_fp32`)."""
    device = torch.device(device)
    return "fp32-compute" if device.type == "cpu" and not bf16_kernels() else "autocast"


def autocast(device: torch.device | str, precision: str):
    """The context a forward pass runs in for a resolved precision ("fp32" or "bf16")."""
    device = torch.device(device)
    if precision != "bf16":
        return contextlib.nullcontext()
    if bf16_mode(device) == "fp32-compute":
        return bf16_on_fp32()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def round_bf16_(x: torch.Tensor) -> torch.Tensor:
    """Round a float32 tensor to the nearest bf16 values (ties to even, as `.to(bfloat16)`), in
    place, in chunks so the temporaries stay small (no fresh memory for a 268 MB activation)."""
    flat = memory_order(x)
    if flat is None:
        return x.copy_(x.to(torch.bfloat16))
    for c in flat.split(CHUNK):
        c.copy_(c.to(torch.bfloat16))
    return x


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """A float32 tensor's values rounded to bf16, as a new float32 tensor (same memory format)."""
    return round_bf16_(x.clone(memory_format=torch.preserve_format))


_rounded_params = DerivedCache(round_bf16)  # parameter -> its values rounded to bf16 (in fp32)


def holds_bf16(x: torch.Tensor) -> bool:
    """Whether a tensor holds bf16 values: a bf16 tensor, or floats that are all exactly bf16."""
    if x.dtype == torch.bfloat16:
        return True
    return bool(((x.to(torch.bfloat16).to(x.dtype) == x) | x.isnan()).all())


# What autocast runs in bf16 among the ops semsynth's networks use: convolutions and matrix products.
_BF16_OPS = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.linear,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
}


class bf16_on_fp32(TorchFunctionMode):
    """Inside this block the ops autocast would run in bf16 get bf16-rounded float32 operands and
    return bf16-rounded float32 results (see the module docstring). Parameters are rounded once
    and cached while they are unchanged (a bf16 copy of the weights' values, in fp32). The
    convolution itself is `layers.conv2d`, so it is Winograd where that runs in fp32 too."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _BF16_OPS:
            return func(*args, **kwargs)
        args = [self._operand(a) for a in args]
        kwargs = {k: self._operand(v) for k, v in kwargs.items()}
        out = (conv2d if func is F.conv2d else func)(*args, **kwargs)
        return round_bf16_(out) if isinstance(out, torch.Tensor) and out.dtype == torch.float32 else out

    @staticmethod
    def _operand(a):
        if not isinstance(a, torch.Tensor) or a.dtype != torch.float32:
            return a
        return _rounded_params(a) if isinstance(a, torch.nn.Parameter) else round_bf16(a)
