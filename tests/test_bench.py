"""`semsynth bench` and benchmarks/: exact MAC counts, rows that state the fraction of the
measured peak, and the benchmark scripts run once as smoke tests (time is never judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from semsynth.bench import bench_model, conv_peak, count_macs, network
from semsynth.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_macs_are_counted_exactly():
    cfg = {"arch": "crn", "num_classes": 5, "levels": 3, "k": 2, "widths": [8, 6, 4]}
    m = build_model(cfg).eval()
    import torch

    label = torch.zeros(1, 6, 16, 32)
    macs, _, _ = count_macs(m, label)
    expect, prev = 0, 0
    for i, w in enumerate([8, 6, 4]):
        hw = (4 * 2**i) * (8 * 2**i)
        expect += hw * 9 * (prev + 6) * w + hw * 9 * w * w
        prev = w
    expect += 16 * 32 * 4 * 3 * 2  # 1x1 head, 3k outputs
    assert macs == expect


def test_winograd_share_counts_the_convolutions_that_ran_by_winograd(monkeypatch):
    import torch

    from semsynth.models import layers

    m = build_model({"arch": "crn", "num_classes": 5, "levels": 3, "k": 2, "widths": [8, 6, 4]}).eval()
    label = torch.zeros(1, 6, 16, 32)
    assert count_macs(m, label)[2] == 0  # tiny widths: below the threshold, all direct
    monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 0)
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 0)
    macs, _, wino = count_macs(m, label)
    assert wino == macs - 16 * 32 * 4 * 3 * 2  # every 3x3 convolution; the 1x1 head is direct
    with layers.direct_convolutions():
        assert count_macs(m, label)[2] == 0


def test_bench_row_states_the_fraction_of_the_measured_peak():
    peak = conv_peak("fp32", rounds=1)
    assert peak > 0
    row = bench_model("crn-tiny", (32, 64), repeats=1, precision="fp32", peak=peak)
    assert row["precision"] == "fp32" and row["peak_gflops"] == peak
    assert abs(row["gflops"] - 2 * row["gmacs"] / row["seconds"]) < 1e-9 * row["gflops"]
    assert abs(row["of_peak"] - row["gflops"] / peak) < 1e-12 and row["memory_mb"] > 0
    assert row["params"] == 112_681 and 0 <= row["winograd"] <= 1


def test_networks_of_every_kind_build_with_their_inputs():
    for name, n_inputs in (("crn-tiny", 1), ("sims-synthesis-256p", 3), ("espnet-cityscapes", 1)):
        model, inputs, size = network(name, (32, 64))
        assert len(inputs) == n_inputs and size == (32, 64)


def test_cli_bench_json(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "semsynth.cli",
            "bench",
            "crn-tiny",
            "--size",
            "32",
            "64",
            "--repeats",
            "1",
            "--precision",
            "fp32",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["model"] for x in rows] == ["crn-tiny"] and rows[0]["of_peak"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "semsynth.cli", "bench", "crn-tiny", "--repeats", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--repeats" in bad.stderr and "Traceback" not in bad.stderr


def test_crn_forward_benchmark_smoke():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "crn_forward.py"), "crn-tiny", "--rounds", "1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "of peak" in r.stdout and "reference" in r.stdout and "fast" in r.stdout
    diff = float(r.stdout.split("max |fast - reference| = ")[1].split()[0])
    assert diff < 1e-4
