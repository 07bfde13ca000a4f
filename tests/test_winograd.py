"""Winograd F(4x4, 3x3) convolutions: equal to the direct convolution within float32 rounding, and
run exactly where `layers.conv2d` says they pay (CPU fp32 inference), never under autograd,
autocast, tracing or a torch function mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from semsynth.models import layers, winograd
from semsynth.precision import bf16_on_fp32, holds_bf16, round_bf16


def _rel_err(got, x, w, b=None):
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2),
    cin=st.integers(1, 24),
    cout=st.integers(1, 24),
    h=st.integers(1, 19),
    w=st.integers(1, 19),
    bias=st.booleans(),
    channels_last=st.booleans(),
)
def test_winograd_equals_the_direct_convolution(n, cin, cout, h, w, bias, channels_last):
    g = torch.Generator().manual_seed(n * 1000 + cin * 31 + cout * 7 + h * 3 + w)
    x = torch.randn(n, cin, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, 3, 3, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    y = winograd.conv3x3(x, winograd.transform_weight(wt), b)
    assert y.shape == (n, cout, h, w) and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(y, x, wt, b) < 2e-5  # the direct fp32 kernel: ~4e-6


def test_winograd_at_a_crn_shape_with_several_bands():
    """Real widths and more tile rows than one band: the band loop, its last partial band, and
    an edge that is not a multiple of the tile."""
    torch.manual_seed(0)
    x = torch.randn(1, 148, 90, 54).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 148, 3, 3) * 0.05
    y = winograd.conv3x3(x, winograd.transform_weight(w))
    assert -(-90 // winograd.TILE) * -(-54 // winograd.TILE) > winograd._TILES_PER_BAND  # > 1 band
    assert _rel_err(y, x, w) < 2e-5


def _count_winograd(monkeypatch):
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_conv2d_runs_winograd_exactly_where_it_pays(monkeypatch):
    calls = _count_winograd(monkeypatch)
    x = torch.randn(1, 128, 32, 32)
    big = layers.Conv2d(128, 128, 3, padding=1, bias=False)
    with torch.no_grad():
        y = big(x)
        assert calls == [1] and _rel_err(y, x, big.weight) < 2e-5
        # below the channel threshold (64 -> 128: slower than the direct kernel), other geometry,
        # then too few pixels, another dtype, the plain ops, switched off, autocast, a trace
        for conv in (
            layers.Conv2d(64, 128, 3, padding=1),
            layers.Conv2d(128, 128, 3, padding=1, stride=2),
            layers.Conv2d(128, 128, 3, padding=2, dilation=2),
            layers.Conv2d(128, 128, 3, padding=1, groups=2),
            layers.Conv2d(128, 128, 1),
            layers.Conv2d(128, 128, 3, padding=0),
            layers.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"),
        ):
            xi = x[:, : conv.in_channels]
            assert torch.allclose(conv(xi), nn.Conv2d.forward(conv, xi), atol=1e-5)
        big(x[:, :, :31, :32])  # under 1024 pixels
        big.double()(x.double())  # float64
        big.float()
        with layers.reference_ops():
            big(x)
        monkeypatch.setenv("SEMSYNTH_WINOGRAD", "0")
        big(x)
        monkeypatch.delenv("SEMSYNTH_WINOGRAD")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert big(x).dtype == torch.bfloat16  # autocast's own convolution
        torch.jit.trace(big, x, check_trace=False)  # a trace records the plain convolution
    assert calls == [1]
    big(x).sum().backward()  # autograd: the direct convolution, whose backward exists
    assert calls == [1] and big.weight.grad is not None
    with torch.no_grad():
        big(x)
    assert calls == [1, 1]


def test_transformed_weights_follow_changes_to_the_weights():
    conv = layers.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(1, 128, 32, 32)
    with torch.inference_mode():
        a = conv(x)
        u = layers._winograd_weights(conv.weight)
        assert layers._winograd_weights(conv.weight) is u  # cached
    with torch.no_grad():
        conv.weight.mul_(-2)
        b = conv(x)
    assert layers._winograd_weights(conv.weight) is not u
    assert torch.allclose(b, -2 * a, atol=1e-4)


def test_weights_of_a_model_built_under_inference_mode_are_never_stale():
    """Parameters made under inference mode have no version counter: an in-place change there
    must still reach the convolution."""
    x = torch.randn(1, 128, 32, 32)
    with torch.inference_mode():
        conv = layers.Conv2d(128, 128, 3, padding=1, bias=False)
        a = conv(x)
        conv.weight.mul_(-2)
        b = conv(x)
    assert torch.allclose(b, -2 * a, atol=1e-4)


def test_bf16_on_fp32_rounds_around_winograd(monkeypatch):
    """Under the bf16 mode the mode sees the convolution (F.conv2d), rounds its operands and
    result, and its fp32 convolution is Winograd: within one bf16 step of the rounded direct one."""
    calls = _count_winograd(monkeypatch)
    torch.manual_seed(0)
    conv = layers.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(1, 128, 32, 36)
    with torch.inference_mode(), bf16_on_fp32():
        got = conv(x)
    assert calls == [1] and got.dtype == torch.float32 and holds_bf16(got)
    ref = F.conv2d(round_bf16(x), round_bf16(conv.weight.detach()), padding=1)
    assert ((got - ref).abs() <= ref.abs() * 2**-7 + 1e-5).all()


@pytest.mark.parametrize("network", ["crn", "sims"])
def test_networks_under_winograd_equal_the_plain_ops(monkeypatch, network):
    """Every 3x3 convolution of a small CRN / SIMS synthesis network by Winograd (threshold
    lowered to 0): the output equals the plain ops within float rounding."""
    from semsynth.models import build_model

    calls = _count_winograd(monkeypatch)
    monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 0)
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 0)
    torch.manual_seed(0)
    if network == "crn":
        m = build_model({"arch": "crn", "num_classes": 5, "levels": 4, "k": 2, "widths": [16, 16, 12, 8]}).eval()
        inputs = (F.one_hot(torch.randint(0, 6, (1, 32, 64)), 6).permute(0, 3, 1, 2).float(),)
    else:
        m = build_model("sims-tiny").eval()
        h, w = m.config.size
        c = m.config.num_classes + 1
        inputs = (
            F.one_hot(torch.randint(0, c, (1, h, w)), c).permute(0, 3, 1, 2).float(),
            torch.rand(1, 3, h, w),
            torch.ones(1, 1, h, w),
        )
    n3 = sum(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) for c in m.modules())
    with torch.inference_mode():
        fast = m(*inputs)
        with layers.reference_ops():
            ref = m(*inputs)
    fast, ref = (o[0] if isinstance(o, (tuple, list)) else o for o in (fast, ref))
    assert len(calls) == n3 > 0
    assert (fast - ref).abs().max() < 1e-4 and ref.std() > 0.01
