"""Per-video caches of an eval run, shared by every run that points at the same folder.

A cache's folder name is a hash of what its contents depend on (cache_key), so runs with the same
model and settings reuse it. Two runs that need one video at once do not collide: the second waits
for the first to finish that cache, then reuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from vococli.cache.chunks import read_info
from vococli.cache.meta import video_identity
from vococli.compress.pipeline import compress_video
from vococli.errors import UserError
from vococli.families.base import VocoModel
from vococli.families.loading import DTYPE_NAMES
from vococli.video.sampling import Sampling

WAIT_FOR_OTHER_S = 3600.0  # longest wait for another process compressing the same video


def cache_key(video: Path, model: VocoModel, sampling: Sampling, cache_dtype: str = "auto",
              fingerprint: str | None = None) -> str:
    ident = video_identity(video)
    key = {"size": ident["size"], "sha256_ends": ident["sha256_ends"], "model": fingerprint or model.fingerprint,
           "k": model.layout.k, "sampling": sampling.to_dict()}
    if model.compressor != "voco":  # keeps the names of VoCo caches made before other compressors
        key["compressor"] = model.compressor
    if cache_dtype != "auto":  # keeps the names of caches made before the option existed
        key["storage"] = cache_dtype
    if model.dtype != torch.float32:  # a float32 (CPU) and a bf16 (GPU) run can share a cache folder
        key["dtype"] = DTYPE_NAMES[model.dtype]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(model: VocoModel, video: Path, caches: Path, sampling: Sampling, cache_dtype: str = "auto",
               fingerprint: str | None = None) -> Path:
    """Where the cache of `video` with these settings lives in the folder `caches`."""
    return caches / f"{video.stem}-{cache_key(video, model, sampling, cache_dtype, fingerprint)}.voco"


def finished_cache(model: VocoModel, video: Path, caches: Path, sampling: Sampling,
                   cache_dtype: str = "auto") -> Path | None:
    """The finished cache of `video` in `caches` (also one named under the model's earlier
    fingerprint), or None; read from the headers alone."""
    for fingerprint in model.fingerprints:
        cache = cache_path(model, video, caches, sampling, cache_dtype, fingerprint)
        if cache.is_dir() and _finished(cache):
            return cache
    return None


def compressed_cache(model: VocoModel, video: Path, caches: Path, sampling: Sampling, cache_dtype: str = "auto",
                     batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                     notice: Callable[[str], None] = print) -> tuple[Path, int]:
    """The video's cache folder in `caches`, compressed (or finished) first when needed; also the
    number of frames compressed now."""
    caches.mkdir(parents=True, exist_ok=True)
    done = finished_cache(model, video, caches, sampling, cache_dtype)
    if done is not None:
        return done, 0
    cache = cache_path(model, video, caches, sampling, cache_dtype)
    res = compress_video(model, video, cache, sampling, batch_size=batch_size, cache_dtype=cache_dtype,
                         progress=progress, notice=lambda s: None, wait_s=WAIT_FOR_OTHER_S,
                         on_wait=lambda: notice(f"{cache.name}: another process is compressing this video; waiting"))
    return cache, res.computed


def _finished(cache: Path) -> bool:
    try:
        return read_info(cache).last.final
    except UserError:
        return False
