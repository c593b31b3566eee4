"""Reading a .voco cache: a folder of numbered safetensors chunks (docs/cache-format.md).

Each chunk holds `keys` and `values` shaped (layers, frames, kv_heads, K, head_dim) in the model
dtype (or int8 with `keys_scale`/`values_scale` when stored in 8 bits), `timestamps` (frames,)
float64, and its metadata (cache/meta.py) as JSON under the safetensors metadata key "vococli",
including a CRC-32 of each tensor's bytes, checked when the chunk is loaded. Chunks are written
by cache/writer.py, complete or not at all; the last one carries `"final": true`.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from safetensors import safe_open

from vococli.cache.meta import FORMAT, FORMAT_VERSION, READABLE_VERSIONS, CacheMeta, ChunkMeta
from vococli.errors import UserError

if TYPE_CHECKING:  # torch and the model code load only when tensors are read or written, so that
    import torch  # `vococli info` on a cache answers at once

    from vococli.cache.kv import VideoCache

CHUNK_GLOB = "chunk-*.safetensors"


def chunk_path(root: Path, i: int) -> Path:
    return root / f"chunk-{i:05d}.safetensors"


@dataclass
class Chunk:
    path: Path
    meta: ChunkMeta


def read_chunk_meta(path: Path) -> ChunkMeta:
    """A chunk's metadata, from the safetensors header alone; one line for anything wrong with it."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only
            raw = (f.metadata() or {}).get("vococli")
    except Exception as e:
        raise UserError(f"{path}: unreadable cache chunk, truncated or not a safetensors file ({e})") from None
    if raw is None:
        raise UserError(f"{path}: not a vococli cache chunk (no vococli metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: damaged cache chunk (its metadata is not valid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a vococli cache chunk")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise UserError(f"{path}: cache format version {meta.get('format_version')}, this vococli reads "
                        f"version {FORMAT_VERSION}; compress the video again")
    return ChunkMeta.from_dict(meta, path)


def list_chunks(root: Path) -> list[Chunk]:
    """All chunks in order, each validated, and the sequence checked: no gaps, every chunk of this
    cache (its identity and cache id), frames continuous, counts adding up, nothing after the
    final chunk, a final chunk accounting for every planned frame."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: cache not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a vococli cache (expected a .voco folder; `vococli compress` makes one)")
    chunks = [Chunk(p, read_chunk_meta(p)) for p in sorted(root.glob(CHUNK_GLOB))]
    for i, c in enumerate(chunks):
        if c.path.name != chunk_path(root, i).name:
            raise UserError(f"{root}: chunk {i} is missing; the cache is incomplete")
        if c.meta.chunk != i:
            raise UserError(f"{c.path}: holds chunk {c.meta.chunk} of a cache, not chunk {i}: it was copied "
                            "from another cache")
        differs = c.meta.cache.first_difference(chunks[0].meta.cache, CacheMeta.CHUNK_IDENTITY)
        if differs:
            raise UserError(f"{c.path}: belongs to another cache (its {differs.replace('_', ' ')} differs "
                            "from the first chunk's)")
    _check_sequence(chunks)
    return chunks


def _check_sequence(chunks: list[Chunk]) -> None:
    stored = targets = lost = 0  # up to the end of the chunk before
    for i, c in enumerate(chunks):
        m = c.meta
        if m.frame_start != stored:
            raise UserError(f"{c.path}: starts at frame {m.frame_start}, but the chunks before it hold {stored} "
                            "frames: it comes from another cache, or the cache is damaged")
        if min(m.frames, m.frames_lost) < 0 or m.targets_done < targets or m.frames_lost < lost \
                or m.targets_done - m.frames_lost != stored + m.frames or m.targets_done > m.cache.planned_frames:
            raise UserError(f"{c.path}: damaged cache chunk (its frame counts do not add up with the chunks before it)")
        if m.final and i != len(chunks) - 1:
            raise UserError(f"{chunks[i + 1].path}: comes after the final chunk: it comes from another cache")
        if m.final and m.targets_done != m.cache.planned_frames:
            raise UserError(f"{c.path}: marked final after {m.targets_done} of {m.cache.planned_frames} planned "
                            "frames: the cache is damaged")
        stored, targets, lost = stored + m.frames, m.targets_done, m.frames_lost


@dataclass(frozen=True)
class CacheInfo:
    """A cache's metadata with totals over its chunks (what `vococli info` shows)."""

    meta: CacheMeta
    last: ChunkMeta  # the last chunk: how far compress got
    frames: int
    chunks: int
    bytes: int

    def to_dict(self) -> dict:
        """The last chunk's metadata with the totals: the JSON of `vococli info --json`."""
        return {**self.last.to_dict(), "frames": self.frames, "chunks": self.chunks, "bytes": self.bytes}


