"""The validated training config: every preset passes, typos and wrong types are refused with the
key named, --set accumulates, task-specific keys stay with their task, defaults are filled."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from semsynth.cli import main as cli
from semsynth.config import (
    CONFIG_DIR,
    SCHEMA,
    Float,
    Key,
    describe,
    load_config,
    parse_overrides,
    register_keys,
    validate,
)
from semsynth.errors import ConfigError

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_and_keeps_its_values(preset):
    raw = yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text())
    cfg = load_config(preset)
    assert cfg["preset"] == preset
    for key, value in raw.items():  # nothing the file says is changed or dropped
        if not isinstance(value, dict):
            assert cfg[key] == value or (isinstance(value, int) and cfg[key] == float(value)), key
    assert validate(cfg) == cfg  # idempotent: a saved config.yaml validates to itself


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("optim.lrr=1", "unknown config key optim.lrr (did you mean optim.lr?)"),
        ("data.sise=[64,128]", "unknown config key data.sise (did you mean data.size?)"),
        ("nonsense=1", "unknown config key nonsense"),
        ("amp=banana", "config key amp must be null or one of bf16, fp16, got 'banana'"),
        ("optim.batch_size=2.5", "config key optim.batch_size must be an integer, got 2.5"),
        ("save_every=0", "config key save_every must be at least 1, got 0"),
        ("steps=-5", "config key steps must be null or integer >= 1, got -5"),
        ("optim.lr=[1,2]", "config key optim.lr must be a number, got [1, 2]"),
        ("data.size=[0,128]", "config key data.size must be null or [integer in [1, 8192]"),
        ("data.size=[64]", "config key data.size"),
        ("optim.lr.x=1", "optim.lr is a value"),
        (
            "canvas.elision_band=0.1",
            "config key canvas is read by task(s) sims-synthesis, not by this config's task 'crn'",
        ),
        (
            "loss.adversarial={widht: 3}",
            "unknown config key loss.adversarial.widht (did you mean loss.adversarial.width?)",
        ),
        ("data.flip=yes please", "config key data.flip must be true or false"),
    ],
)
def test_bad_overrides_name_the_key(override, phrase):
    with pytest.raises(ConfigError) as e:
        load_config("crn-tiny", parse_overrides([override]))
    assert phrase in str(e.value)
    assert str(e.value).startswith("command line: ")


def test_file_errors_name_the_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("task: crn\nmodel: crn-tiny\noptim: {lr: 1e-3, momentum: 0.9}\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown config key optim.momentum"):
        load_config(f)
    f.write_text("task: crn\nmodel: crn-tiny\n")
    cfg = load_config(f)  # defaults filled; a YAML '1e-3' string is read as the number it means
    assert cfg["optim"]["lr"] == 1e-4 and cfg["save_every"] == 1000 and cfg["amp"] is None
    assert load_config(f, {"optim.lr": "1e-3"})["optim"]["lr"] == 1e-3


def test_task_specific_keys_are_filled_only_for_their_task():
    crn, syn = load_config("crn-tiny"), load_config("sims-tiny")
    assert "canvas" not in crn and "jitter" not in crn and "slots" not in crn
    assert syn["canvas"]["elision_band"] == 0.05 and "adversarial" not in syn["loss"]
    assert load_config("sims-transform")["jitter"]["rotation_deg"] == 0.0  # the original applies none


def test_set_accumulates_and_flags_win(tmp_path, capsys):
    args = [
        "train",
        "crn-tiny",
        "--out",
        str(tmp_path / "r"),
        "--set",
        "optim.lr=0.005",
        "--set",
        "seed=7",
        "data.size=[32,64]",
        "--save-every",
        "3",
        "--label-encoding",
        "trainId",
        "--print-config",
    ]
    assert cli(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.005 and cfg["seed"] == 7 and cfg["data"]["size"] == [32, 64]
    assert cfg["save_every"] == 3 and cfg["data"]["label_encoding"] == "trainId"
    assert not (tmp_path / "r").exists()  # --print-config writes nothing


def test_cli_refuses_a_typo_in_one_line(tmp_path, capsys):
    assert cli(["train", "crn-tiny", "--out", str(tmp_path / "r"), "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.lrr" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_progressive_presets_refuse_without_their_previous_stage(tmp_path, capsys):
    for preset, prev in (("crn-512p", "crn-256p"), ("crn-1024p", "crn-512p"), ("sims-512p", "sims-256p")):
        assert cli(["train", preset, "--data", str(tmp_path), "--out", str(tmp_path / preset)]) == 2
        err = capsys.readouterr().err
        assert f"{preset} fine-tunes {prev}" in err and f"semsynth train {prev} --data DATA" in err
        assert f"--init-from runs/{prev}" in err


def test_official_presets_train_in_fp32():
    for preset in (
        "crn-256p",
        "crn-512p",
        "crn-1024p",
        "crn-gta-256p",
        "sims-256p",
        "sims-512p",
        "sims-1024p",
        "sims-transform",
        "sims-order",
    ):
        assert load_config(preset)["amp"] is None, preset
    assert load_config("crn-512p")["data"]["vivid"] and load_config("crn-1024p")["data"]["vivid"]
    assert not load_config("crn-256p")["data"]["vivid"]  # demo_256p.py trains on plain photos


def test_register_keys_adds_one_line_keys():
    n = len(SCHEMA)
    try:
        register_keys(Key("my_plugin_weight", Float(0), 0.5, "a plug-in's key"))
        assert load_config("crn-tiny")["my_plugin_weight"] == 0.5
        with pytest.raises(ConfigError, match="declared twice"):
            register_keys(Key("optim.lr", Float(), 1.0))
    finally:
        del SCHEMA[n:]
    assert "| `optim.lr` | number > 0 | `0.0001` |" in describe()


def test_saved_run_config_is_the_validated_one(tiny_data, tmp_path):
    from conftest import tiny_cfg

    from semsynth.train import train

    train(tiny_cfg(tiny_data, steps=1), tmp_path / "run", progress=False)
    saved = yaml.safe_load(Path(tmp_path / "run" / "config.yaml").read_text())
    assert saved == validate(saved) and saved["save_every"] == 1000
