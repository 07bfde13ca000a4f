"""Perceptual / per-class min-over-k diversity loss: values, gradient routing, presets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from semsynth.labels import area_resize
from semsynth.losses import (
    LOSS_PRESETS,
    AdversarialLoss,
    PerceptualLoss,
    build_adversarial,
    build_loss,
    calibrate_layer_weights,
)
from semsynth.utils import shared_dir

SHARED_WEIGHTS = shared_dir() / "weights"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMSYNTH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SEMSYNTH_WEIGHTS", raising=False)


class Toy(nn.Module):
    """Known features: "input" = x; "pool" = 2x2 average of [x, 2·x] (6 channels, half size)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return {"input": x, "pool": F.avg_pool2d(torch.cat([x, 2 * x], 1), 2)}


def two_class_label(H=4, W=4, cols0=1):
    """(1, 3, H, W) one-hot: class 0 = the first `cols0` columns, class 1 = the rest, void empty."""
    lab = torch.zeros(1, 3, H, W)
    lab[:, 0, :, :cols0] = 1
    lab[:, 1, :, cols0:] = 1
    return lab


def constant_fakes(values, lab):
    """fake_k = values[k][c] on class c's region (all channels); real = 0."""
    fakes = []
    for per_class in values:
        img = sum(v * lab[:, c : c + 1] for c, v in enumerate(per_class)).expand(-1, 3, -1, -1)
        fakes.append(img)
    return torch.stack(fakes, 1)  # (1, k, 3, H, W)


def test_diversity_hand_computed_whole_image_area():
    lab = two_class_label(cols0=1)  # class 0 covers 1/4 of the image, class 1 covers 3/4
    a, b, c, d = 0.1, 0.3, 0.4, 0.2
    fake = constant_fakes([(a, c), (b, d)], lab)
    real = torch.zeros(1, 3, 4, 4)
    loss, logs = PerceptualLoss(Toy(), [("input", 2.0)])(fake, real, lab)
    # E[k, class] = value · area/(H·W) (whole-image normalisation); min per class; mean per class
    expect = 2.0 * (0.999 * (min(a, b) * 1 / 4 + min(c, d) * 3 / 4) + 0.001 * ((a + b) / 2 / 4 + (c + d) / 2 * 3 / 4))
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert logs["term/min"].item() == pytest.approx(2.0 * (a / 4 + d * 3 / 4), rel=1e-6)


def reference_loss(feats_fake, feats_real, label, layers, mix=(0.999, 0.001)):
    """Explicit loops over b, k, c, l of SPEC A.4.2."""
    B, k = feats_fake["input"].shape[:2]
    total = 0.0
    for bi in range(B):
        L = torch.zeros(k, label.shape[1], dtype=torch.float64)
        for ki in range(k):
            for ci in range(label.shape[1]):
                for name, w in layers:
                    f, r = feats_fake[name][bi, ki].double(), feats_real[name][bi].double()
                    h, wd = f.shape[-2:]
                    m = area_resize(label[bi : bi + 1, ci : ci + 1].double(), (h, wd))[0, 0]
                    L[ki, ci] += w * (m * (f - r).abs().mean(0)).sum() / (h * wd)
        total += mix[0] * L.min(0).values.sum() + mix[1] * L.mean(0).sum()
    return total / B


@pytest.mark.parametrize("B,k", [(1, 1), (2, 3)])
def test_diversity_matches_reference_loops(B, k):
    g = torch.Generator().manual_seed(0)
    H, W = 6, 10
    ids = torch.randint(0, 4, (B, H, W), generator=g)
    label = F.one_hot(ids, 4).permute(0, 3, 1, 2).float()  # 3 classes + void
    fake, real = torch.rand(B, k, 3, H, W, generator=g), torch.rand(B, 3, H, W, generator=g)
    layers = [("input", 1.0), ("pool", 1 / 2.3)]
    toy = Toy()
    loss, _ = PerceptualLoss(toy, layers)(fake, real, label)
    assert toy.batches == [B, B * k]  # the real image goes through once, the fakes batched
    ff = {n: v.reshape(B, k, *v.shape[1:]) for n, v in Toy()(fake.flatten(0, 1)).items()}
    ref = reference_loss(ff, Toy()(real), label, layers)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # batch = mean of per-example losses
    if B > 1:
        per = [PerceptualLoss(Toy(), layers)(fake[i : i + 1], real[i : i + 1], label[i : i + 1])[0] for i in range(B)]
        assert loss.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-6)


