"""bf16 where the CPU has no bf16 kernels: fp32 arithmetic on bf16-rounded operands
(`precision.bf16_on_fp32`) computes what a bf16 convolution computes (bf16 operands, fp32
accumulation, a bf16 result), and `autocast` picks it exactly there."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from semsynth import precision as P
from semsynth.precision import bf16_on_fp32, holds_bf16, round_bf16, round_bf16_


def test_rounding_is_torchs_bf16_conversion_in_every_layout():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11) * torch.logspace(-30, 30, 11)  # tiny to huge magnitudes
    x[0, 0, 0, :3] = torch.tensor([float("inf"), float("nan"), -0.0])
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        r = round_bf16(t)
        assert torch.equal(r.nan_to_num(), t.to(torch.bfloat16).float().nan_to_num())
        assert r.stride() == t.stride() and holds_bf16(r) and not holds_bf16(t)
    big = torch.randn(3 * P.CHUNK + 5)  # several chunks and a tail, in place
    assert torch.equal(round_bf16_(big.clone()), big.to(torch.bfloat16).float())


def test_fp32_compute_equals_a_bf16_convolution():
    """The same products, accumulated in fp32: equal to torch's bf16 convolution up to the
    summation order (one bf16 rounding step at most), and different from fp32."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    lin = nn.Linear(40, 8)
    x, v = torch.randn(1, 16, 12, 20), torch.randn(5, 40)
    with torch.inference_mode():
        with torch.autocast("cpu", torch.bfloat16):
            ref, ref_l = conv(x).float(), lin(v).float()
        with bf16_on_fp32():
            got, got_l = conv(x), lin(v)
            mm = v @ lin.weight.t()
        fp32 = conv(x)
    assert got.dtype == torch.float32 and holds_bf16(got) and holds_bf16(got_l) and holds_bf16(mm)
    ulp = ref.abs() * 2**-7 + 1e-6  # one bf16 step
    assert ((got - ref).abs() <= ulp).all() and ((got_l - ref_l).abs() <= ref_l.abs() * 2**-7 + 1e-6).all()
    assert (got == ref).float().mean() > 0.9
    assert not torch.equal(got, fp32)


def test_parameters_are_rounded_once_and_again_after_a_change():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    with torch.inference_mode(), bf16_on_fp32():
        a = conv(x)
        cached = P._rounded_params._values[conv.weight][1]
        assert holds_bf16(cached) and torch.equal(conv(x), a)  # the cache is reused
    with torch.no_grad():
        conv.weight.mul_(2)  # a new version: rounded again
    with torch.inference_mode(), bf16_on_fp32():
        b = conv(x)
        assert P._rounded_params._values[conv.weight][1] is not cached
    want = round_bf16(
        F.conv2d(round_bf16(x), round_bf16(conv.weight.detach()), round_bf16(conv.bias.detach()), padding=1)
    )
    assert torch.equal(b, want)
    assert not holds_bf16(conv.weight)  # the module's own weights are untouched


def test_other_ops_keep_fp32():
    x = torch.randn(1, 3, 8, 8)
    with bf16_on_fp32():
        y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    assert not holds_bf16(y)


@pytest.mark.parametrize("kernels", [True, False])
def test_autocast_picks_fp32_compute_exactly_without_bf16_kernels(monkeypatch, kernels):
    monkeypatch.setattr(P, "bf16_kernels", lambda: kernels)
    ctx = P.autocast("cpu", "bf16")
    assert isinstance(ctx, bf16_on_fp32) != kernels and P.bf16_mode("cpu") == (
        "autocast" if kernels else "fp32-compute"
    )
    assert isinstance(P.autocast("cpu", "fp32"), contextlib.nullcontext)  # fp32: nothing changes
    with ctx:
        out = nn.Conv2d(3, 4, 1)(torch.randn(1, 3, 4, 4))
    assert holds_bf16(out) and out.dtype == (torch.bfloat16 if kernels else torch.float32)
