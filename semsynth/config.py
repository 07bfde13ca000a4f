"""The training config: every key declared once, with its type, range, default and meaning.

`SCHEMA` below is the one list of what a config (semsynth/configs/*.yaml, or a user's file, plus
`--set KEY=VALUE` overrides) may contain. `validate(cfg)` rejects unknown keys (suggesting the
closest known one), wrong types and out-of-range values with a `ConfigError` naming the key
path, and returns the config with every default filled in, which is what `--print-config` shows
and what a run saves as config.yaml.

**Adding a key is one line** in `SCHEMA`: ``Key("section.name", Type(...), default, "what it does")``
(add ``tasks=(...)`` when only some tasks read it). A section (a mapping of keys) is implied by
its keys' dotted paths; `Section(...)` declares one that may be null or is absent by default.
Plug-in tasks add their keys with `register_keys`.

Keys whose default depends on something else (the loss preset's layers, a model's own
architecture options) are declared with `ABSENT`: checked when given, not filled in.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import MAX_SIDE
from .errors import ConfigError, MissingFileError

CONFIG_DIR = Path(__file__).parent / "configs"
ABSENT = object()  # "no default": the consumer decides (documented per key)


# --------------------------------------------------------------------------- value types


class Type:
    """Checks one value; `check` returns it normalised (e.g. int -> float) or raises ValueError
    with a phrase completing "must be ..."."""

    nullable = False

    def check(self, v):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Int(Type):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def check(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {v!r}")
        if self.min is not None and v < self.min:
            raise ValueError(f"must be at least {self.min}, got {v}")
        if self.max is not None and v > self.max:
            raise ValueError(f"must be at most {self.max}, got {v}")
        return v

    def describe(self):
        return "integer" + _range(self.min, self.max)


class Float(Type):
    """A number. Strings such as '1e-3' are accepted: YAML 1.1 reads them as text."""

    def __init__(self, min: float | None = None, max: float | None = None, positive: bool = False):
        self.min, self.max, self.positive = min, max, positive

    def check(self, v):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"must be a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        if self.positive and v <= 0:
            raise ValueError(f"must be greater than 0, got {v:g}")
        if self.min is not None and v < self.min:
            raise ValueError(f"must be at least {self.min:g}, got {v:g}")
        if self.max is not None and v > self.max:
            raise ValueError(f"must be at most {self.max:g}, got {v:g}")
        return v

    def describe(self):
        return "number" + (" > 0" if self.positive else "") + _range(self.min, self.max)


class Bool(Type):
    def check(self, v):
        if not isinstance(v, bool):
            raise ValueError(f"must be true or false, got {v!r}")
        return v

    def describe(self):
        return "true/false"


class Str(Type):
    def __init__(self, choices: Iterable[str] | None = None):
        self.choices = tuple(choices) if choices else None

    def check(self, v):
        if not isinstance(v, str) or not v:
            raise ValueError(f"must be a non-empty string, got {v!r}")
        if self.choices and v not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {v!r}")
        return v

    def describe(self):
        return "one of " + ", ".join(self.choices) if self.choices else "string"


class Null(Type):
    """`null`, only as an alternative in `Either` (or via `Opt`)."""

    nullable = True

    def check(self, v):
        if v is not None:
            raise ValueError(f"must be null, got {v!r}")
        return v

    def describe(self):
        return "null"


class Either(Type):
    """The first alternative that accepts the value wins."""

    def __init__(self, *types: Type):
        self.types = types
        self.nullable = any(t.nullable for t in types)

    def check(self, v):
        for t in self.types:
            try:
                return t.check(v)
            except ValueError:
                pass
        raise ValueError(f"must be {self.describe()}, got {v!r}")

    def describe(self):
        return " or ".join(t.describe() for t in self.types)


def Opt(t: Type) -> Type:
    return Either(Null(), t)


class List(Type):
    """A list (YAML sequence) of `item`s, of exactly `length` entries when given."""

    def __init__(self, item: Type, length: int | None = None, min_length: int = 0):
        self.item, self.length, self.min_length = item, length, min_length

    def check(self, v):
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"must be a list of {self.describe_items()}, got {v!r}")
        if self.length is not None and len(v) != self.length:
            raise ValueError(f"must be a list of {self.length} {self.describe_items()}, got {list(v)!r}")
        if len(v) < self.min_length:
            raise ValueError(f"must have at least {self.min_length} entries, got {list(v)!r}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(self.item.check(x))
            except ValueError as e:
                raise ValueError(f"entry {i} {e}") from None
        return out

    def describe_items(self):
        return f"({self.item.describe()})"

    def describe(self):
        return (
            f"list of {self.describe_items()}"
            if self.length is None
            else f"list of {self.length} {self.describe_items()}"
        )


class Tuple(Type):
    """A fixed-length list with one type per position, e.g. [epoch, lr]."""

    def __init__(self, *items: Type):
        self.items = items

    def check(self, v):
        if not isinstance(v, (list, tuple)) or len(v) != len(self.items):
            raise ValueError(f"must be [{', '.join(t.describe() for t in self.items)}], got {v!r}")
        return [t.check(x) for t, x in zip(self.items, v)]

    def describe(self):
        return f"[{', '.join(t.describe() for t in self.items)}]"


class Mapping(Type):
    """A free-form mapping whose keys the consumer checks (e.g. a model's own options)."""

    def check(self, v):
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping, got {v!r}")
        return copy.deepcopy(v)

    def describe(self):
        return "mapping"


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


Size = Tuple(Int(1, MAX_SIDE), Int(1, MAX_SIDE))
Pair = List(Float(), length=2)


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Key:
    path: str  # dotted: "optim.lr"
    type: Type
    default: Any = ABSENT
    help: str = ""
    tasks: tuple[str, ...] | None = None  # the tasks that read it; None: every task


@dataclass(frozen=True)
class Section:
    """A mapping of keys that may be `null` (nullable) or is left out unless given (optional)."""

    path: str
    help: str = ""
    nullable: bool = False
    optional: bool = False
    tasks: tuple[str, ...] | None = None


SIMS = ("sims-synthesis", "sims-transform", "sims-order")
SYN, TRANS, ORDER = ("sims-synthesis",), ("sims-transform",), ("sims-order",)
CRN_LOSS = ("crn", "sims-synthesis")

SCHEMA: list[Key | Section] = [
    Key("task", Str(), "crn", "what a batch means and how its loss is computed (crn, sims-*)"),
    Key("preset", Str(), ABSENT, "name of the preset file (set from the file name)"),
    Key("model", Either(Str(), Mapping()), ABSENT, "model preset name or a dict of constructor options"),
    Key("model_overrides", Mapping(), ABSENT, "options merged into the model preset"),
    Key("label_space", Str(), "cityscapes", "label space name or a label-space YAML file"),
    Key("init_from", Opt(Str()), None, "checkpoint of the previous stage: tensors of equal name and shape are copied"),
    Key(
        "previous_stage",
        Opt(Str()),
        None,
        "preset this one fine-tunes; training refuses to start without init_from "
        "(or a checkpoint to resume); set null to train from scratch on purpose",
    ),
    Key("train_only", Opt(List(Str())), None, "parameter-name prefixes to train; the rest stay frozen"),
    Key(
        "data.path",
        Opt(Either(Str(), List(Str(), min_length=1))),
        None,
        "dataset folder(s); 'shared:x' = under ../shared",
    ),
    Key("data.split", Str(), "train"),
    Key("data.size", Opt(Size), None, "[H, W] of training samples (null: as stored)"),
    Key("data.flip", Bool(), False, "random horizontal flips"),
    Key("data.cache", Either(Bool(), Str(("disk",))), True, "keep decoded samples in memory (true) or on disk"),
    Key("data.workers", Int(0, 64), 0, "DataLoader worker processes"),
    Key("data.label_encoding", Opt(Str()), None, "id encoding of grey label maps (default: by file name)"),
    Key("data.exclude", Opt(List(Str())), None, "glob patterns of sample names to leave out"),
    Key(
        "data.vivid",
        Bool(),
        False,
        "tone-map photos the original's 'vivid' way (SPEC A.1.2; crn-512p/1024p)",
        tasks=("crn",),
    ),
    Key("data.draws", Int(1), ABSENT, "random canvases / jitters per image (default: the task's)", tasks=SIMS),
    Key(
        "data.disparity", Opt(Str()), None, "disparity maps: 'auto' (<data>/disparity/<split>) or a folder", tasks=ORDER
    ),
    Key("data.depth", Opt(Str()), None, "depth maps folder (smaller = closer), instead of disparity", tasks=ORDER),
    Key("loss.preset", Opt(Str()), ABSENT, "perceptual-loss preset (losses.LOSS_PRESETS)", tasks=CRN_LOSS),
    Key("loss.backbone", Str(), ABSENT, "feature network (default: the preset's)", tasks=CRN_LOSS),
    Key(
        "loss.layers",
        List(Tuple(Str(), Float(0))),
        ABSENT,
        "[[layer, weight], ...] (default: the preset's)",
        tasks=CRN_LOSS,
    ),
    Key(
        "loss.mode",
        Str(("diversity", "mean")),
        ABSENT,
        "per-class min-over-k or plain mean (default: the preset's)",
        tasks=CRN_LOSS,
    ),
    Key(
        "loss.mix",
        Pair,
        ABSENT,
        "diversity mode: weights of the min and mean terms (default [0.999, 0.001])",
        tasks=CRN_LOSS,
    ),
    Key(
        "loss.backbone_path",
        Opt(Str()),
        None,
        "weight file of the feature network (default: looked up)",
        tasks=CRN_LOSS,
    ),
    Key("loss.backbone_options", Mapping(), ABSENT, "options of the feature network", tasks=CRN_LOSS),
    Key("loss.pretrained", Bool(), ABSENT, "false: random feature network (smoke tests)", tasks=CRN_LOSS),
    Key("loss.ce_weight", Float(0), 10.0, "weight of the semantic cross-entropy term", tasks=SYN),
    Section(
        "loss.adversarial",
        "optional conditional PatchGAN (not CRN; see losses.AdversarialLoss)",
        nullable=True,
        optional=True,
        tasks=("crn",),
    ),
    Key("loss.adversarial.weight", Float(0), 1.0, tasks=("crn",)),
    Key("loss.adversarial.feature_matching", Float(0), 10.0, tasks=("crn",)),
    Key("loss.adversarial.width", Int(1), 64, tasks=("crn",)),
    Key("loss.adversarial.layers", Int(1, 8), 3, tasks=("crn",)),
    Key("loss.adversarial.scales", Int(1, 6), 2, tasks=("crn",)),
    Key("loss.adversarial.lr", Float(positive=True), 2e-4, tasks=("crn",)),
    Key("loss.adversarial.betas", List(Float(0, 1), length=2), [0.5, 0.999], tasks=("crn",)),
    Key("optim.lr", Float(positive=True), 1e-4, "Adam learning rate"),
    Key("optim.betas", List(Float(0, 1), length=2), [0.9, 0.999]),
    Key("optim.eps", Float(positive=True), 1e-8),
    Key("optim.batch_size", Int(1, 4096), 1, "samples per step (per process)"),
    Section(
        "optim.schedule",
        "per-epoch lr(e) = min(start * factor^(e-1), cap(e)) (the SIMS warm-ups)",
        nullable=True,
        optional=True,
        tasks=SIMS,
    ),
    Key("optim.schedule.start", Float(positive=True), ABSENT, tasks=SIMS),
    Key("optim.schedule.factor", Float(positive=True), 1.0, tasks=SIMS),
    Key("optim.schedule.caps", List(Tuple(Int(1), Float(positive=True))), [], "[[from_epoch, cap], ...]", tasks=SIMS),
    Key("steps", Opt(Int(1)), None, "optimisation steps (null: epochs x steps per epoch)"),
    Key("epochs", Opt(Int(1)), 1, "passes over the data when steps is null"),
    Key("seed", Int(0, 2**32 - 1), 0),
    Key("log_every", Int(1), 50, "steps between metrics.jsonl lines"),
    Key("sample_every", Int(1), 1000, "steps between sample grids"),
    Key("save_every", Int(1), 1000, "steps between checkpoints (and one at the end)"),
    Key("keep", Int(0), 3, "newest checkpoints kept (0: all); the last intact one is never deleted"),
    Key(
        "amp",
        Opt(Str(("bf16", "fp16"))),
        None,
        "autocast dtype where the device has native support "
        "(CUDA; bf16 on CPUs with AVX512-BF16/AMX); null = fp32 (the original)",
    ),
    Key("grad_checkpoint", Bool(), False, "recompute activations in backward (CUDA; saves memory)"),
    Key("channels_last", Bool(), False, "channels-last memory format for the model and batches"),
    Key("compile", Bool(), False, "torch.compile the loss (not in the official presets)"),
    Key("optim.fused", Bool(), True, "the fused Adam kernel (CPU and CUDA)"),
    Key("device", Opt(Str()), None, "cpu, cuda, cuda:N, mps (null: best available)"),
    Key("min_area", Float(0), 1000.0, "segments of at most this many pixels at 256x512 are dropped", tasks=SIMS),
    Key("slots", Int(1), 10, "segments (or pairs) per image and step", tasks=TRANS + ORDER),
    Key("canvas.colour_transfer", Float(0, 1), 0.2, "probability of MKL recolouring", tasks=SYN),
    Key("canvas.elision_band", Float(0, 1), 0.05, "band around the pasted support, fraction of H", tasks=SYN),
    Key("canvas.elision_ratio", Float(0, 1), 0.5, "share of the band set to white", tasks=SYN),
    Key(
        "canvas.pool",
        Int(1),
        100,
        "training canvases: retrieval among this many random other training images",
        tasks=SYN,
    ),
    Key("canvas.bank", Opt(Str()), None, "bank of the training images (null: built into <out>/train-bank)", tasks=SYN),
    Key("canvas.corrupt_rotation_deg", Float(0, 45), 2.5, "layout corruption rotation, +- degrees", tasks=SYN),
    Key("jitter.scale", List(Float(positive=True), length=2), [0.9, 1.1], "random scale range", tasks=TRANS),
    Key("jitter.shift", Float(0, 1), 0.0625, "shift of up to this fraction of the segment box", tasks=TRANS),
    Key(
        "jitter.rotation_deg",
        Float(0, 45),
        0.0,
        "rotation, +- degrees (the original draws one but never applies it, SPEC B.8.5)",
        tasks=TRANS,
    ),
]


def register_keys(*entries: Key | Section) -> None:
    """Declare the keys of a plug-in task (or any new key) at run time."""
    known = {e.path for e in SCHEMA}
    for e in entries:
        if e.path in known:
            raise ConfigError(f"config key {e.path} is declared twice")
        SCHEMA.append(e)


# --------------------------------------------------------------------------- validation


def _tree() -> dict:
    """Dotted declarations as a nested dict: name -> {"_decl": Key|Section|None, children...}."""
    root: dict = {}
    for e in SCHEMA:
        node = root
        for part in e.path.split("."):
            node = node.setdefault(part, {"_decl": None})
        node["_decl"] = e
    return root


def validate(cfg: dict, source: str = "config") -> dict:
    """A checked copy of `cfg` with defaults filled in; ConfigError names `source` and the key."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a config must be a mapping of keys, got {type(cfg).__name__}")
    task = cfg.get("task", "crn")
    if not isinstance(task, str):
        raise ConfigError(f"{source}: config key task must be a string, got {task!r}")
    out = _walk(copy.deepcopy(cfg), _tree(), "", task, source)
    if out.get("steps") is None and out.get("epochs") is None:
        raise ConfigError(f"{source}: set steps or epochs (both are null)")
    if "model" not in out:
        raise ConfigError(f"{source}: config key model is missing (a model preset name or a dict)")
    return out


def _applies(decl, task: str) -> bool:
    return decl is None or decl.tasks is None or task in decl.tasks


def _walk(node: dict, tree: dict, prefix: str, task: str, source: str) -> dict:
    for name in list(node):
        path = f"{prefix}{name}"
        sub = tree.get(name) if isinstance(name, str) else None
        if sub is None:
            siblings = [k for k in tree if k != "_decl"]
            close = difflib.get_close_matches(str(name), siblings, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown config key {path}{hint}; "
                f"{prefix.rstrip('.') or 'the top level'} takes: {', '.join(sorted(siblings))}"
            )
        decl = sub["_decl"]
        if not _applies(decl, task) or (
            decl is None and not any(_applies(c["_decl"], task) for k, c in sub.items() if k != "_decl" and c["_decl"])
        ):
            users = (
                sorted(set(decl.tasks))
                if decl
                else sorted(
                    {t for k, c in sub.items() if k != "_decl" for t in ((c["_decl"] and c["_decl"].tasks) or ())}
                )
            )
            raise ConfigError(
                f"{source}: config key {path} is read by task(s) {', '.join(users)}, "
                f"not by this config's task {task!r}; remove it"
            )
        value = node[name]
        if isinstance(decl, Key):
            try:
                node[name] = decl.type.check(value)
            except ValueError as e:
                raise ConfigError(f"{source}: config key {path} {e}") from None
        else:  # a section
            if value is None and isinstance(decl, Section) and decl.nullable:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: config key {path} must be a mapping of "
                    f"{', '.join(k for k in sub if k != '_decl')}, got {value!r}"
                )
            node[name] = _walk(value, sub, f"{path}.", task, source)
    # defaults of the keys (and implied sections) that apply to this task
    for name, sub in tree.items():
        if name == "_decl" or name in node:
            continue
        decl = sub["_decl"]
        if not _applies(decl, task):
            continue
        if isinstance(decl, Key):
            if decl.default is not ABSENT:
                node[name] = copy.deepcopy(decl.default)
        elif not (isinstance(decl, Section) and decl.optional):
            filled = _walk({}, sub, f"{prefix}{name}.", task, source)
            if filled:
                node[name] = filled
    return node


# --------------------------------------------------------------------------- loading


def preset_path(preset_or_path: str | Path) -> Path:
    p = Path(preset_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{preset_or_path}.yaml"
    if not p.is_file():
        names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
        raise MissingFileError(
            f"no training preset or config file {str(preset_or_path)!r}; presets: {', '.join(names)}"
        )
    return p


def apply_overrides(cfg: dict, overrides: dict, source: str = "command line") -> dict:
    """Set dotted keys ({"optim.lr": 1e-3}) in a copy of `cfg`, creating sections on the way."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"{source}: {key!r} is not a config key (empty part)")
        node = cfg
        for i, k in enumerate(parts[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(
                    f"{source}: cannot set {key}: config key {'.'.join(parts[: i + 1])} is a "
                    f"value ({nxt!r}), not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return cfg


def load_config(preset_or_path: str | Path, overrides: dict | None = None) -> dict:
    """A preset name (semsynth/configs/<name>.yaml) or a YAML path, with dotted-key overrides,
    validated: errors in the file name the file, errors in the overrides name `--set`."""
    p = preset_path(preset_or_path)
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of keys")
    cfg.setdefault("preset", p.stem)
    validate(cfg, source=str(p))
    return validate(apply_overrides(cfg, overrides or {}, "command line"), source="command line")


def parse_overrides(pairs: list[str]) -> dict:
    """["optim.lr=1e-3", "data.size=[128,256]"] -> {"optim.lr": 0.001, ...} (values parsed as YAML).
    Later pairs win over earlier ones for the same key."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} must look like key=value")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {k.strip()}: cannot read value {v!r} ({str(e).splitlines()[0]})") from None
    return out


def describe() -> str:
    """The schema as a Markdown table (key, type, default, meaning), e.g. for documentation."""
    rows = ["| key | type | default | tasks | meaning |", "|---|---|---|---|---|"]
    for e in SCHEMA:
        if isinstance(e, Key):
            d = "(preset's)" if e.default is ABSENT else yaml.safe_dump(e.default, default_flow_style=True).strip()
            d = d.removesuffix("\n...").removesuffix(" ...")
            rows.append(f"| `{e.path}` | {e.type.describe()} | `{d}` | {', '.join(e.tasks or ('all',))} | {e.help} |")
    return "\n".join(rows)