def test_min_over_k_routes_gradients_to_the_chosen_image():
    """Class 0 (left) is best explained by fake 0, class 1 (right) by fake 1: fake 0 gets gradient
    on the right only through the 0.001 mean term, and vice versa."""
    lab = two_class_label(H=4, W=8, cols0=4)
    k = 2
    fake = constant_fakes([(0.1, 0.9), (0.8, 0.2)], lab).requires_grad_(True)
    loss, _ = PerceptualLoss(Toy(), [("input", 1.0)])(fake, torch.zeros(1, 3, 4, 8), lab)
    loss.backward()
    g = fake.grad.abs()
    left, right = g[..., :4], g[..., 4:]
    chosen, other = 0.999 + 0.001 / k, 0.001 / k
    # fake 0 chosen on the left, fake 1 on the right; per-pixel ratio exactly other/chosen
    torch.testing.assert_close(right[:, 0] / left[:, 0], torch.full_like(right[:, 0], other / chosen))
    torch.testing.assert_close(left[:, 1] / right[:, 1], torch.full_like(left[:, 1], other / chosen))
    # and without the mean term the other region gets nothing at all
    fake.grad = None
    PerceptualLoss(Toy(), [("input", 1.0)], mix=(1.0, 0.0))(fake, torch.zeros(1, 3, 4, 8), lab)[0].backward()
    assert (fake.grad[:, 0, ..., 4:] == 0).all() and (fake.grad[:, 1, ..., :4] == 0).all()
    assert (fake.grad[:, 0, ..., :4] != 0).all() and (fake.grad[:, 1, ..., 4:] != 0).all()


def test_gradient_routing_through_a_conv_backbone():
    """With a (random) VGG the split is exact beyond the receptive field of the class border."""
    H, W = 16, 32
    lab = two_class_label(H, W, cols0=16)
    g = torch.Generator().manual_seed(1)
    real = torch.rand(1, 3, H, W, generator=g)
    noise = torch.rand(1, 2, 3, H, W, generator=g)
    side = torch.zeros(1, 2, 1, 1, W)
    side[:, 0, ..., 16:] = 1  # fake 0 is bad on the right, fake 1 on the left
    side[:, 1, ..., :16] = 1
    fake = (real.unsqueeze(1) + 0.02 * noise + 0.5 * side * noise).requires_grad_(True)
    loss_fn = build_loss(
        {"backbone": "vgg19-normalised", "layers": [["input", 1], ["conv1_2", 10]], "pretrained": False}
    )
    loss_fn(fake, real, lab)[0].backward()
    grad_full = fake.grad.clone()
    fake.grad = None
    loss_fn.mix = (1.0, 0.0)
    loss_fn(fake, real, lab)[0].backward()
    far_right, far_left = slice(16 + 3, None), slice(None, 16 - 3)  # conv1_1+conv1_2: 2 px reach
    assert (fake.grad[:, 0, ..., far_right] == 0).all() and (fake.grad[:, 1, ..., far_left] == 0).all()
    own = grad_full[:, 0, ..., far_left].abs().mean()
    leak = grad_full[:, 0, ..., far_right].abs().mean()
    assert 0 < leak / own < 0.01  # ~ (0.001/k) / 0.999, up to the feature differences


def test_mean_mode_hand_computed():
    g = torch.Generator().manual_seed(2)
    fake, real = torch.rand(2, 3, 3, 4, 6, generator=g), torch.rand(2, 3, 4, 6, generator=g)
    layers = [("input", 1.0), ("pool", 0.5)]
    loss, logs = PerceptualLoss(Toy(), layers, mode="mean")(fake, real, None)
    d0 = (fake - real.unsqueeze(1)).abs().mean()
    pf = F.avg_pool2d(torch.cat([fake, 2 * fake], 2).flatten(0, 1), 2)
    pr = F.avg_pool2d(torch.cat([real, 2 * real], 1), 2)
    d1 = (pf.view(2, 3, 6, 2, 3) - pr.unsqueeze(1)).abs().mean()
    assert loss.item() == pytest.approx((d0 + 0.5 * d1).item(), rel=1e-6)
    assert logs["layer/input"].item() == pytest.approx(d0.item(), rel=1e-6)
    # the label is ignored; k = 1 given as (B, 3, H, W) works too
    lab = F.one_hot(torch.zeros(2, 4, 6, dtype=torch.long), 3).permute(0, 3, 1, 2).float()
    assert PerceptualLoss(Toy(), layers, mode="mean")(fake, real, lab)[0].item() == pytest.approx(loss.item())
    l1 = PerceptualLoss(Toy(), [("input", 1.0)], mode="mean")(fake[:, 0], real)[0]
    assert l1.item() == pytest.approx((fake[:, 0] - real).abs().mean().item(), rel=1e-6)


