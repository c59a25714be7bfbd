"""Engram tables read from safetensors shards, row by row, never loaded whole.

Only the JSON headers are parsed; each table tensor is memory-mapped and exactly
the rows asked for are read and dequantised. FP8 tables (ENGRAM.md §10) store E4M3
values with one E8M0 power-of-two scale per 32 values: value = e4m3 x 2^(e - 127).
Tensor names and dtypes come from the headers: a table is a 2-D tensor named
`...layers.<L>.engram...weight`, its scale the tensor of the same prefix whose name
contains `scale`.

`write_mini_shard` writes a miniature file in the same layout, for tests and benches.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import FP8_BLOCK, LayoutError, MemoryLayout

_DTYPES = {
    "F8_E4M3": np.uint8,
    "F8_E8M0": np.uint8,
    "U8": np.uint8,
    "BF16": np.uint16,
    "F16": np.float16,
    "F32": np.float32,
}
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.engram\.")  # released shards: layers.<L>; ours: blocks.<L>


def _e4m3_table() -> np.ndarray:
    """float32 value of each E4M3 byte (OCP FP8: bias 7, no infinities, S.1111.111 is NaN)."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0**-6, (1 + man / 8.0) * 2.0 ** (exp - 7.0))
    val = sign * val
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


E4M3 = _e4m3_table()
# E8M0: an unsigned power-of-two exponent with bias 127; 0xFF is NaN
E8M0 = np.where(np.arange(256) == 255, np.nan, 2.0 ** (np.arange(256) - 127.0)).astype(np.float32)


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where tensor data starts."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise LayoutError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise LayoutError(f"{path} is not a safetensors file (header of {n} bytes)")
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path} is not a readable safetensors file ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


@dataclass
class TableTensor:
    """One layer's table, memory-mapped, with its block scales when it is FP8."""

    layer: int
    name: str
    dtype: str
    values: np.ndarray  # (rows, d) memory-mapped raw storage
    scales: np.ndarray | None  # (rows, d / 32) memory-mapped E8M0 bytes

    @property
    def n_rows(self) -> int:
        return self.values.shape[0]

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Dequantised float32 rows (k, d): reads those rows' bytes only."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise LayoutError(
                f"row {int(rows.max() if rows.max() >= self.n_rows else rows.min())} outside layer "
                f"{self.layer}'s table of {self.n_rows:,} rows"
            )
        raw = self.values[rows]
        if self.dtype == "F8_E4M3":
            return dequantize_fp8(raw, self.scales[rows])
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)


@dataclass
class ShardedTable:
    """One layer's table stored as row shards (Qwen: `ngram_embedding.shard_<i>.weight`, 128 of them),
    read as one: global row r lives in the shard whose first row is the largest at or below r."""

    layer: int
    name: str
    dtype: str
    shards: list[TableTensor]  # in shard order
    first: np.ndarray  # (shards + 1,) first global row of each shard, then the total

    @property
    def n_rows(self) -> int:
        return int(self.first[-1])

    @property
    def width(self) -> int:
        return self.shards[0].width

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            bad = int(rows.max() if rows.max() >= self.n_rows else rows.min())
            raise LayoutError(f"row {bad} outside layer {self.layer}'s table of {self.n_rows:,} rows")
        out = np.empty((len(rows), self.width), np.float32)
        which = np.searchsorted(self.first, rows, side="right") - 1
        for i in np.unique(which):
            pick = which == i
            out[pick] = self.shards[i].read(rows[pick] - self.first[i])
        return out


# tables stored as several tensors, read as one: (pattern, the layer if the name gives none)
_SHARDS = (
    (re.compile(r"(?:^|\.)layers\.(?P<layer>\d+)\.ple\.ple_embedding\.ngram_embedding\.shard_(?P<i>\d+)\.weight$"), 0),
    (re.compile(r"(?:^|\.)ngram_embeddings\.embedders\.(?P<i>\d+)\.weight$"), 0),  # LongCat: one per head, input layer
)


def _shard_of(name: str) -> tuple[int, int, str] | None:
    """(layer, part, the name with the part as *) of a table stored in parts, else None."""
    for pattern, layer in _SHARDS:
        m = pattern.search(name)
        if m:
            found = int(m.group("layer")) if "layer" in m.groupdict() else layer
            return found, int(m.group("i")), name[: m.start("i")] + "*" + name[m.end("i") :]
    return None


