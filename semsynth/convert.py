"""Reading TensorFlow (TF1 "V2" format) checkpoints without TensorFlow, and converting the released
CRN models.

A checkpoint `model.ckpt` is a *tensor bundle*: `model.ckpt.index`, an SSTable (the LevelDB table
format) mapping each variable name to a `BundleEntryProto` (dtype, shape, shard, offset, size,
masked CRC32C), and `model.ckpt.data-SSSSS-of-NNNNN` files holding the raw little-endian tensor
bytes. Everything here is decoded by hand (varints, protobuf fields, block trailers, footer), so
neither TensorFlow nor protobuf is needed:

    index = read_tf_index("result_256p/model.ckpt.index")  # name -> TensorEntry(dtype, shape, offset, size)
    arrays = read_tf_checkpoint("result_256p/model.ckpt")     # name -> np.ndarray (needs the .data file)
    model = load_official_crn("result_256p/model.ckpt", "crn-256p")

SSTable layout (all integers little endian): data blocks, a metaindex block, an index block, then a
48-byte footer = BlockHandle(metaindex) + BlockHandle(index) (each two varints: offset, size),
zero padding to 40 bytes, and the magic number 0xdb4775248b80fb57. Every block is followed by a
5-byte trailer: a compression type byte (0 = none, 1 = snappy) and the masked CRC32C of the block
plus that type byte. A block is a run of prefix-compressed entries (varint shared, varint
non_shared, varint value_length, key suffix, value), then uint32 restart offsets and their count.
The index block's values are the BlockHandles of the data blocks. The entry with the empty key is
the bundle header (`BundleHeaderProto`: num_shards, endianness).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import CheckpointError, MissingFileError, UnknownNameError

__all__ = [
    "TFCheckpointError",
    "TensorEntry",
    "BundleEntry",
    "read_tf_index",
    "read_tf_entries",
    "read_tf_header",
    "read_tf_checkpoint",
    "is_optimizer_variable",
    "crc32c",
    "official_crn_mapping",
    "infer_crn_config",
    "load_official_crn",
    "convert_official_crn",
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_MASK_DELTA = 0xA282EAD8


class TFCheckpointError(CheckpointError):
    """A TensorFlow checkpoint that cannot be read (or does not fit the requested model)."""


class TensorEntry(NamedTuple):
    """Where one variable lives: numpy dtype name, shape, byte offset and size in its data shard."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int


