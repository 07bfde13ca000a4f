"""CRN: the released TF checkpoints map one to one onto the presets, the TF checkpoint reader and
converter round-trip, and the generator behaves as the official code (A.3 of the spec)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semsynth import build_model, count_parameters
from semsynth.convert import (
    TFCheckpointError,
    _mask,
    crc32c,
    infer_crn_config,
    is_optimizer_variable,
    load_official_crn,
    official_crn_mapping,
    read_tf_checkpoint,
    read_tf_entries,
    read_tf_header,
    read_tf_index,
)
from semsynth.labels import one_hot
from semsynth.models import crn as crn_mod
from semsynth.utils import shared_dir

OFFICIAL = {  # folder -> (preset, parameters of the released checkpoint, spec A.3)
    "result_256p": ("crn-256p", 97_875_483),
    "result_512p": ("crn-512p", 98_622_851),
    "result_1024p": ("crn-1024p", 98_674_531),
    "result_GTA": ("crn-gta-256p", 97_875_483),
}


def _official_index(folder):
    path = shared_dir() / "reference" / "crn_official_checkpoints" / folder / "model.ckpt.index"
    if not path.is_file():
        pytest.skip(f"{path} not present (shared reference data missing)")
    return path


# ---------------------------------------------------------------------- released checkpoints


@pytest.mark.parametrize("folder", sorted(OFFICIAL))
def test_official_index_maps_one_to_one_onto_preset(folder):
    preset, total = OFFICIAL[folder]
    index = read_tf_index(_official_index(folder))
    with torch.device("meta"):  # shapes only; no 98M-parameter allocation
        model = build_model(preset)
    names = model.official_names()
    params = dict(model.named_parameters())
    assert set(names) == set(params)  # every parameter has an official name ...
    assert len(set(names.values())) == len(names)  # ... and no two share one
    for key, tf_name in names.items():
        entry = index[tf_name]
        assert entry.dtype == "float32"
        shape = tuple(entry.shape)
        if len(shape) == 4:  # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        assert shape == tuple(params[key].shape), tf_name
    leftover = set(index) - set(names.values())
    assert leftover and all(is_optimizer_variable(n) for n in leftover), sorted(leftover)[:5]
    assert {n for n in leftover if "/" not in n} == {"beta1_power", "beta2_power"}
    n_tf = sum(int(np.prod(index[n].shape)) for n in names.values())
    assert n_tf == count_parameters(model) == total
    assert official_crn_mapping(model, index) == names
    # the structure can be read off the index alone
    cfg = infer_crn_config(index)
    assert (cfg["levels"], cfg["k"]) == (model.config.levels, model.config.k)
    assert cfg["widths"] == model.config.module_widths()


@pytest.mark.parametrize("folder", sorted(OFFICIAL))
def test_official_index_layout_is_consistent(folder):
    index = read_tf_entries(_official_index(folder))  # block CRCs are verified while reading
    assert read_tf_header(_official_index(folder))["num_shards"] == 1
    assert {k: tuple(e[:4]) for k, e in index.items()} == read_tf_index(_official_index(folder))
    entries = sorted(index.values(), key=lambda e: e.offset)
    for a, b in zip(entries, entries[1:]):
        assert a.offset + a.size <= b.offset  # tensors never overlap in the data file
    for e in entries:
        assert e.size == 4 * int(np.prod(e.shape)) and e.shard_id == 0 and e.crc32c is not None
    # Adam's beta powers were 0.0 after training: their stored masked CRC is that of 4 zero bytes
    assert index["beta1_power"].crc32c == _mask(crc32c(b"\0\0\0\0"))


def test_wrong_preset_is_reported_with_every_problem():
    index = read_tf_index(_official_index("result_512p"))
    with torch.device("meta"):
        model = build_model("crn-256p")
    with pytest.raises(
        TFCheckpointError, match=r"g_256_conv100/weights.*Wrong --preset.*matching preset\(s\): crn-512p$"
    ):
        official_crn_mapping(model, index)


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes()

    def bitwise(d):
        c = 0xFFFFFFFF
        for b in d:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        return c ^ 0xFFFFFFFF

    for n in (1, 7, 64, 65, 1000, 10_000):
        assert crc32c(data[:n]) == bitwise(data[:n])


# ---------------------------------------------------------------------- synthetic TF checkpoint


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _entry_proto(shape, offset, size, crc) -> bytes:
    dims = b"".join(b"\x12" + _varint(len(d)) + d for d in (b"\x08" + _varint(s) for s in shape))
    msg = b"\x08\x01" + b"\x12" + _varint(len(dims)) + dims  # dtype float32, shape
    if offset:
        msg += b"\x20" + _varint(offset)  # proto3 omits zero offsets
    return msg + b"\x28" + _varint(size) + b"\x35" + struct.pack("<I", _mask(crc))


def _write_table(path, items, block_bytes=200, restart_interval=3):
    """A minimal LevelDB table writer: prefix-compressed entries with restart points, several
    small data blocks, an index block of BlockHandles and the 48-byte footer."""
    out = bytearray()

    def block(entries):
        buf, restarts, prev = bytearray(), [], b""
        for i, (k, v) in enumerate(entries):
            shared = 0
            if i % restart_interval == 0:
                restarts.append(len(buf))
            else:
                while shared < min(len(prev), len(k)) and prev[shared] == k[shared]:
                    shared += 1
            buf += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
            prev = k
        buf += b"".join(struct.pack("<I", r) for r in restarts or [0])
        buf += struct.pack("<I", len(restarts or [0]))
        offset = len(out)
        out.extend(buf + b"\0" + struct.pack("<I", _mask(crc32c(bytes(buf) + b"\0"))))
        return _varint(offset) + _varint(len(buf))

    index_entries, current, size = [], [], 0
    for k, v in items:
        current.append((k, v))
        size += len(k) + len(v)
        if size >= block_bytes:
            index_entries.append((current[-1][0], block(current)))
            current, size = [], 0
    if current:
        index_entries.append((current[-1][0], block(current)))
    meta_handle = block([])
    index_handle = block(index_entries)
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    path.write_bytes(bytes(out) + footer)
    return len(index_entries)


def _write_tf_checkpoint(prefix, arrays):
    """Write `arrays` (name -> float32 array) as a TF bundle: index + data shard."""
    data, items = bytearray(), [(b"", b"\x08\x01\x1a\x02\x08\x01")]  # header: 1 shard, version
    for name in sorted(arrays):
        raw = np.ascontiguousarray(arrays[name], dtype="<f4").tobytes()
        items.append((name.encode(), _entry_proto(arrays[name].shape, len(data), len(raw), crc32c(raw))))
        data += raw
    n_blocks = _write_table(prefix.with_name(prefix.name + ".index"), items)
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
    return n_blocks


def _tiny_official(model, seed=0):
    """Random TF-layout variables for `model` plus Adam slots and beta powers."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    arrays = {}
    for key, tf_name in model.official_names().items():
        shape = tuple(sd[key].shape)
        if len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])  # OIHW -> HWIO
        arrays[tf_name] = rng.standard_normal(shape).astype(np.float32)
        arrays[tf_name + "/Adam"] = rng.standard_normal(shape).astype(np.float32)
        arrays[tf_name + "/Adam_1"] = rng.standard_normal(shape).astype(np.float32)
    arrays["beta1_power"] = np.array(0.9, np.float32)
    arrays["beta2_power"] = np.array(0.999, np.float32)
    return arrays