def _memmap(path: Path, start: int, name: str, meta: dict) -> np.ndarray:
    dt = meta["dtype"]
    if dt not in _DTYPES:
        raise LayoutError(f"{path}: {name} has dtype {dt}, which is not supported ({', '.join(_DTYPES)})")
    begin, end = meta["data_offsets"]
    shape = tuple(meta["shape"])
    if (end - begin) != int(np.prod(shape)) * np.dtype(_DTYPES[dt]).itemsize:
        raise LayoutError(f"{path}: {name}'s byte range does not match its shape {shape} and dtype {dt}")
    size = path.stat().st_size
    if start + end > size:
        raise LayoutError(
            f"{path} is truncated: {name} {shape} needs bytes up to {start + end:,}, the file has {size:,}"
        )
    return np.memmap(path, dtype=_DTYPES[dt], mode="r", offset=start + begin, shape=shape)


def _scales(path: Path, start: int, header: dict, name: str, values: np.ndarray) -> np.ndarray:
    """The E8M0 block scales of the FP8 table `name`: one byte per 32 values of every row."""
    prefix = name.rsplit(".", 1)[0]
    scale_name = next((k for k in header if k.startswith(prefix + ".") and "scale" in k), None)
    want = (values.shape[0], values.shape[1] // FP8_BLOCK)
    if scale_name is None or values.shape[1] % FP8_BLOCK:
        raise LayoutError(f"{path}: {name} is FP8 but has no scale tensor {want} (one E8M0 scale per 32 values)")
    meta = header[scale_name]
    if meta.get("dtype") not in ("F8_E8M0", "U8") or tuple(meta.get("shape", ())) != want:
        raise LayoutError(
            f"{path}: {scale_name} is {meta.get('dtype')} {tuple(meta.get('shape', ()))}, expected F8_E8M0 {want} "
            f"(one scale per {FP8_BLOCK} values of each of {want[0]:,} rows)"
        )
    return _memmap(path, start, scale_name, meta)


def open_tables(folder: str | Path, layout: MemoryLayout | None = None) -> dict[int, TableTensor | ShardedTable]:
    """Every Engram table in any subset of safetensors files of a folder (or one file)."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    if not files:
        raise LayoutError(f"no .safetensors files in {folder}")
    found: dict[int, TableTensor | ShardedTable] = {}
    shards: dict[int, dict[int, TableTensor]] = {}
    for path in files:
        header, start = read_header(path)
        for name, meta in header.items():
            sm = _shard_of(name)
            if sm and len(meta.get("shape", ())) == 2:
                layer, index, _ = sm
                shards.setdefault(layer, {})[index] = TableTensor(
                    layer, name, meta["dtype"], _memmap(path, start, name, meta), None
                )
                continue
            m = _LAYER.search(name)
            if not m or "scale" in name or len(meta.get("shape", ())) != 2:
                continue
            layer = int(m.group(1))
            # subtle: projections (wkv, keys) are 2-D engram tensors too; the table is the tallest
            if layer in found and found[layer].n_rows >= meta["shape"][0]:
                continue
            values = _memmap(path, start, name, meta)
            scales = _scales(path, start, header, name, values) if meta["dtype"] == "F8_E4M3" else None
            found[layer] = TableTensor(layer, name, meta["dtype"], values, scales)
    for layer, parts in shards.items():
        order = sorted(parts)
        if order != list(range(len(order))):
            missing = sorted(set(range(max(order) + 1)) - set(order))
            raise LayoutError(
                f"layer {layer}'s table lacks shard {missing[0]} of its {max(order) + 1}+ shards in {folder}"
            )
        tabs = [parts[i] for i in order]
        if len({(t.dtype, t.width) for t in tabs}) != 1:
            raise LayoutError(f"layer {layer}'s table shards differ in dtype or width in {folder}")
        first = np.concatenate([[0], np.cumsum([t.n_rows for t in tabs])]).astype(np.int64)
        found[layer] = ShardedTable(layer, _shard_of(tabs[0].name)[2], tabs[0].dtype, tabs, first)
    if not found:
        raise LayoutError(
            f"no Engram table tensors (layers.<L>.engram..., ...ngram_embedding.shard_<i> or "
            f"ngram_embeddings.embedders.<i>) in {folder}"
        )
    if layout is not None:
        for layer, t in found.items():
            if layer not in layout.layers:
                continue
            problem = count_problem(layout, layer, t)
            if problem:
                raise LayoutError(problem)
            if t.width != layout.d_head:
                raise LayoutError(f"{t.name} rows are {t.width} wide, the layout says {layout.d_head}")
    return found


def count_problem(layout: MemoryLayout, layer: int, t: TableTensor | ShardedTable) -> str | None:
    """One line saying how the table's rows disagree with the layout's (padding allowed), or None;
    a table stored one tensor per head is checked head by head (a swapped pair keeps the total)."""
    if t.n_rows not in (layout.num_embeddings(layer), layout.stored_rows(layer)):
        pad = layout.stored_rows(layer) != layout.num_embeddings(layer)
        return f"{t.name} has {t.n_rows:,} rows but the layout gives layer {layer} " + (
            f"{layout.stored_rows(layer):,} ({layout.num_embeddings(layer):,} padded to a multiple of "
            f"{layout.row_multiple})"
            if pad
            else f"{layout.num_embeddings(layer):,}"
        )
    if layout.table_per_head:
        sizes = layout.spec.primes[layer]
        parts = getattr(t, "shards", [t])
        if len(parts) != len(sizes):
            return f"{t.name}: {len(parts)} tensors, the layout has one per head ({len(sizes)})"
        for j, (part, size) in enumerate(zip(parts, sizes, strict=True)):
            if part.n_rows != size:
                return f"{part.name} has {part.n_rows:,} rows but the layout gives head {j} {size:,}"
    return None


def quantize_fp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float rows (k, d) -> (E4M3 bytes, E8M0 bytes), one power-of-two scale per 32 values.

    Non-finite values are refused (ValueError): a NaN would make its block's scale NaN and an
    inf would flush the other 31 values of its block to zero.
    """
    import torch

    bad = ~np.isfinite(x)
    if bad.any():
        r = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"cannot store a table holding {int(bad.sum()):,} NaN or infinite values as FP8 (first: row {r})"
        )
    k, d = x.shape
    blocks = torch.as_tensor(x, dtype=torch.float32).reshape(k, d // FP8_BLOCK, FP8_BLOCK)
    amax = blocks.abs().amax(-1).clamp_min(2.0**-120)
    exp = torch.ceil(torch.log2(amax / 448.0)).clamp(-127, 127)  # 448: E4M3's largest finite value
    q = (blocks / torch.exp2(exp)[..., None]).to(torch.float8_e4m3fn).reshape(k, d)
    return q.view(torch.uint8).numpy(), (exp + 127).to(torch.uint8).numpy()


def dequantize_fp8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(E4M3 bytes (k, d), E8M0 bytes (k, d / 32)) -> float32 rows (k, d), the inverse of `quantize_fp8`.

    Exact in float32 wherever the product is within float32's range: with scales up to 2^119
    always (448 x 2^119 < 2^128). `quantize_fp8` writes 2^120 only for a block whose largest
    value is above 448 x 2^119 (about 2.9e38), which may then read back as inf; scales from
    elsewhere of 2^120 and up can overflow likewise. 0xFF scales are NaN.
    """
    k = q.shape[0]
    vals = E4M3[q].reshape(k, -1, FP8_BLOCK)  # (k, d / 32, 32)
    return (vals * E8M0[scales][:, :, None]).reshape(k, -1)


def write_mini_shard(path: str | Path, tables: dict[int, np.ndarray]) -> Path:
    """A safetensors file of FP8 tables `layers.<L>.engram.embed.weight` with E8M0 `...scale`."""
    import torch
    from safetensors.torch import save_file

    state = {}
    for layer, x in tables.items():
        q, s = quantize_fp8(x)
        state[f"layers.{layer}.engram.embed.weight"] = torch.from_numpy(q).view(torch.float8_e4m3fn)
        state[f"layers.{layer}.engram.embed.scale"] = torch.from_numpy(s).view(torch.float8_e8m0fnu)
    save_file(state, str(path))
    return Path(path)


def write_sparse_shards(
    path: str | Path,
    names: list[str],
    shape: tuple[int, int] | list[tuple[int, int]],
    dtype: str,
    rows: dict[int, np.ndarray] | None = None,
) -> Path:
    """A safetensors file holding one tensor of `shape` per name (or one shape per name, all as wide),
    back to back, as a sparse file: only the header and the given (global) rows are written, every
    other byte reads zero. A full-size released table (~100 GB) costs a few kilobytes of disk; tests
    and benches read it row by row."""
    item = np.dtype(_DTYPES[dtype]).itemsize
    shapes = [tuple(s) for s in shape] if isinstance(shape, list) else [tuple(shape)] * len(names)
    if len(shapes) != len(names) or len({s[1] for s in shapes}) > 1:
        raise ValueError("write_sparse_shards: one shape per name, all of one width")
    ends = np.cumsum([s[0] * s[1] * item for s in shapes]).tolist()
    header = {
        n: {"dtype": dtype, "shape": list(s), "data_offsets": [e - s[0] * s[1] * item, e]}
        for n, s, e in zip(names, shapes, ends, strict=True)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        start = f.tell()
        for r, values in sorted((rows or {}).items()):
            f.seek(start + r * shapes[0][1] * item)
            f.write(np.ascontiguousarray(values, dtype=_DTYPES[dtype]).tobytes())
        f.truncate(start + (ends[-1] if ends else 0))
    return path
