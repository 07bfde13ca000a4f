"""The unit every CRN and SIMS network is made of: conv -> LayerNorm over (C, H, W) -> LeakyReLU,
with an inference path that keeps a CPU near its convolution peak.

Why a separate inference path: at 256x512 one activation of 512 channels is 268 MB. On CPU every
fresh tensor of that size is new memory from the OS (glibc serves it by mmap and returns it on
free), so each out-of-place op pays ~0.4 ms/MB of page faults: GroupNorm + LeakyReLU then cost
~250 ms per layer, against ~10 ms per pass over memory that is already mapped. Without autograd
the norm and the activation run in place on the conv's output: exact statistics from two chunked
passes (mean, then squared deviations), the norm and the per-channel affine folded into one scale
and one shift per channel, applied in place, then the activation in place. With
autograd (training, or any tensor that needs a gradient) the plain modules run, so gradients are
untouched. The two paths agree to float rounding (tests/test_crn.py).

The same page faults hit every conv output, upsampling and concatenation: ~590k faults (2.3 GB)
per crn-256p pass. So the first CPU inference pass tells glibc to keep freed memory for reuse
instead of returning it to the OS (`keep_freed_memory`: no mmap for large blocks, no trimming),
the CPU counterpart of torch's caching allocator on CUDA. crn-256p then runs ~6 % faster (18.2 ->
17.1 s, one process, measured before and after the switch) with no faults after the first pass;
the price is that the process keeps its peak memory. SEMSYNTH_MALLOC=system leaves malloc alone.

The convolutions themselves: every network's convolutions are `Conv2d` (an nn.Conv2d: same
parameters, hooks and export), whose forward is `conv2d`. On the CPU inference path, in float32,
a 3x3 stride-1 convolution with enough channels runs by Winograd F(4x4, 3x3) (`winograd.py`: 4x
fewer multiplies, 1.6-3x faster than oneDNN's direct kernel at CRN's shapes), with the transformed
weights cached per weight tensor (4x the weights' memory: 36 against 9 values per channel pair).
SEMSYNTH_WINOGRAD=0 keeps the direct kernel everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from . import winograd

SLOPE = 0.2  # LeakyReLU slope of every CRN / SIMS layer
CHUNK = 1 << 20  # elements per chunk of the chunked in-place passes (small temporaries)


_fast = True


@contextlib.contextmanager
def reference_ops():
    """Run the plain (out-of-place, unchanged memory format) ops inside this block: the path the
    fast one is tested and benchmarked against, and the one exporters trace. The switch is
    process-wide (not per thread)."""
    global _fast
    old, _fast = _fast, False
    try:
        yield
    finally:
        _fast = old


def memory_order(x: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of `x`'s elements in memory order when it is contiguous or a channels_last 4-D
    tensor (the sample stays the outermost dimension in both), else None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)  # a view: this is the memory order
    return None


def inference(x: torch.Tensor) -> bool:
    """Whether the fast inference path may run on `x`: it may be overwritten (no graph is being
    recorded for it) and `reference_ops` is not active."""
    return _fast and not (torch.is_grad_enabled() and x.requires_grad)


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` in channels_last on the CPU inference path (oneDNN's convolutions run ~1.5x faster on
    it in fp32, and in bf16 without native support a contiguous input falls back to the slow
    reference convolution, ~50x slower); unchanged otherwise (training keeps the layout it is
    given: TrainStep's `channels_last` option). The first such call also runs `keep_freed_memory`."""
    if _fast and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4:
        keep_freed_memory()
        return x.contiguous(memory_format=torch.channels_last)
    return x


class DerivedCache:
    """Values derived from tensors (e.g. transformed weights), kept while the tensor is alive and
    unchanged (its version counter), computed once under a lock (`serve` runs models in threads).
    Tensors made under inference mode have no version counter: parameters among them (a model
    built under inference mode, whose weights may still be changed in place there) are derived
    afresh on every call; other such tensors (other caches' values, never changed in place) are
    kept as long as they live."""

    def __init__(self, fn):
        self.fn = fn
        self._values = WeakIdKeyDictionary()  # tensor -> (its version, derived value)
        self._lock = threading.Lock()

    def __call__(self, t: torch.Tensor):
        if t.is_inference() and isinstance(t, nn.Parameter):
            with torch.no_grad():
                return self.fn(t.detach())
        version = None if t.is_inference() else t._version
        with self._lock:
            hit = self._values.get(t)
            if hit is None or hit[0] != version:
                with torch.no_grad():
                    hit = self._values[t] = (version, self.fn(t.detach()))
        return hit[1]


_winograd_weights = DerivedCache(winograd.transform_weight)
WINOGRAD_MIN_CHANNELS = 64  # C_in * C_out / (C_in + C_out) from which Winograd runs (tests lower it)
WINOGRAD_MIN_PIXELS = 1024  # and H * W (tests lower it)