def test_synthetic_checkpoint_round_trip(tmp_path):
    model = build_model("crn-tiny")
    arrays = _tiny_official(model)
    prefix = tmp_path / "model.ckpt"
    assert _write_tf_checkpoint(prefix, arrays) > 3  # exercises several data blocks

    index = read_tf_index(prefix)
    assert set(index) == set(arrays)
    assert all(index[n].shape == arrays[n].shape for n in arrays)
    loaded = read_tf_checkpoint(prefix)
    assert all(np.array_equal(loaded[n], arrays[n]) for n in arrays)
    assert set(read_tf_checkpoint(prefix, skip_optimizer=True)) == set(model.official_names().values())

    net = load_official_crn(prefix, "crn-tiny")
    sd = net.state_dict()
    for key, tf_name in net.official_names().items():
        ref = torch.from_numpy(arrays[tf_name])
        if ref.ndim == 4:
            ref = ref.permute(3, 2, 0, 1)
        assert torch.equal(sd[key], ref), key
    # a 1x1 head kernel (1,1,C,3k) becomes the (3k,C,1,1) conv weight
    head = torch.from_numpy(arrays["g_64_conv100/weights"][0, 0].T)
    assert torch.equal(sd["head.weight"][:, :, 0, 0], head)
    assert not net.training
    assert load_official_crn(prefix).config.module_widths() == model.config.module_widths()  # inferred