def read_info(root: Path) -> CacheInfo:
    """Metadata of a cache (from its last chunk) with totals over all chunks."""
    chunks = list_chunks(root)
    if not chunks:
        raise UserError(f"{root}: not a vococli cache (no chunk files)")
    return CacheInfo(meta=chunks[-1].meta.cache, last=chunks[-1].meta, frames=sum(c.meta.frames for c in chunks),
                     chunks=len(chunks), bytes=sum(c.path.stat().st_size for c in chunks))


def load_cache(root: Path, fingerprint: str | Sequence[str] | None = None, allow_partial: bool = False) -> VideoCache:
    """Load every chunk into one VideoCache; refuses unfinished caches and foreign models
    (`fingerprint`: the answering model's, or all it may carry: `VocoModel.fingerprints`)."""
    import torch

    from vococli.cache.kv import VideoCache

    root = Path(root)
    chunks = list_chunks(root)
    if not chunks or not (chunks[-1].meta.final or allow_partial):
        raise UserError(f"{root}: the cache is unfinished; run `vococli compress` again to complete it")
    meta = chunks[-1].meta.cache
    accepted = (fingerprint,) if isinstance(fingerprint, str) else fingerprint
    if accepted is not None and meta.model_fingerprint not in accepted:
        raise UserError(f"{root}: made by another model ({meta.model_path}, fingerprint "
                        f"{meta.model_fingerprint}; this model is {accepted[0]}); compress the video with "
                        "this model")
    names = ["keys", "values"] + (["keys_scale", "values_scale"] if meta.storage == "int8" else [])
    # chunks are read and checked in threads (zlib's CRC and safetensors' reads release the GIL)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        read = list(pool.map(lambda c: _read_chunk(c, names), chunks))
    shape = read[0]["keys"].shape
    for c, r in zip(chunks, read):
        if r["keys"].shape[0] != shape[0] or r["keys"].shape[2:] != shape[2:]:
            raise UserError(f"{c.path}: damaged cache chunk (its keys are shaped {tuple(r['keys'].shape)}, the "
                            f"first chunk's {tuple(shape)})")
    parts = {n: [r[n] for r in read] for n in names}
    stamps = np.concatenate([r["timestamps"].numpy() for r in read])
    full = {n: torch.cat(p, dim=1) for n, p in parts.items()}
    if full["keys"].shape[1] == 0:
        raise UserError(f"{root}: the cache holds no frames")
    if len(stamps) > 1 and not (np.diff(stamps) > 0).all():
        at = int(np.argmax(np.diff(stamps) <= 0)) + 1
        raise UserError(f"{root}: damaged cache (frame {at}'s time {stamps[at]:.3f} s does not come after "
                        f"frame {at - 1}'s {stamps[at - 1]:.3f} s)")
    return VideoCache(keys=full["keys"], values=full["values"], timestamps=stamps, meta=meta,
                      key_scales=full.get("keys_scale"), value_scales=full.get("values_scale"))


def _read_chunk(c: Chunk, names: list[str]) -> dict:
    """The tensors `names` and the timestamps of one chunk, checked against the chunk's CRC-32s
    (every tensor in format version 2; in version 1, those it has) and against its metadata."""
    try:
        with safe_open(str(c.path), framework="pt") as f:
            tensors = {n: f.get_tensor(n) for n in [*names, "timestamps"]}
    except Exception as e:
        raise UserError(f"{c.path}: damaged cache chunk ({e})") from None
    for n, expected in c.meta.crc32.items():
        if n in tensors and crc32(tensors[n]) != expected:
            raise UserError(f"{c.path}: damaged cache chunk (its {n} do not match their checksum); "
                            "compress the video again with --overwrite")
    keys, m = tensors["keys"], c.meta
    if keys.dim() != 5 or keys.shape[1] != m.frames or keys.shape[3] != m.cache.k \
            or tensors["values"].shape != keys.shape or tuple(tensors["timestamps"].shape) != (m.frames,):
        raise UserError(f"{c.path}: damaged cache chunk (its tensors' shapes do not match its metadata: "
                        f"{m.frames} frames of {m.cache.k} slots)")
    return tensors


def crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes."""
    import torch

    return zlib.crc32(t.contiguous().view(-1).view(torch.uint8).numpy())

