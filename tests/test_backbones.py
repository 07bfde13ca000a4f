"""Backbones (VGG-19 in three file formats, SqueezeNet) and weight-file resolution."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from semsynth import weights as W
from semsynth.models.backbones import (
    CAFFE_MEAN_BGR,
    MATCONVNET_MEAN_RGB,
    VGG19_CONVS,
    build_backbone,
    load_matconvnet_vgg19,
    load_torchvision_vgg19,
)
from semsynth.utils import shared_dir

SHARED_WEIGHTS = shared_dir() / "weights"
CONVS = [e for e in VGG19_CONVS if e != "pool"]
TV_INDEX = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, an empty private torch hub cache, no SEMSYNTH_WEIGHTS."""
    monkeypatch.setenv("SEMSYNTH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SEMSYNTH_WEIGHTS", raising=False)


def needs_shared(name):
    return pytest.mark.skipif(
        not (SHARED_WEIGHTS / name).is_file(),
        reason=f"shared weight file {SHARED_WEIGHTS / name} is absent (set SEMSYNTH_SHARED to the shared folder)",
    )


@pytest.fixture(scope="module")
def vgg_weights():
    """Random VGG-19 conv weights {name: (OIHW, bias)}, small enough in magnitude to stay finite."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, cin, cout in CONVS:
        w = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        out[name] = (w, torch.randn(cout, generator=g) * 0.1)
    return out


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory, vgg_weights):
    path = tmp_path_factory.mktemp("tv") / "vgg19_synthetic.pth"
    save_torchvision(path, vgg_weights)
    return path


def save_torchvision(path, ws):
    """A state dict with torchvision's exact vgg19 keys and shapes (classifier as zero-stride
    views so the file stays small; the loader ignores it)."""
    sd = {}
    for (name, _, _), idx in zip(CONVS, TV_INDEX):
        sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"] = ws[name]
    for idx, (o, i) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        sd[f"classifier.{idx}.weight"] = torch.zeros(1).expand(o, i)
        sd[f"classifier.{idx}.bias"] = torch.zeros(o)
    torch.save(sd, path)


def _cell(*items):
    c = np.empty((1, len(items)), dtype=object)
    for i, v in enumerate(items):
        c[0, i] = v
    return c


def save_matconvnet(path, ws, form="crn", upto=None):
    """A MatConvNet SimpleNN/DagNN VGG-19 file as scipy.io.savemat writes MATLAB structs.

    form: "crn"   fields (name, type, weights, ...): weights at field index 2 (CRN's file)
          "beta16" fields (weights, size, pad, stride, type, name): weights at index 0
          "old"   separate `filters` / `biases` fields
          "dagnn" `layers` struct array + top-level `params` (name, value)"""
    from scipy.io import savemat

    names = [n for n, _, _ in CONVS][:upto]
    hwio = {n: ws[n][0].permute(2, 3, 1, 0).numpy() for n in names}
    bias = {n: ws[n][1].numpy().reshape(1, -1) for n in names}
    if form == "dagnn":
        params = np.zeros((1, 2 * len(names)), dtype=[("name", object), ("value", object)])
        layers = np.zeros((1, len(names)), dtype=[("name", object), ("type", object), ("params", object)])
        for i, n in enumerate(names):
            params[0, 2 * i] = (f"{n}_filter", hwio[n])
            params[0, 2 * i + 1] = (f"{n}_bias", bias[n].T)
            layers[0, i] = (n, "dagnn.Conv", _cell(f"{n}_filter", f"{n}_bias"))
        savemat(path, {"layers": layers, "params": params})
        return
    entries = []
    for e in VGG19_CONVS:  # conv, relu, [pool] — the layer list as in the real file
        if e == "pool":
            entries.append({"name": "pool", "type": "pool", "weights": np.empty((0, 0), object)})
            continue
        n = e[0]
        if n not in names:
            break
        entries.append({"name": n, "type": "conv", "w": hwio[n], "b": bias[n]})
        entries.append({"name": "relu" + n[4:], "type": "relu", "weights": np.empty((0, 0), object)})
    layers = np.empty((1, len(entries)), dtype=object)
    for i, e in enumerate(entries):
        w = e.get("w")
        if form == "crn":
            rec = {
                "name": e["name"],
                "type": e["type"],
                "weights": _cell(w, e["b"]) if w is not None else e["weights"],
                "size": np.array([[3, 3, 1, 1]]),
                "pad": np.array([[1, 1, 1, 1]]),
                "stride": np.array([[1, 1]]),
            }
        elif form == "beta16":
            rec = {
                "weights": _cell(w, e["b"]) if w is not None else e["weights"],
                "size": np.array([[3, 3, 1, 1]]),
                "pad": np.array([[1, 1, 1, 1]]),
                "stride": np.array([[1, 1]]),
                "type": e["type"],
                "name": e["name"],
            }
        else:
            rec = {
                "name": e["name"],
                "type": e["type"],
                "filters": w if w is not None else np.empty((0, 0)),
                "biases": e["b"] if w is not None else np.empty((0, 0)),
            }
        layers[0, i] = rec
    savemat(path, {"layers": layers, "meta": {"normalization": {"averageImage": np.array(MATCONVNET_MEAN_RGB)}}})


# ----------------------------------------------------------------------------- VGG-19 formats


def test_torchvision_and_matconvnet_files_give_identical_features(tmp_path, vgg_weights, tv_file):
    save_matconvnet(tmp_path / "vgg19_synthetic.mat", vgg_weights, form="crn")
    layers = ["conv1_1", "conv2_2", "conv3_4", "conv4_1", "conv5_4"]
    tv = build_backbone("vgg19", path=tv_file, layers=layers)
    mc = build_backbone("vgg19-matconvnet", path=tmp_path / "vgg19_synthetic.mat", layers=layers)
    for name, _, _ in CONVS:
        torch.testing.assert_close(tv.convs[name].weight, mc.convs[name].weight, rtol=0, atol=0)
        torch.testing.assert_close(tv.convs[name].bias, mc.convs[name].bias, rtol=0, atol=0)

    x = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    # The two input conventions, as documented.
    mean = torch.tensor(MATCONVNET_MEAN_RGB).view(1, 3, 1, 1)
    torch.testing.assert_close(mc(x)["input"], 255 * x - mean)
    m, s = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(tv(x)["input"], (x - m) / s)
    # The same prepared input through both networks: identical features at every layer.
    z = mc.prepare(x)
    a, b = tv.extract(z, set(layers)), mc.extract(z, set(layers))
    assert sorted(a) == sorted(layers)
    for name in layers:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert a["conv5_4"].shape == (2, 512, 1, 2)  # four 2x2 pools


def test_weights_transformed_for_the_other_input_convention(tmp_path, vgg_weights, tv_file):
    """Fold torchvision's (x−mean)/std into conv1_1 so that it reads MatConvNet's 255·x − mean:
    conv1_1 then agrees away from the zero-padded border (where the two "zeros" differ)."""
    w, b = vgg_weights["conv1_1"]
    m = torch.tensor([0.485, 0.456, 0.406])
    s = torch.tensor([0.229, 0.224, 0.225])
    mu = torch.tensor(MATCONVNET_MEAN_RGB)
    # (x − m)/s = u/(255 s) + (mu/255 − m)/s  with u = 255·x − mu
    w_mc = w / (255 * s).view(1, 3, 1, 1)
    b_mc = b + (w * ((mu / 255 - m) / s).view(1, 3, 1, 1)).sum((1, 2, 3))
    ws = dict(vgg_weights, conv1_1=(w_mc, b_mc))
    save_matconvnet(tmp_path / "b.mat", ws, form="beta16", upto=1)
    tv = build_backbone("vgg19", path=tv_file, layers=["conv1_1"])
    mc = build_backbone("vgg19-matconvnet", path=tmp_path / "b.mat", layers=["conv1_1"])
    x = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(2))
    fa, fb = tv(x)["conv1_1"], mc(x)["conv1_1"]
    torch.testing.assert_close(fa[..., 1:-1, 1:-1], fb[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fa[..., 0, :], fb[..., 0, :], atol=1e-3)  # the border does differ


@pytest.mark.parametrize("form", ["crn", "beta16", "old", "dagnn"])
def test_matconvnet_struct_forms(tmp_path, vgg_weights, form):
    path = tmp_path / f"{form}.mat"
    save_matconvnet(path, vgg_weights, form=form, upto=3)
    got = load_matconvnet_vgg19(path)
    assert list(got) == ["conv1_1", "conv1_2", "conv2_1"]
    for name, (w, b) in got.items():
        torch.testing.assert_close(w, vgg_weights[name][0], rtol=0, atol=0)
        torch.testing.assert_close(b, vgg_weights[name][1], rtol=0, atol=0)
    net = build_backbone("vgg19-matconvnet", path=path, layers=["conv2_1"])
    assert net.layers == ["input", "conv1_1", "conv1_2", "conv2_1"]
    with pytest.raises(ValueError, match="no conv2_2|has no layer"):
        build_backbone("vgg19-matconvnet", path=path, layers=["conv2_2"])


def test_torchvision_loader_rejects_other_networks(tmp_path):
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5), "features.0.bias": torch.zeros(64)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="features.0.weight has shape"):
        load_torchvision_vgg19(tmp_path / "x.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG-19"):
        load_torchvision_vgg19(tmp_path / "y.pth")


def test_truncation_freezing_and_input_gradients():
    net = build_backbone("vgg19-matconvnet", pretrained=False, layers=["conv2_2", "conv1_1"])
    assert net.layers == ["input", "conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    assert list(net.convs) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]  # nothing deeper built
    assert all(not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    out = net(x)
    assert list(out) == ["input", "conv2_2", "conv1_1"]
    assert out["conv2_2"].shape == (1, 128, 8, 8) and (out["conv1_1"] >= 0).all()  # post-ReLU
    out["conv2_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no layer"):
        build_backbone("vgg19", pretrained=False, layers=["conv6_1"])


def test_average_versus_max_pooling():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    a = build_backbone("vgg19", pretrained=False, layers=["conv1_2", "conv2_1"])
    m = build_backbone("vgg19", pretrained=False, layers=["conv1_2", "conv2_1"], pool="max")
    fa, fm = a(x), m(x)
    torch.testing.assert_close(fa["conv1_2"], fm["conv1_2"])  # same weights before the pool
    assert not torch.allclose(fa["conv2_1"], fm["conv2_1"])


# ----------------------------------------------------------------------------- shared weight files


@needs_shared("vgg_normalised_conv3_1.pth")
def test_shared_normalised_vgg():
    path = W.resolve("vgg19-normalised")
    assert path == SHARED_WEIGHTS / "vgg_normalised_conv3_1.pth"
    assert W.sha256(path).startswith("4ffff49ad5cdc333")
    net = build_backbone("vgg19-normalised")
    assert net.layers == ["input", "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]
    # 1x1 input conv (12) + conv1_1 … conv3_1
    assert net.num_parameters() == 12 + sum(o * i * 9 + o for n, i, o in CONVS[:5]) == 555_340
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(4))
    f = net(x)
    # the file's 1x1 conv is RGB [0,1] -> BGR·255 − mean
    torch.testing.assert_close(
        f["input"], x.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), rtol=1e-5, atol=1e-3
    )
    assert f["conv3_1"].shape == (1, 256, 4, 6)
    assert all(torch.isfinite(v).all() for v in f.values())
    assert f["conv1_2"].mean() > 0.1  # normalised to mean activation ~1: not dead


@needs_shared("squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5")
def test_shared_squeezenet():
    path = W.resolve("squeezenet1_1")
    assert W.sha256(path).startswith("17154246284f5555")
    net = build_backbone("squeezenet1_1")
    assert net.num_parameters() == 722_496
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    f = net(x)
    assert f["conv1"].shape == (2, 64, 31, 31)
    assert f["fire3"].shape == (2, 128, 15, 15) and f["fire5"].shape == (2, 256, 7, 7)
    assert f["fire9"].shape == (2, 512, 3, 3)
    assert all(torch.isfinite(v).all() for v in f.values())
    torch.testing.assert_close(f["input"], x.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))
    f["fire5"].mean().backward()
    assert x.grad.abs().sum() > 0
    small = build_backbone("squeezenet1_1", layers=["fire3"])
    assert small.layers == ["input", "conv1", "fire2", "fire3"] and "fire4_squeeze1x1" not in small.convs
    torch.testing.assert_close(small(x.detach())["fire3"], f["fire3"].detach())


# ----------------------------------------------------------------------------- weights.resolve


def test_offline_message_names_file_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        W.resolve("vgg19")
    msg = str(e.value)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert "vgg19-dcbb9e9d.pth" in msg
    assert str(hub / "vgg19-dcbb9e9d.pth") in msg
    assert "SEMSYNTH_WEIGHTS" in msg and "SEMSYNTH_OFFLINE" in msg
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    assert "imagenet-vgg-verydeep-19.mat" in msg and "vgg19-matconvnet" in msg
    with pytest.raises(FileNotFoundError, match="imagenet-vgg-verydeep-19.mat"):
        build_backbone("vgg19-matconvnet")


def test_resolve_search_order_and_hash_check(tmp_path, monkeypatch):
    env_dir, hub = tmp_path / "mine", tmp_path / "torch_home" / "hub" / "checkpoints"
    env_dir.mkdir()
    hub.mkdir(parents=True)
    (hub / "thing.bin").write_bytes(b"hub")
    assert W.resolve("thing.bin") == hub / "thing.bin"
    (env_dir / "thing.bin").write_bytes(b"env")
    monkeypatch.setenv("SEMSYNTH_WEIGHTS", str(env_dir))
    assert W.resolve("thing.bin") == env_dir / "thing.bin"  # SEMSYNTH_WEIGHTS first
    # a hash in the file name (torchvision style) is checked
    data = b"some weights"
    good = hashlib.sha256(data).hexdigest()[:8]
    (env_dir / f"net-{good}.pth").write_bytes(data)
    assert W.resolve(f"net-{good}.pth") == env_dir / f"net-{good}.pth"
    (env_dir / "other-0123abcd.pth").write_bytes(data)  # a hash-like suffix that is not one
    with pytest.warns(UserWarning, match="0123abcd"):
        W.resolve("other-0123abcd.pth")
    (env_dir / "vgg19-dcbb9e9d.pth").write_bytes(b"not vgg")
    with pytest.raises(ValueError, match="dcbb9e9d"):
        W.resolve("vgg19")
    with pytest.raises(FileNotFoundError, match="no public download URL"):
        W.resolve("nothing-here.pth")