def test_synthetic_checkpoint_errors(tmp_path):
    model = build_model("crn-tiny")
    arrays = _tiny_official(model)
    prefix = tmp_path / "model.ckpt"
    _write_tf_checkpoint(prefix, arrays)
    with pytest.raises(TFCheckpointError, match="Wrong --preset"):
        load_official_crn(prefix, "crn-256p")
    data = prefix.with_name("model.ckpt.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    off = read_tf_index(prefix)["g_4_conv1/weights"].offset
    raw[off] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match="CRC mismatch for 'g_4_conv1/weights'"):
        read_tf_checkpoint(prefix)
    read_tf_checkpoint(prefix, verify=False)  # still decodable without the check
    data.unlink()
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_tf_checkpoint(prefix, names=["g_4_conv1/weights"])
    index = prefix.with_name("model.ckpt.index")
    index.write_bytes(index.read_bytes()[:-1] + b"\0")
    with pytest.raises(TFCheckpointError, match="bad table magic"):
        read_tf_index(prefix)


def test_cli_convert_writes_loadable_checkpoint(tmp_path, capsys):
    from semsynth.cli import main

    model = build_model("crn-tiny")
    arrays = _tiny_official(model, seed=1)
    prefix = tmp_path / "tf" / "model.ckpt"
    prefix.parent.mkdir()
    _write_tf_checkpoint(prefix, arrays)
    assert main(["convert", str(prefix), "--preset", "crn-tiny", "-o", str(tmp_path / "out")]) == 0
    target = tmp_path / "out" / "model.safetensors"
    assert target.is_file()
    from safetensors.torch import load_file

    sd = load_file(str(target))
    ref = load_official_crn(prefix, "crn-tiny").state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    from semsynth.checkpoint import load_model

    net, meta = load_model(tmp_path / "out")
    assert meta["label_space"].name == "cityscapes"
    assert all(torch.equal(net.state_dict()[k], ref[k]) for k in ref)
    # a mismatching preset is one clear error line, not a traceback
    assert main(["convert", str(prefix), "--preset", "crn-256p", "-o", str(tmp_path / "bad")]) == 2
    assert "Wrong --preset" in capsys.readouterr().err


# ---------------------------------------------------------------------- generator behaviour


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("crn-tiny", **kw).eval()  # levels 5 (4x8 ... 64x128), k 3, width 32


def _random_label(h=64, w=128, c=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    return one_hot(torch.randint(0, c + 1, (2, h, w), generator=g), c)


def test_output_shape_is_b_k_3_h_w():
    net = _tiny()
    with torch.no_grad():
        y = net(_random_label())
    assert y.shape == (2, 3, 3, 64, 128)
    with torch.no_grad():  # fully convolutional: any size divisible by 2^(levels-1)
        assert net(_random_label(32, 48)).shape == (2, 3, 3, 32, 48)


def test_k_images_are_channels_i_k_plus_i_2k_plus_i():
    net = _tiny()
    k = net.config.k
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.arange(3 * k, dtype=torch.float32))
        y = net(_random_label(32, 64))
    for i in range(k):
        for c in range(3):  # image i, colour c = head channel c*k + i, mapped by (x + 1) / 2
            assert torch.all(y[:, i, c] == (c * k + i + 1) / 2)


def test_layernorm_normalises_over_c_h_w_with_per_channel_affine():
    norm = _tiny().blocks["g_4"].norm1
    assert norm.num_groups == 1 and norm.eps == 1e-12
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, norm.num_channels, 5, 7, generator=g, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.num_channels, generator=g))
        norm.bias.copy_(torch.randn(norm.num_channels, generator=g))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    manual = (x - mean) / torch.sqrt(var + 1e-12)
    manual = manual * norm.weight.double()[None, :, None, None] + norm.bias.double()[None, :, None, None]
    out = F.group_norm(x, 1, norm.weight.double(), norm.bias.double(), 1e-12)
    assert torch.allclose(norm.double()(x), manual, atol=1e-10) and torch.allclose(out, manual, atol=1e-10)