def test_diversity_without_label_is_min_over_k_of_the_whole_image():
    fake = torch.stack([torch.full((1, 3, 4, 4), 0.3), torch.full((1, 3, 4, 4), 0.1)], 1)
    loss, _ = PerceptualLoss(Toy(), [("input", 1.0)])(fake, torch.zeros(1, 3, 4, 4))
    assert loss.item() == pytest.approx(0.999 * 0.1 + 0.001 * 0.2, rel=1e-6)


def test_presets_carry_the_official_weights():
    bb, layers, mode = LOSS_PRESETS["crn-256p"]
    assert bb == "vgg19-matconvnet" and mode == "diversity"
    assert [n for n, _ in layers] == ["input", "conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2"]
    assert [w for _, w in layers] == pytest.approx([1, 1 / 1.6, 1 / 2.3, 1 / 1.8, 1 / 2.8, 10 / 0.8])
    for name in ("crn-512p", "crn-1024p"):
        assert LOSS_PRESETS[name][2] == "mean"
        assert [w for _, w in LOSS_PRESETS[name][1]] == pytest.approx([1, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5])
    gta = LOSS_PRESETS["crn-gta-256p"]
    assert gta[2] == "diversity"
    assert [w for _, w in gta[1]] == pytest.approx([1, 1 / 1.4, 1 / 1.8, 1 / 1.3, 1 / 2.2, 10 / 0.62])
    # every preset builds (random backbone weights: no files needed) and runs
    for name in LOSS_PRESETS:
        if LOSS_PRESETS[name][0] == "vgg19-matconvnet" and name != "crn-256p":
            continue  # same network as crn-256p
        fn = build_loss(name, pretrained=False)
        fake, real = torch.rand(1, 2, 3, 32, 32), torch.rand(1, 3, 32, 32)
        lab = F.one_hot(torch.randint(0, 3, (1, 32, 32)), 3).permute(0, 3, 1, 2).float()
        loss, logs = fn(fake, real, lab)
        assert torch.isfinite(loss) and set(f"layer/{n}" for n, _ in fn.layers) <= set(logs)
    with pytest.raises(KeyError, match="unknown loss preset"):
        build_loss("nope")


def test_missing_vgg_weights_raise_a_helpful_error():
    with pytest.raises(FileNotFoundError, match="imagenet-vgg-verydeep-19.mat"):
        build_loss("crn-256p")


@pytest.mark.skipif(
    not (SHARED_WEIGHTS / "vgg_normalised_conv3_1.pth").is_file(),
    reason="shared normalised VGG weights absent (set SEMSYNTH_SHARED)",
)
def test_normalised_vgg_preset_on_real_weights():
    fn = build_loss("normalised-vgg-diversity")
    assert fn.mode == "diversity" and fn.backbone.layers[-1] == "conv3_1"
    g = torch.Generator().manual_seed(3)
    real = torch.rand(2, 3, 32, 64, generator=g)
    fake = (real.unsqueeze(1) + 0.1 * torch.randn(2, 3, 3, 32, 64, generator=g)).requires_grad_(True)
    lab = F.one_hot(torch.randint(0, 4, (2, 32, 64), generator=g), 4).permute(0, 3, 1, 2).float()
    loss, logs = fn(fake, real, lab)
    loss.backward()
    assert torch.isfinite(loss) and fake.grad.abs().sum() > 0
    assert build_loss("normalised-vgg-mean").mode == "mean"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["normalised-vgg", "squeezenet"])
def test_calibration_reproduces_preset_weights(preset):
    """Re-measure the non-official presets" weights (the choice documented in losses.py)."""
    import glob

    import numpy as np
    from PIL import Image

    files = sorted(glob.glob(str(shared_dir() / "data/cityscapes/leftImg8bit/train/*/*.png")))
    if not files:
        pytest.skip("shared Cityscapes photos absent")
    x = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((512, 256), Image.BOX)))
            .permute(2, 0, 1)
            .float()
            / 255
            for f in files
        ]
    )
    r = 6
    t = torch.arange(-r, r + 1).float()
    k1 = torch.exp(-(t**2) / 8)
    k1 = k1 / k1.sum()
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k1.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k1.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    bb, layers, _ = LOSS_PRESETS[preset]
    fn = build_loss(preset)
    weights, _ = calibrate_layer_weights(fn.backbone, [n for n, _ in layers], x, y)
    assert [w for _, w in weights] == pytest.approx([w for _, w in layers], rel=1e-6)