class BundleEntry(NamedTuple):
    """The full `BundleEntryProto`: TensorEntry's fields plus the data shard, the stored (masked)
    CRC32C of the bytes (None when absent) and whether the variable is partitioned into slices."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int
    shard_id: int = 0
    crc32c: int | None = None
    sliced: bool = False


# TF DataType enum -> numpy dtype name (types.proto). bfloat16 is widened to float32 on read.
_TF_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}

# Slot/bookkeeping variables of TF optimizers and training loops: never model parameters.
_OPTIMIZER_SLOTS = {
    "Adam",
    "Adam_1",
    "Momentum",
    "RMSProp",
    "RMSProp_1",
    "Adagrad",
    "Ftrl",
    "Ftrl_1",
    "ExponentialMovingAverage",
}
_BOOKKEEPING = ("beta1_power", "beta2_power", "global_step")


def is_optimizer_variable(name: str) -> bool:
    """True for Adam/momentum slots (`.../Adam`, `.../Adam_1`), Adam's `beta1_power`/`beta2_power`
    (also `beta1_power_1`, ...) and step counters — variables a converter skips."""
    last = name.rsplit("/", 1)[-1]
    if "/" in name and last in _OPTIMIZER_SLOTS:
        return True
    base = last.rstrip("0123456789").rstrip("_") if last[-1:].isdigit() else last
    return base in _BOOKKEEPING


# ---------------------------------------------------------------------- varints and protobuf


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; returns (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError("varint longer than 10 bytes")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message as (field number, wire type, value) triples (varint/fixed -> int,
    length-delimited -> bytes). Groups (wire types 3/4) are not used by these messages."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos : pos + n]), pos + n
            if pos > len(buf):
                raise TFCheckpointError("truncated length-delimited protobuf field")
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire} (field {field})")
        out.append((field, wire, value))
    return out


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for field, _, value in _proto_fields(buf):
        if field == 2:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for f, _, v in _proto_fields(value):
                if f == 1:
                    size = _signed64(v)
            dims.append(size)
        elif field == 3 and value:
            raise TFCheckpointError("tensor with unknown rank in checkpoint")
    return tuple(dims)


def _parse_entry(buf: bytes) -> BundleEntry:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for field, _, value in _proto_fields(buf):
        if field == 1:
            dtype = value
        elif field == 2:
            shape = _parse_shape(value)
        elif field == 3:
            shard = value
        elif field == 4:
            offset = value
        elif field == 5:
            size = value
        elif field == 6:
            crc = value
        elif field == 7:
            sliced = True
    return BundleEntry(_TF_DTYPES.get(dtype, f"tf_dtype_{dtype}"), shape, offset, size, shard, crc, sliced)


# ---------------------------------------------------------------------- CRC32C (Castagnoli)

_CRC_POLY = 0x82F63B78


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_CRC_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_table()


@functools.lru_cache(maxsize=64)
def _pow2_tables(j: int) -> np.ndarray:
    """(4, 256) tables of the linear map 'feed 2^j zero bytes into the CRC register':
    op(x) = T[0][x & 255] ^ T[1][(x >> 8) & 255] ^ T[2][(x >> 16) & 255] ^ T[3][x >> 24]."""
    if j == 0:  # one zero byte: x -> TABLE[x & 255] ^ (x >> 8), with the byte position k
        v = np.arange(256, dtype=np.uint32)
        return np.stack([_TABLE[v] if k == 0 else (v << np.uint32(8 * k)) >> np.uint32(8) for k in range(4)]).astype(
            np.uint32
        )
    prev = _pow2_tables(j - 1)
    return _apply_tables(prev, prev)  # op_{2^j}(x) = op_{2^(j-1)}(op_{2^(j-1)}(x)), per table entry


def _shift(x: np.ndarray, nbytes: int) -> np.ndarray:
    """Feed `nbytes` zero bytes into each CRC register in `x` (O(log n) table applications)."""
    j = 0
    while nbytes:
        if nbytes & 1:
            x = _apply_tables(_pow2_tables(j), x)
        nbytes >>= 1
        j += 1
    return x


def _apply_tables(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    return tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF] ^ tables[2][(x >> 16) & 0xFF] ^ tables[3][(x >> 24) & 0xFF]


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli) of `data`, as used by TF checkpoints and LevelDB tables.

    Vectorised: the data is cut into up to 2^16 equal lanes whose (zero-initialised) CRCs advance
    in lockstep one byte column at a time, then the lane CRCs are combined pairwise with the linear
    'shift by L zero bytes' operator; the 0xFFFFFFFF initial value is added last (CRC linearity)."""
    a = (
        np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        if not isinstance(data, np.ndarray)
        else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    )
    n = a.size
    if n == 0:
        return 0
    lanes = 1
    while lanes < 65536 and lanes * 64 < n:
        lanes *= 2
    length = -(-n // lanes)
    padded = np.zeros(lanes * length, dtype=np.uint8)
    padded[lanes * length - n :] = a  # leading zeros leave a zero register unchanged
    cols = np.ascontiguousarray(padded.reshape(lanes, length).T)  # (length, lanes) byte columns
    state = np.zeros(lanes, dtype=np.uint32)
    for row in cols:
        state = _TABLE[(state ^ row) & 0xFF] ^ (state >> 8)
    span = length
    while state.size > 1:  # crc(A || B) = shift_|B|(crc(A)) ^ crc(B)
        shifted = _shift(state[0::2], span)
        state = shifted ^ state[1::2]
        span *= 2
    init = int(_shift(np.array([0xFFFFFFFF], np.uint32), n)[0])
    return (int(state[0]) ^ init) ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------- SSTable


def _read_block(buf: bytes, offset: int, size: int, source: str, verify: bool) -> bytes:
    end = offset + size
    if end + 5 > len(buf):
        raise TFCheckpointError(
            f"{source}: block at {offset} (+{size}) runs past the end of the file "
            f"({len(buf)} bytes); the file is truncated"
        )
    kind = buf[end]
    if verify:
        stored = _unmask(struct.unpack_from("<I", buf, end + 1)[0])
        if crc32c(buf[offset : end + 1]) != stored:
            raise TFCheckpointError(f"{source}: CRC mismatch in the block at offset {offset}; the file is corrupt")
    if kind == 0:
        return bytes(buf[offset:end])
    names = {1: "snappy", 2: "zlib", 3: "lz4", 4: "lz4hc", 5: "zstd"}
    raise TFCheckpointError(
        f"{source}: block at offset {offset} is {names.get(kind, f'type-{kind}')}-compressed; only "
        f"uncompressed tables (type 0, what TensorFlow writes for checkpoints) are supported"
    )


def _block_entries(block: bytes, source: str) -> Iterable[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TFCheckpointError(f"{source}: block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFCheckpointError(f"{source}: bad restart count {num_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise TFCheckpointError(f"{source}: corrupt block entry at {pos}")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + vlen]
        pos += vlen


def _table_items(path: Path, verify: bool = True) -> list[tuple[bytes, bytes]]:
    buf = path.read_bytes()
    source = str(path)
    if len(buf) < FOOTER_SIZE:
        raise TFCheckpointError(f"{source}: {len(buf)} bytes is too short for a TensorFlow checkpoint index")
    magic = struct.unpack_from("<Q", buf, len(buf) - 8)[0]
    if magic != TABLE_MAGIC:
        raise TFCheckpointError(
            f"{source}: not a TensorFlow checkpoint index (bad table magic "
            f"{magic:#018x}); pass the '.index' file or the checkpoint prefix"
        )
    footer = buf[len(buf) - FOOTER_SIZE :]
    _, p = _varint(footer, 0)  # metaindex offset
    _, p = _varint(footer, p)  # metaindex size
    idx_off, p = _varint(footer, p)
    idx_size, p = _varint(footer, p)
    items = []
    for _, handle in _block_entries(_read_block(buf, idx_off, idx_size, source, verify), source):
        off, q = _varint(handle, 0)
        size, _ = _varint(handle, q)
        items.extend(_block_entries(_read_block(buf, off, size, source, verify), source))
    return items


def _index_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix != ".index" and not p.is_file():
        p = p.with_name(p.name + ".index")
    if not p.is_file():
        raise MissingFileError(f"{p}: TensorFlow checkpoint index not found")
    return p


def _prefix(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix == ".index" or ".data-" in p.name:
        return p.with_name(p.name.split(".index")[0].split(".data-")[0])
    return p


def read_tf_header(path: str | Path) -> dict:
    """The bundle header: {"num_shards", "endianness" ("little"/"big"), "producer"}."""
    for key, value in _table_items(_index_path(path)):
        if key == b"":
            hdr = {"num_shards": 1, "endianness": "little", "producer": 0}
            for f, _, v in _proto_fields(value):
                if f == 1:
                    hdr["num_shards"] = v
                elif f == 2:
                    hdr["endianness"] = "big" if v == 1 else "little"
                elif f == 3:
                    hdr["producer"] = next((x for ff, _, x in _proto_fields(v) if ff == 1), 0)
            return hdr
    return {"num_shards": 1, "endianness": "little", "producer": 0}


def read_tf_entries(path: str | Path, verify: bool = True) -> dict[str, BundleEntry]:
    """Every variable's full bundle entry (shard, CRC, ...), in name order; see `read_tf_index`."""
    out = {}
    for key, value in _table_items(_index_path(path), verify):
        if key == b"":
            continue  # the BundleHeaderProto
        out[key.decode("utf-8")] = _parse_entry(value)
    return out


def read_tf_index(path: str | Path, verify: bool = True) -> dict[str, TensorEntry]:
    """Variables of a TF checkpoint: name -> TensorEntry(dtype, shape, offset, size), in name
    order. `path` is the `.index` file or the checkpoint prefix; the blocks' CRCs are checked
    when `verify`."""
    return {k: TensorEntry(*e[:4]) for k, e in read_tf_entries(path, verify).items()}


def read_tf_checkpoint(
    prefix: str | Path,
    names: Iterable[str] | Callable[[str], bool] | None = None,
    skip_optimizer: bool = False,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """Read tensors of a TF checkpoint into numpy arrays: name -> array (in the stored shape, e.g.
    HWIO conv kernels). `names` selects variables (a collection or a predicate); `skip_optimizer`
    drops Adam slots and counters. Each tensor's CRC32C is checked when `verify`."""
    prefix = _prefix(prefix)
    index = read_tf_entries(prefix, verify=verify)
    header = read_tf_header(prefix)
    if names is None:
        wanted = list(index)
    elif callable(names):
        wanted = [n for n in index if names(n)]
    else:
        wanted = list(names)
        missing = [n for n in wanted if n not in index]
        if missing:
            raise UnknownNameError(
                f"{prefix}: checkpoint has no variable(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
    if skip_optimizer:
        wanted = [n for n in wanted if not is_optimizer_variable(n)]
    order = ">" if header["endianness"] == "big" else "<"
    files: dict[int, object] = {}
    out = {}
    try:
        for name in sorted(wanted, key=lambda n: (index[n].shard_id, index[n].offset)):
            e = index[name]
            if e.sliced:
                raise TFCheckpointError(
                    f"{prefix}: variable {name!r} is partitioned into slices; partitioned variables are not supported"
                )
            if e.dtype in ("string",) or e.dtype.startswith("tf_dtype_"):
                raise TFCheckpointError(f"{prefix}: variable {name!r} has unsupported dtype {e.dtype}")
            if e.shard_id not in files:
                data = prefix.with_name(f"{prefix.name}.data-{e.shard_id:05d}-of-{header['num_shards']:05d}")
                if not data.is_file():
                    raise MissingFileError(
                        f"{data}: checkpoint data file not found (only the index is present?); the "
                        f"released CRN models need the .data file from the authors' 'result_*' folder"
                    )
                files[e.shard_id] = open(data, "rb")
            f = files[e.shard_id]
            f.seek(e.offset)
            raw = f.read(e.size)
            if len(raw) != e.size:
                raise TFCheckpointError(
                    f"{prefix}: data for {name!r} is truncated ({len(raw)} of {e.size} bytes at offset {e.offset})"
                )
            if verify and e.crc32c is not None and crc32c(raw) != _unmask(e.crc32c):
                raise TFCheckpointError(
                    f"{prefix}: CRC mismatch for {name!r}; the data file is corrupt or does not belong to this index"
                )
            count = int(np.prod(e.shape, dtype=np.int64))
            if e.dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype=order + "u2", count=count).astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                dt = np.dtype(e.dtype).newbyteorder(order)
                if dt.itemsize * count != e.size:
                    raise TFCheckpointError(
                        f"{prefix}: {name!r} has {e.size} bytes, expected "
                        f"{dt.itemsize * count} for {e.dtype}{list(e.shape)}"
                    )
                arr = np.frombuffer(raw, dtype=dt, count=count).astype(dt.newbyteorder("="))
            out[name] = arr.reshape(e.shape)
    finally:
        for f in files.values():
            f.close()
    return out


# ---------------------------------------------------------------------- CRN


def _tf_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The TF shape of a PyTorch parameter: OIHW conv kernels are stored HWIO."""
    if len(torch_shape) == 4:
        o, i, h, w = torch_shape
        return (h, w, i, o)
    return tuple(torch_shape)


def official_crn_mapping(model, index: dict[str, TensorEntry]) -> dict[str, str]:
    """state-dict key -> TF variable, after checking that the model's parameters and the
    checkpoint's (non-optimizer) variables correspond one to one with matching shapes.
    Raises TFCheckpointError listing every missing, surplus or mis-shaped variable."""
    names = model.official_names()
    params = dict(model.state_dict())
    problems = []
    for key, tf_name in names.items():
        want = _tf_shape(tuple(params[key].shape))
        if tf_name not in index:
            problems.append(f"missing {tf_name} {list(want)} (for {key})")
        elif tuple(index[tf_name].shape) != want:
            problems.append(f"{tf_name}: checkpoint shape {list(index[tf_name].shape)}, model needs {list(want)}")
    used = set(names.values())
    extra = [n for n in index if n not in used and not is_optimizer_variable(n)]
    problems += [f"unused checkpoint variable {n} {list(index[n].shape)}" for n in extra]
    if problems:
        try:
            hint = _preset_hint(infer_crn_config(index))
        except TFCheckpointError:
            hint = "the index does not look like a CRN checkpoint"
        raise TFCheckpointError(
            f"checkpoint does not match the model ({len(problems)} problem(s)): "
            + "; ".join(problems[:6])
            + (" ..." if len(problems) > 6 else "")
            + f". Wrong --preset? {hint}"
        )
    return names


def _preset_hint(cfg: dict) -> str:
    """'The checkpoint is levels=7, k=9, ...; matching preset(s): crn-256p, crn-gta-256p'."""
    from .models import PRESETS
    from .models.crn import CRNConfig
    from .utils import config_from_dict

    want = config_from_dict(CRNConfig, {k: v for k, v in cfg.items() if k != "arch"})
    match = []
    for name, p in PRESETS.items():
        if p.get("arch") != "crn":
            continue
        c = config_from_dict(CRNConfig, {k: v for k, v in p.items() if k != "arch"})
        if (c.num_classes, c.levels, c.k, tuple(c.base), c.module_widths()) == (
            want.num_classes,
            want.levels,
            want.k,
            tuple(want.base),
            want.module_widths(),
        ):
            match.append(name)
    desc = f"the checkpoint has levels={want.levels}, k={want.k}, widths={want.module_widths()}"
    if not match:
        return desc + "; omit --preset to use it as is"
    return desc + f"; matching preset(s): {', '.join(match)}"


def infer_crn_config(index: dict[str, TensorEntry] | str | Path) -> dict:
    """A `build_model` config ({"arch": "crn", num_classes, levels, k, widths}) read off a released
    CRN index: modules g_4 ... g_<top>, their conv widths, conv1's input channels and the head's
    3k outputs."""
    if not isinstance(index, dict):
        index = read_tf_index(index)
    heights = sorted(
        {
            int(n.split("_")[1])
            for n in index
            if n.startswith("g_") and n.split("/")[0].endswith("_conv1") and not is_optimizer_variable(n)
        }
    )
    if not heights or heights[0] != 4:
        raise TFCheckpointError("index has no CRN modules g_4_conv1 ... (not a CRN checkpoint?)")
    widths = [int(index[f"g_{h}_conv1/weights"].shape[3]) for h in heights]
    head = index.get(f"g_{heights[-1]}_conv100/weights")
    if head is None:
        raise TFCheckpointError(f"index has no head g_{heights[-1]}_conv100/weights")
    in_ch = int(index["g_4_conv1/weights"].shape[2])
    return {
        "arch": "crn",
        "num_classes": in_ch - 1,
        "levels": len(heights),
        "k": int(head.shape[3]) // 3,
        "widths": widths,
    }


def load_official_crn(prefix: str | Path, preset: str | dict | None = None, verify: bool = True):
    """Build `preset` (default: the structure inferred from the index) with `build_model` and load
    the released TF weights (Adam slots and beta powers are skipped)."""
    import torch

    from .models import build_model

    prefix = _prefix(prefix)
    index = read_tf_index(prefix, verify=verify)
    with torch.device("meta"):  # check shapes before allocating (and randomly initialising) 98M weights
        model = build_model(preset if preset is not None else infer_crn_config(index))
    mapping = official_crn_mapping(model, index)
    variables = read_tf_checkpoint(prefix, names=sorted(set(mapping.values())), verify=verify)
    model = model.to_empty(device="cpu")
    model.load_official_tf(variables)  # strict: every parameter is overwritten
    return model.eval()


def convert_official_crn(
    prefix: str | Path, out: str | Path, preset: str | None = None, label_space: str = "cityscapes", verify: bool = True
) -> Path:
    """Convert a released CRN checkpoint into a semsynth checkpoint folder: returns
    `out/model.safetensors`, written by `semsynth.checkpoint.save_model` (weights, model config,
    label space, task "crn"), so `checkpoint.load_model(out)` restores the network."""
    from .checkpoint import save_model
    from .labels import get_space
    from .models import model_config

    index = read_tf_index(_prefix(prefix), verify=verify)
    cfg = model_config(preset) if preset is not None else infer_crn_config(index)
    model = load_official_crn(prefix, cfg, verify=verify)
    target = Path(out) / "model.safetensors"
    save_model(
        target,
        model,
        cfg,
        get_space(label_space),
        task="crn",
        step=0,
        extra={"converted_from": str(_prefix(prefix)), "preset": preset},
    )
    return target
