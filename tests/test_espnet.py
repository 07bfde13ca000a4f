"""ESPNet re-implementation: the released state dicts load strictly, and the networks reproduce
the accuracies stated in ../shared/README.md (fast: one image at reduced size; slow: all pairs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semsynth.evaluate import ESPNetSegmenter, confusion_matrix, segmentation_scores
from semsynth.labels import get_space
from semsynth.models.espnet import ESPNET_PRESETS, ESPNet, ESPNetEncoder, build_espnet

FILES = {"espnet-cityscapes": "decoder_espnet_p_2_q_8.pth", "espnet-camvid": "decoder_espnet_p_2_q_8_camvid.pth"}


def _weights(shared, name):
    p = shared / "weights" / name
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


def test_decoder_structure_facts():
    """Shapes that identify the two released decoders (shared README): the Cityscapes refinement
    conv sees the 16-channel level-1 output, the CamVid one the 19-channel b1 output."""
    cs, cv = build_espnet("espnet-cityscapes"), build_espnet("espnet-camvid")
    assert cs.conv.conv.weight.shape == (20, 36, 3, 3)
    assert cv.conv.conv.weight.shape == (12, 31, 3, 3)
    # ESP module widths: n = nOut // 5, the first branch takes the remainder
    assert cs.encoder.level3_0.d1.conv.weight.shape == (28, 25, 3, 3)
    assert cv.combine_l2_l3[1].d1.conv.weight.shape == (4, 2, 3, 3)
    assert cs.encoder.level3[0].d16.conv.dilation == (16, 16)
    assert len(cs.encoder.level2) == 2 and len(cs.encoder.level3) == 8
    x = torch.rand(1, 3, 64, 96)
    assert cs.eval()(x).shape == (1, 20, 64, 96)
    with pytest.raises(ValueError, match="divisible by 8"):
        cs(torch.rand(1, 3, 60, 96))


@pytest.mark.parametrize("name", sorted(FILES))
def test_released_weights_load_strictly(shared, name):
    sd = torch.load(_weights(shared, FILES[name]), map_location="cpu", weights_only=True)
    net = build_espnet(name)
    net.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key or shape
    assert set(net.state_dict()) - set(sd) <= {k for k in net.state_dict() if k.endswith("num_batches_tracked")}


def test_encoder_file_loads_strictly(shared):
    sd = torch.load(_weights(shared, "encoder_espnet_p_2_q_8.pth"), map_location="cpu", weights_only=True)
    ESPNetEncoder(20, p=2, q=8).load_state_dict(sd, strict=True)


def _cityscapes_pair(data, i):
    from semsynth.data import load_image

    photos = sorted((data / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))
    p = photos[i]
    lab = str(p).replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit", "_gtFine_labelIds")
    return load_image(p)[None], torch.from_numpy(get_space("cityscapes").read(lab))


def _score(seg, x, gt, size):
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    g = F.interpolate(gt[None, None].float(), size=size, mode="nearest")[0, 0].long()
    pred = seg.segment(x)
    conf = confusion_matrix(pred[0], g, seg.space.num_classes).numpy()
    return segmentation_scores(conf, seg.space.names), g


def test_cityscapes_one_image_reduced_size(data):
    """One real photo at 512x256 (a quarter of the pixels of the nominal 1024x512).

    Threshold: at 1024x512 the 8 pairs give 95.3 % pixel accuracy (slow test); at 512x256 the same
    8 images give 86-93 % (objects are half the size the network was trained on). 0.85 fails any
    broken layer, a wrong channel order or normalisation (those drop below 60 %), and it must beat
    the all-majority-class baseline by a wide margin."""
    _weights(data.parent, FILES["espnet-cityscapes"])
    seg = ESPNetSegmenter("espnet-cityscapes", input_size=(256, 512))
    x, gt = _cityscapes_pair(data, 7)
    s, g = _score(seg, x, gt, (256, 512))
    labelled = g[g != 19]
    majority = torch.bincount(labelled).max().item() / labelled.numel()
    assert s["pixel_accuracy"] > 0.85, s["pixel_accuracy"]
    assert s["pixel_accuracy"] > majority + 0.3
    assert s["miou"] > 0.5  # measured 0.70 on this image


def test_camvid_one_val_image(data):
    """One CamVid val photo at the native 480x360: measured 94.2 % (all of val: 92.4 %)."""
    from semsynth.data import load_image

    _weights(data.parent, FILES["espnet-camvid"])
    seg = ESPNetSegmenter("espnet-camvid")
    p = sorted((data / "camvid" / "val").glob("*.jpg"))[0]
    gt = torch.from_numpy(get_space("camvid").read(data / "camvid" / "valannot" / (p.stem + ".png")))
    s, _ = _score(seg, load_image(p)[None], gt, (360, 480))
    assert s["pixel_accuracy"] > 0.90, s["pixel_accuracy"]


@pytest.mark.slow
def test_cityscapes_eight_pairs_reproduce_readme(data):
    """README: 58.1 % mIoU / 95.5 % pixel accuracy on the 8 pairs at 1024x512. Measured here:
    58.2 % mIoU (classes present in the labels) / 95.3 % (torch bilinear resize = cv2's)."""
    _weights(data.parent, FILES["espnet-cityscapes"])
    seg = ESPNetSegmenter("espnet-cityscapes")
    conf = np.zeros((20, 20), dtype=np.int64)
    for i in range(8):
        x, gt = _cityscapes_pair(data, i)
        x = F.interpolate(x, size=(512, 1024), mode="bilinear", align_corners=False)
        g = F.interpolate(gt[None, None].float(), size=(512, 1024), mode="nearest")[0, 0].long()
        conf += confusion_matrix(seg.segment(x)[0], g, 19).numpy()
    s = segmentation_scores(conf, seg.space.names)
    assert abs(s["miou"] - 0.581) < 0.01, s["miou"]
    assert abs(s["pixel_accuracy"] - 0.955) < 0.005, s["pixel_accuracy"]


@pytest.mark.slow
def test_camvid_val(data):
    """CamVid val (101 images, 480x360): measured 69.9 % mIoU / 92.4 % pixel accuracy (the README
    quotes 55.6 % mIoU on the test split, which is not shipped)."""
    from semsynth.data import load_image

    _weights(data.parent, FILES["espnet-camvid"])
    seg = ESPNetSegmenter("espnet-camvid")
    space = seg.space
    conf = np.zeros((12, 12), dtype=np.int64)
    photos = sorted((data / "camvid" / "val").glob("*.jpg"))
    assert len(photos) == 101
    for i in range(0, len(photos), 8):
        xs = torch.cat([load_image(p)[None] for p in photos[i : i + 8]])
        gts = torch.stack(
            [torch.from_numpy(space.read(data / "camvid" / "valannot" / (p.stem + ".png"))) for p in photos[i : i + 8]]
        )
        conf += confusion_matrix(seg.segment(xs), gts, 11).numpy()
    s = segmentation_scores(conf, space.names)
    assert abs(s["miou"] - 0.699) < 0.01, s["miou"]
    assert abs(s["pixel_accuracy"] - 0.924) < 0.005, s["pixel_accuracy"]


def test_presets_match_label_spaces():
    for name, cfg in ESPNET_PRESETS.items():
        assert cfg["classes"] == get_space(cfg["space"]).num_classes + 1, name
        assert isinstance(build_espnet(name), ESPNet)