def test_backbone_must_return_the_loss_layers():
    from semsynth.models.backbones import build_backbone

    bb = build_backbone("vgg19-normalised", pretrained=False, layers=["conv1_2"])
    with pytest.raises(ValueError, match="does not return"):
        PerceptualLoss(bb, [("input", 1.0), ("conv2_2", 1.0)])
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(
        bb(x)["input"], x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    )


def _adv_batch(B=2, k=3, C=5, H=32, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(B, 3, H, W, generator=g)
    fake = torch.rand(B, k, 3, H, W, generator=g)
    label = F.one_hot(torch.randint(0, C, (B, H, W), generator=g), C).permute(0, 3, 1, 2).float()
    return fake, real, label


def _d_step(adv, opt, fake, real, label) -> dict:
    """The trainer's discriminator update (TrainStep.discriminator) on fixed images."""
    loss, logs = adv.discriminator_loss(fake, real, label)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logs


def test_discriminator_learns_to_separate_real_from_fake():
    # real = smooth images, fake = noise: a working D step drives the hinge loss from ~2 (chance)
    # towards 0 within a few dozen steps; a sign error or a missing optimizer step would not.
    torch.manual_seed(0)
    fake, real, label = _adv_batch()
    real = F.avg_pool2d(real, 9, 1, 4)
    adv = AdversarialLoss(label.shape[1], width=8, scales=2, lr=1e-3)
    opt = torch.optim.Adam(adv.disc.parameters(), **adv.optim)
    first = _d_step(adv, opt, fake, real, label)
    for _ in range(40):
        last = _d_step(adv, opt, fake, real, label)
    assert float(first["gan/d_real"] + first["gan/d_fake"]) > 1.5
    assert float(last["gan/d_real"] + last["gan/d_fake"]) < 0.5


def test_generator_loss_reaches_every_output_and_leaves_d_alone():
    torch.manual_seed(0)
    fake, real, label = _adv_batch()
    fake.requires_grad_(True)
    adv = AdversarialLoss(label.shape[1], width=8, scales=2)
    loss, logs = adv.generator_loss(fake, real, label)
    loss.backward()
    assert set(logs) == {"gan/g_adv", "gan/feature_matching"}
    assert all(float(fake.grad[:, i].abs().sum()) > 0 for i in range(fake.shape[1]))
    assert all(p.grad is None for p in adv.disc.parameters())  # D is updated only by its own step
    assert all(p.requires_grad for p in adv.disc.parameters())
    # feature matching is zero when the fake equals the real photo
    _, same = adv.generator_loss(real.unsqueeze(1).repeat(1, 2, 1, 1, 1), real, label)
    assert float(same["gan/feature_matching"]) == 0.0


def test_adversarial_state_round_trips_with_its_optimizer():
    # the critic's state_dict (weights, spectral-norm vectors) plus its optimiser's, as TrainState
    # saves them, give identical next steps
    fake, real, label = _adv_batch()
    a = AdversarialLoss(label.shape[1], width=8, scales=1)
    opt_a = torch.optim.Adam(a.disc.parameters(), **a.optim)
    for _ in range(2):
        _d_step(a, opt_a, fake, real, label)
    b = AdversarialLoss(label.shape[1], width=8, scales=1)
    opt_b = torch.optim.Adam(b.disc.parameters(), **b.optim)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as torch.save/load would: no shared tensors
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    # identical next steps: weights, spectral-norm vectors and Adam moments all came across
    _d_step(a, opt_a, fake, real, label)
    _d_step(b, opt_b, fake, real, label)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if torch.is_tensor(x):
            assert torch.equal(x, y), n


def test_adversarial_config_is_checked():
    assert build_adversarial(None, 20) is None
    assert build_adversarial({"weight": 0, "feature_matching": 0}, 20) is None
    with pytest.raises(ValueError, match="unknown loss.adversarial options \\['wieght'\\]"):
        build_adversarial({"wieght": 1.0}, 20)