def test_conv1_input_is_upsampled_features_then_label():
    net = _tiny()
    widths = net.config.module_widths()
    blocks = list(net.blocks.values())
    assert blocks[0].conv1.in_channels == 20
    assert [b.conv1.in_channels for b in blocks[1:]] == [w + 20 for w in widths[:-1]]
    # Two layouts with the same class histogram in every 16x16 cell: identical 4x8 label, different
    # finer labels. With the label part (the LAST 20 input channels) of every finer conv1 zeroed,
    # only the 4x8 label reaches the output, so both give the same images.
    a = torch.zeros(1, 32, 4, 16, dtype=torch.long)  # 32x64: 2x4 cells of 16x16 pixels
    a[..., 8:] = 1  # in every cell: left half class 0, right half class 1
    a = a.view(1, 32, 64)
    b = 1 - a
    la, lb = one_hot(a, 19), one_hot(b, 19)
    with torch.no_grad():
        assert not torch.allclose(net(la), net(lb))
        for blk in blocks[1:]:
            blk.conv1.weight[:, -20:] = 0
        assert torch.allclose(net(la), net(lb), atol=1e-6)
        for blk in blocks[1:]:  # zeroing the feature part instead keeps the label dependence
            blk.conv1.weight[:, :-20] = 0
            blk.conv1.weight[:, -20:] = torch.randn_like(blk.conv1.weight[:, -20:])
        assert not torch.allclose(net(la), net(lb), atol=1e-6)


def test_upsampling_is_bilinear_align_corners(monkeypatch):
    calls = []
    real = F.interpolate

    def spy(x, *args, **kwargs):
        calls.append((tuple(x.shape[-2:]), kwargs.get("size"), kwargs.get("mode"), kwargs.get("align_corners")))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(crn_mod.F, "interpolate", spy)
    net = _tiny()
    with torch.no_grad():
        net(_random_label())
    feats = [c for c in calls if c[2] == "bilinear"]
    assert [(c[0], tuple(c[1])) for c in feats] == [
        ((4, 8), (8, 16)),
        ((8, 16), (16, 32)),
        ((16, 32), (32, 64)),
        ((32, 64), (64, 128)),
    ]
    assert all(c[3] is True for c in feats)


def test_label_pyramid_is_repeated_2x2_average():
    net = _tiny()
    seen = {}
    for name, blk in net.blocks.items():
        blk.register_forward_pre_hook(lambda m, inp, name=name: seen.__setitem__(name, inp[0][:, -20:].clone()))
    label = _random_label()
    with torch.no_grad():
        net(label)
    expect = label
    for name in reversed(list(net.blocks)):  # g_64 sees the full label, g_32 its 2x2 average, ...
        assert torch.allclose(seen[name], expect, atol=1e-6), name
        expect = F.avg_pool2d(expect, 2)
    assert seen["g_4"].shape[-2:] == (4, 8)
    assert torch.allclose(seen["g_4"].sum(1), torch.ones(2, 4, 8))  # soft but still a distribution


def test_non_divisible_size_raises_clear_error():
    net = _tiny()
    with pytest.raises(ValueError, match=r"60x128 is not divisible by 16.*native size is 64x128"):
        net(_random_label(60, 128))


