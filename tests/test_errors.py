"""One error path: expected failures print one line naming the file, key or value and exit 2
(tracebacks only with --debug); outputs are checked before work starts; interrupted outputs
resume; nothing is overwritten without --overwrite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from semsynth import checkpoint as ckpt
from semsynth.cli import main as cli
from semsynth.errors import DeviceError, OutputError, SemsynthError
from semsynth.labels import get_space
from semsynth.layouts import street_layout
from semsynth.models import build_model
from semsynth.utils import TMP_MARK, atomic_path, check_writable_dir, pick_device


@pytest.fixture
def tiny_model(tmp_path):
    """A crn-tiny checkpoint (random weights; 64x128, k = 3)."""
    out = tmp_path / "model"
    ckpt.save_model(
        out / "model.safetensors",
        build_model("crn-tiny"),
        {"arch": "crn", "levels": 5, "k": 3, "width_mult": 1 / 32},
        get_space("cityscapes"),
        "crn",
    )
    return out


@pytest.fixture
def layouts(tmp_path, png):
    return [
        png(tmp_path / "lab" / f"s{i}_trainIds.png", street_layout(i, (64, 128)).astype(np.uint8)) for i in range(3)
    ]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def test_expected_failures_are_one_line_exit_2(tiny_model, layouts, tmp_path, capsys):
    lab = str(layouts[0])
    junk = tmp_path / "random.safetensors"
    junk.write_bytes(os.urandom(5000))
    (tmp_path / "afile").write_text("")
    (tmp_path / "state.pt").write_bytes(b"\x80\x02}q\x00.")
    cases = [
        (["synthesize", str(junk), lab, "-o", str(tmp_path / "o")], ["random.safetensors", "not a .safetensors"]),
        (["synthesize", str(tmp_path / "state.pt"), lab, "-o", str(tmp_path / "o")], ["state.pt"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "afile" / "sub")], ["afile is a file"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--size", "0", "0"], ["--size", "0 0"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--size", "-128", "256"], ["--size"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--size", "100000", "100000"], ["8192"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--size", "60", "100"], ["divisible by 16"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--device", "banana"], ["'banana'"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--k", "-1"], ["--k", "-1"]),
        (["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--batch-size", "0"], ["--batch-size"]),
        (["synthesize", str(tiny_model), str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")], ["nope.png"]),
        (["train", "crn-tiny", "--out", str(tmp_path / "t"), "--steps", "-5"], ["steps", "-5"]),
        (["train", "crn-tiny", "--out", str(tmp_path / "t"), "--set", "optim.lr=[1,2]"], ["optim.lr"]),
        (["train", "crn-tiny", "--out", str(tmp_path / "t"), "--set", "save_every=0"], ["save_every"]),
        (["train", "crn-tiny", "--out", str(tmp_path / "afile"), "--data", str(tmp_path)], ["afile"]),
        (["train", "no-such-preset", "--out", str(tmp_path / "t")], ["no-such-preset"]),
        (["layouts", "-o", str(tmp_path / "afile" / "x")], ["afile is a file"]),
        (["export", str(junk), "-o", str(tmp_path / "m.onnx")], ["random.safetensors"]),
        # a SIMS-only option on a CRN checkpoint is refused, naming the checkpoint
        (
            ["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--bank", str(tmp_path)],
            [str(tiny_model), "'crn' checkpoint", "bank"],
        ),
        (
            ["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--save-intermediates"],
            ["--save-intermediates"],
        ),
        # --precision: one setting on every command that runs networks, a bad value one line
        (
            ["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--precision", "fp16"],
            ["precision 'fp16'", "auto, fp32, bf16"],
        ),
        (["demo", "-o", str(tmp_path / "o"), "--precision", "fp16"], ["precision 'fp16'"]),
        (
            ["evaluate", str(tmp_path), "--labels", str(tmp_path), "-o", str(tmp_path / "o"), "--precision", "x"],
            ["precision 'x'"],
        ),
        (["serve", "--model", str(tiny_model), "--precision", "half"], ["precision 'half'"]),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (
                ["synthesize", str(tiny_model), lab, "-o", str(tmp_path / "o"), "--device", "cuda"],
                ["CUDA is not available"],
            )
        )
    for argv, needles in cases:
        assert cli(argv) == 2, argv
        _one_line_error(capsys, *needles)
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()  # nothing started


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(SemsynthError):
        cli(["--debug", "train", "crn-tiny", "--out", str(tmp_path / "t"), "--steps", "-5"])
    with pytest.raises(SemsynthError):  # anywhere on the line
        cli(["train", "crn-tiny", "--out", str(tmp_path / "t"), "--steps", "-5", "--debug"])


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="unknown device 'banana'"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda:1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_refused_before_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable_dir(ro / "sub")
    finally:
        ro.chmod(0o755)


def test_check_writable_dir_creates_nothing(tmp_path):
    check_writable_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []


def test_skip_existing_finishes_an_interrupted_run(tiny_model, layouts, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli(["synthesize", str(tiny_model), *map(str, layouts), "-o", str(out), "--k", "2", "--batch-size", "1"]) == 0
    )
    full = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(full) == 6
    # an interrupted run: one layout's outputs missing, another's half written, a stale temp file
    for name in ("s1_trainIds_k0.png", "s1_trainIds_k1.png", "s2_trainIds_k1.png"):
        (out / name).unlink()
    stale = out / f".s2_trainIds_k1.png.abc123{TMP_MARK}.png"
    stale.write_bytes(b"half")
    capsys.readouterr()
    assert cli(["synthesize", str(tiny_model), *map(str, layouts), "-o", str(out), "--k", "2"]) == 2
    _one_line_error(capsys, "already exist", "--skip-existing")
    assert (
        cli(
            [
                "synthesize",
                str(tiny_model),
                *map(str, layouts),
                "-o",
                str(out),
                "--k",
                "2",
                "--batch-size",
                "1",
                "--skip-existing",
            ]
        )
        == 0
    )
    assert "wrote 4 image(s)" in capsys.readouterr().out  # s1 (2) and s2 (2), not s0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == full  # same bytes; temp file gone


def test_atomic_path_leaves_nothing_on_failure_and_cleans_stale_temps(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / f".x.png.zzz{TMP_MARK}.png").write_bytes(b"left by kill -9")
    (tmp_path / ".other.png.keep").write_bytes(b"not ours")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.keep", "x.png"]


def test_layouts_refuse_to_overwrite(tmp_path, capsys):
    out = tmp_path / "lay"
    assert cli(["layouts", "-n", "2", "--size", "32", "64", "-o", str(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli(["layouts", "-n", "3", "--size", "32", "64", "-o", str(out)]) == 2
    _one_line_error(capsys, "already exist", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    assert cli(["layouts", "-n", "3", "--size", "32", "64", "-o", str(out), "--overwrite"]) == 0
    assert len(list(out.iterdir())) == 3


def test_sims_canvas_refuses_to_overwrite(shared, tmp_path, capsys):
    from semsynth.data import open_dataset
    from semsynth.sims.bank import build_bank

    cs = shared / "data" / "cityscapes"
    build_bank(open_dataset(cs, space="cityscapes"), tmp_path / "bank", size=(32, 64), rgb_scale=1, progress=False)
    lab = next(Path(cs, "gtFine", "train").rglob("*_labelIds.png"))
    args = ["sims", "canvas", "--bank", str(tmp_path / "bank"), str(lab), "-o", str(tmp_path / "cv")]
    assert cli(args) == 0
    first = (tmp_path / "cv" / f"{lab.stem}_canvas.png").read_bytes()
    assert cli(args) == 2
    _one_line_error(capsys, "already exist", "--overwrite")
    assert cli(args + ["--overwrite"]) == 0
    assert (tmp_path / "cv" / f"{lab.stem}_canvas.png").read_bytes() == first


def test_a_closed_output_pipe_stops_quietly():
    """`semsynth info | head -1`: when the reader leaves, no error line and no traceback."""
    import subprocess
    import sys

    p = subprocess.Popen(
        [sys.executable, "-m", "semsynth.cli", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    p.stdout.close()  # no reader: the first write fails with EPIPE
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == ""
