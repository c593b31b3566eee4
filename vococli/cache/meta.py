"""The one schema of a cache's metadata (docs/cache-format.md): what every chunk of a .voco folder
records about the cache as a whole (`CacheMeta`) and about itself (`ChunkMeta`).

On disk both are one flat JSON object under the safetensors metadata key "vococli". A chunk's
format version says which rules it follows:

- version 2 (written now): every field is required, including `cache_id` (the same in every chunk
  of one cache, so a chunk copied in from another cache is recognised even when that cache has
  the same video and settings) and a CRC-32 of every tensor of the chunk;
- version 1 (written before): fields added during it (`family`, `compressor`, `storage`) take
  defaults that describe the caches written before them; checksums are checked where present.
"""

from __future__ import annotations

import functools
import hashlib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from vococli.errors import UserError

FORMAT = "vococli-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def video_identity(path: Path) -> dict:
    """Size, mtime and a hash of the first and last MiB: cheap and enough to tell videos apart."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return {"name": path.name, "size": st.st_size, "mtime": int(st.st_mtime), "sha256_ends": h.hexdigest()[:32]}


def same_video(a: dict, b: dict) -> bool:
    return a.get("size") == b.get("size") and a.get("sha256_ends") == b.get("sha256_ends")


@dataclass(frozen=True)
class CacheMeta:
    """What a cache holds and how it was made; every chunk of one cache records the same."""

    model_fingerprint: str
    model_path: str
    k: int  # kept slots per frame
    c0: int  # position of the first kept slot in the single-frame sequence
    n_image: int
    dtype: str  # the model's dtype while compressing
    video: dict  # video_identity()
    sampling: dict  # Sampling.to_dict()
    planned_frames: int
    backend: str  # the video backend that decoded the frames
    video_duration_s: float
    storage: str = ""  # "int8", or the dtype itself ("" in caches written before the field: read as dtype)
    family: str = "llava_llama"  # vococli.families
    compressor: str = "voco"  # vococli.compressors
    cache_id: str = ""  # random, made by the first compress of the cache ("" in version 1)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if not self.storage:
            object.__setattr__(self, "storage", self.dtype)

    # fields that must agree for a resume to continue a cache; between its chunks, the cache id too
    IDENTITY = ("format", "format_version", "model_fingerprint", "family", "compressor", "k", "c0", "n_image", "dtype",
                "storage", "video", "sampling", "planned_frames")
    CHUNK_IDENTITY = IDENTITY + ("cache_id",)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where) -> CacheMeta:
        return cls(**_fields_of(cls, d, where))

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The tensors every chunk of this cache holds."""
        return ("keys", "values", "timestamps") + (("keys_scale", "values_scale") if self.storage == "int8" else ())

    def first_difference(self, other: CacheMeta, keys: tuple[str, ...] = IDENTITY) -> str | None:
        """The first of `keys` (default: the identity fields) in which two caches differ, or None."""
        for key in keys:
            a, b = getattr(self, key), getattr(other, key)
            if not (same_video(a, b) if key == "video" else a == b):
                return key
        return None


@dataclass(frozen=True)
class ChunkMeta:
    """One chunk's own record beside the cache's: where its frames sit and how far compress got."""

    cache: CacheMeta
    chunk: int  # its number, from 0
    frame_start: int  # frames stored in the chunks before it
    frames: int  # frames stored in it
    targets_done: int  # planned frames handled (stored or lost) up to its end
    frames_lost: int  # planned frames that could not be decoded, up to its end
    final: bool  # the last chunk of a finished cache
    crc32: dict = field(default_factory=dict)  # tensor name -> CRC-32 of its bytes

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cache"}
        return {**self.cache.to_dict(), **own}

    @classmethod
    def from_dict(cls, d: dict, where) -> ChunkMeta:
        own = _fields_of(cls, d, where, skip=("cache",))
        meta = cls(cache=CacheMeta.from_dict(d, where), **own)
        if meta.cache.format_version >= 2:
            if not meta.cache.cache_id:
                raise UserError(f"{where}: damaged cache chunk (its metadata field 'cache_id' is empty)")
            names = set(meta.cache.tensor_names)
            if set(meta.crc32) != names or not all(type(v) is int for v in meta.crc32.values()):
                raise UserError(f"{where}: damaged cache chunk (its checksums name {sorted(meta.crc32)}, not "
                                f"{sorted(names)})")
        return meta


TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}


@functools.cache
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _fields_of(cls, d: dict, where, skip: tuple[str, ...] = ()) -> dict:
    """The values of `cls`'s fields in `d`, checked for presence and type (one line naming the first
    missing or mistyped field)."""
    hints = _type_hints(cls)
    every_field = d.get("format_version") != 1  # version 1 had fields added during it
    out = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name not in d:
            if not every_field and (f.default is not MISSING or f.default_factory is not MISSING):
                continue  # a field added during version 1: its default describes older caches
            raise UserError(f"{where}: damaged cache chunk (its metadata has no {f.name!r})")
        value = d[f.name]
        kinds = TYPES.get(hints[f.name], (object,))
        if not isinstance(value, kinds) or (hints[f.name] is int and isinstance(value, bool)):
            raise UserError(f"{where}: damaged cache chunk (its metadata field {f.name!r} is {value!r})")
        out[f.name] = value
    return out