def _winograd_pays(x, weight, stride, padding, dilation, groups) -> bool:
    """Whether `conv2d` runs Winograd: CPU inference in float32 (no graph, no autocast, no tracing,
    no torch function mode, which then sees the plain convolution), a 3x3 kernel, stride 1, padding 1, no
    dilation or groups, and enough channels. Winograd saves multiplies in proportion to
    C_in * C_out and pays transforms in proportion to C_in + C_out: measured on CRN's and SIMS's
    shapes it is faster from C_in * C_out / (C_in + C_out) >= 64 (128 -> 128: 1.0-1.1x, 152 -> 128:
    1.2x, 532 -> 512: 2.4x) and slower below (64 -> 128: 0.75x, 32 -> 32: 0.34x). And from 1024
    pixels (32x32): below, the whole conv takes tens of ms, so the transformed weights (4x the
    weights) would cost more memory than they save time: on crn-256p the levels g_4 .. g_16 would
    save 0.2 s per pass for 1.2 GB of transformed weights."""
    if not (inference(x) and winograd_enabled()) or torch._C._is_torch_function_mode_enabled():
        return False
    if torch.is_grad_enabled() and weight.requires_grad:
        return False
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu"):  # the convolution must run in autocast's dtype
        return False
    if tuple(weight.shape[2:]) != (3, 3) or groups != 1 or _pair(stride) != (1, 1) or _pair(dilation) != (1, 1):
        return False
    if _pair(padding) != (1, 1) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    cout, cin = weight.shape[:2]
    big = x.shape[-2] * x.shape[-1] >= WINOGRAD_MIN_PIXELS
    return big and cin * cout >= WINOGRAD_MIN_CHANNELS * (cin + cout)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v) if isinstance(v, int) else v


_winograd_on = True


def winograd_enabled() -> bool:
    return _winograd_on and os.environ.get("SEMSYNTH_WINOGRAD", "1") != "0"


@contextlib.contextmanager
def direct_convolutions():
    """Inside this block `conv2d` never runs Winograd (process-wide, as `reference_ops`); the
    rest of the fast path stays. For comparisons, e.g. benchmarks/crn_forward.py."""
    global _winograd_on
    old, _winograd_on = _winograd_on, False
    try:
        yield
    finally:
        _winograd_on = old


_tally = threading.local()


@contextlib.contextmanager
def winograd_tally():
    """Count, in this thread, the multiply-accumulates (of the direct convolution) that `conv2d`
    runs by Winograd inside this block: yields a one-element list holding the total."""
    old, _tally.macs = getattr(_tally, "macs", None), [0]
    try:
        yield _tally.macs
    finally:
        _tally.macs = old


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """F.conv2d, by Winograd F(4x4, 3x3) where `_winograd_pays` (see the module docstring)."""
    if not _winograd_pays(x, weight, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    y = winograd.conv3x3(x, _winograd_weights(weight), bias)
    if getattr(_tally, "macs", None) is not None:
        _tally.macs[0] += y.numel() * weight[0].numel()
    return y


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose forward is `conv2d` (zero padding; other padding modes are nn.Conv2d's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


_malloc_tuned: bool | None = None  # None: not tried yet


def keep_freed_memory() -> bool:
    """Once per process, on glibc: serve large blocks from the heap and never trim it, so freed
    activations are reused without page faults (see the module docstring). Returns whether it is
    in effect; False without glibc or with SEMSYNTH_MALLOC=system."""
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if os.environ.get("SEMSYNTH_MALLOC", "") != "system" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):
                return False
            M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # <malloc.h>
            # A trim threshold of -1 never trims (mallopt(3)). The largest positive one, 2 GB, let
            # every crn-512p pass free > 2 GB at the top of the heap, trim it and fault it back:
            # 717k faults per pass, 30 s against 9.5 s without, measured here.
            _malloc_tuned = bool(
                mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1) and mallopt(M_TOP_PAD, 64 << 20)
            )
    return _malloc_tuned


def layer_norm_lrelu(x: torch.Tensor, norm: nn.GroupNorm, slope: float = SLOPE) -> torch.Tensor:
    """LeakyReLU(GroupNorm(1, C)(x)) — the original's LayerNorm over (C, H, W), then the
    activation — in place on `x` when no gradient is needed, else with the plain ops."""
    if not inference(x) or norm.num_groups != 1:
        return F.leaky_relu(norm(x), slope)
    B, C = x.shape[:2]
    # A flat per-sample view in memory order (channels_last or contiguous), for the statistics.
    flat = memory_order(x)
    flat = (x.reshape(-1) if flat is None else flat).view(B, -1)
    n = flat.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Two passes over chunks of 1M values: the mean, then the squared deviations from it, each
    # chunk summed by torch's cascade sum in float32 (error ~1e-7 relative, as var_mean; one
    # float32 dot product over 67M values is off by 1e-3, and var_mean itself is ~20x slower).
    # The chunks are small, so their temporaries reuse memory instead of page-faulting.
    chunks = flat.split(CHUNK, dim=1)
    mean = sum(c.sum(1, dtype=acc) for c in chunks) / n
    var = sum(c.to(acc).sub(mean[:, None]).square_().sum(1) for c in chunks) / n
    rstd = (var + norm.eps).rsqrt()
    w = norm.weight.to(acc) if norm.weight is not None else torch.ones(C, dtype=acc, device=x.device)
    b = norm.bias.to(acc) if norm.bias is not None else torch.zeros(C, dtype=acc, device=x.device)
    scale = w[None, :] * rstd[:, None]  # (B, C)
    shift = b[None, :] - mean[:, None] * scale
    x.mul_(scale.to(x.dtype)[:, :, None, None]).add_(shift.to(x.dtype)[:, :, None, None])
    return F.leaky_relu_(x, slope)