def test_width_mult_and_base_grid_variants():
    with torch.device("meta"):
        quarter = build_model("crn-256p", width_mult=0.25)
    assert quarter.config.module_widths() == [256, 256, 256, 256, 256, 128, 128]
    assert quarter.blocks["g_256"].conv1.in_channels == 128 + 20 and quarter.head.in_channels == 128
    net = build_model({"arch": "crn", "levels": 4, "base": (3, 4), "k": 2, "width_mult": 1 / 64}).eval()
    assert net.config.size == (24, 32)
    assert list(net.blocks) == ["g_l0", "g_l1", "g_l2", "g_l3"]  # CamVid-style 4:3 grid
    with torch.no_grad():
        assert net(_random_label(24, 32, c=19)).shape == (2, 2, 3, 24, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(_random_label(20, 32))


# ---------------------------------------------------------------------- fast inference path


def _varied_layout(C, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, C + 1, (2, H // 8, W // 8), generator=g)
    ids = F.interpolate(ids[:, None].float(), size=(H, W), mode="nearest")[:, 0].long()
    return one_hot(ids, C)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_inference_path_equals_the_plain_ops(dtype):
    """Without autograd the norm + activation run in place (and on CPU in channels_last): the
    output equals the plain GroupNorm -> LeakyReLU path within float rounding."""
    from semsynth.models.layers import reference_ops

    torch.manual_seed(0)
    m = build_model({"arch": "crn", "num_classes": 5, "levels": 4, "k": 2, "widths": [16, 16, 12, 8]}).eval()
    for mod in m.modules():  # non-trivial affine parameters, so scale and shift are exercised
        if isinstance(mod, torch.nn.GroupNorm):
            mod.weight.data.uniform_(0.5, 1.5), mod.bias.data.uniform_(-0.3, 0.3)
    x = _varied_layout(5, 32, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        with torch.no_grad(), reference_ops():
            ref = m(x)
        with torch.no_grad():
            fast = m(x)
        with torch.inference_mode():
            fast2 = m(x)
    tol = 1e-5 if dtype == torch.float32 else 0.06
    assert fast.dtype == ref.dtype and fast.shape == ref.shape == (2, 2, 3, 32, 64)
    assert (fast.float() - ref.float()).abs().max() < tol
    assert torch.equal(fast, fast2)
    assert ref.float().std() > 0.01  # a non-degenerate output, or the comparison means nothing


def test_fast_path_is_off_under_autograd():
    """With gradients the plain modules run: the backward pass is unchanged and the conv outputs
    are not overwritten in place (which autograd would refuse)."""
    from semsynth.models.layers import layer_norm_lrelu, reference_ops

    torch.manual_seed(0)
    m = build_model({"arch": "crn", "num_classes": 5, "levels": 3, "k": 1, "widths": [8, 8, 8]})
    x = _varied_layout(5, 16, 32)
    m(x).sum().backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with reference_ops():
        m(x).sum().backward()
    assert all(torch.equal(g[n], p.grad) for n, p in m.named_parameters())
    t = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        out = layer_norm_lrelu(t, torch.nn.GroupNorm(1, 8))
    assert out.data_ptr() == t.data_ptr()  # in place without autograd: no fresh 268 MB tensors


def test_layer_norm_lrelu_matches_group_norm_at_large_mean():
    """The chunked two-pass statistics stay exact where E[x^2] - E[x]^2 cancels (torch's own
    CPU GroupNorm is off by ~0.2 here; the float64 computation is the reference)."""
    from semsynth.models.layers import layer_norm_lrelu

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(1, 4, eps=1e-12)
    x = (torch.randn(2, 4, 600, 1000) * 0.5 + 40).contiguous(memory_format=torch.channels_last)
    d = x.double()
    ref = F.leaky_relu(
        (d - d.mean((1, 2, 3), keepdim=True)) / d.var((1, 2, 3), unbiased=False, keepdim=True).sqrt(), 0.2
    )
    with torch.no_grad():
        out = layer_norm_lrelu(x.clone(), norm)
    assert (out.double() - ref).abs().max() < 1e-4


_FAULTS = """
import resource, sys, torch, torch.nn as nn
from semsynth.models.layers import cpu_channels_last, keep_freed_memory, layer_norm_lrelu
conv, norm = nn.Conv2d(16, 64, 3, padding=1), nn.GroupNorm(1, 64)
x = torch.rand(1, 16, 256, 512)  # 64 x 256 x 512 floats: 33.5 MB, above glibc's largest mmap threshold
def run():
    with torch.inference_mode():
        return (layer_norm_lrelu(conv(cpu_channels_last(x)), norm) * 2).sum()
run()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    run()
print(keep_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 3)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_cpu_inference_reuses_freed_memory_without_page_faults():
    """After the first CPU inference pass freed activations are reused, not faulted in again
    (two 33.5 MB tensors a pass: ~16k faults each pass with the system malloc settings)."""
    import os
    import subprocess
    import sys

    def faults(**env):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS], env={**os.environ, **env}, capture_output=True, text=True, check=True
        )
        tuned, n = out.stdout.split()
        return tuned == "True", int(n)

    tuned, system = faults(SEMSYNTH_MALLOC="system")
    assert not tuned and system == pytest.approx(16384, rel=0.5)
    tuned, n = faults()
    assert tuned and n < system / 4
