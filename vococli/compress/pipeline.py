"""Video file -> .voco cache: read frames in batches, preprocess, stage 1, write chunks.

Frames are decoded in a background thread a few batches ahead of the model (frame_feed.py);
compressed frames are buffered until a chunk is full, and full chunks are written by another
background thread (cache_file.ChunkQueue) while the next frames are computed. An interrupted run
resumes after its last complete chunk; a finished one is not redone.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from vococli.cache.meta import CacheMeta, video_identity
from vococli.cache.writer import CacheWriter, ChunkQueue
from vococli.errors import UserError
from vococli.video.feed import Backoff, Prefetcher, auto_batch_size, frames_tensor
from vococli.cache.int8 import check_storage
from vococli.families.base import VocoModel
from vococli.families.loading import DTYPE_NAMES
from vococli.compress.pixels import shrink_large_frames, to_pixels
from vococli.compress.stage1 import compiled_layers, compress_pixels, supports_compiled_layers
from vococli.video.backends import FrameBatch
from vococli.video.reader import VideoReader
from vococli.video.sampling import Sampling, plan_frames



CHUNK_FRAMES = 128  # frames per cache chunk, the unit of resuming
DECODE_BYTES = 64 << 20  # full-size decoded frames held at once (before large ones are shrunk)


@dataclass
class CompressResult:
    path: Path
    frames: int  # frames in the cache
    planned: int  # frames the sampling asked for
    lost: int  # planned frames that could not be decoded
    computed: int  # frames compressed by this run (0 when the cache was already complete)
    seconds: float
    backend: str
    decode_wait_s: float = 0.0  # time the model waited for decoded frames

    @property
    def frames_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"cache": str(self.path), "frames": self.frames, "planned": self.planned, "lost": self.lost,
                "computed": self.computed, "seconds": round(self.seconds, 3),
                "frames_per_s": round(self.frames_per_s, 2), "backend": self.backend,
                "decode_wait_s": round(self.decode_wait_s, 3)}


def default_output(video: Path) -> Path:
    return Path(video).with_suffix(".voco")


def compress_video(model: VocoModel, video: str | Path, out: str | Path | None = None,
                   sampling: Sampling = Sampling(), batch_size: int | None = None, chunk_frames: int = CHUNK_FRAMES,
                   overwrite: bool = False, cache_dtype: str = "auto",
                   progress: Callable[[int, int], None] | None = None,
                   notice: Callable[[str], None] = print, compile: bool = False,
                   video_backend: str = "auto", wait_s: float = 0.0,
                   on_wait: Callable[[], None] | None = None) -> CompressResult:
    """Compress `video` into a .voco cache folder with `model` (which must include the vision tower).

    `progress(done, total)` is called after every batch with counts of planned frames.
    `batch_size` None picks one from the free GPU memory (8 on CPU); a batch that runs out of
    GPU memory is redone in halves. `cache_dtype` "int8" stores keys/values in 8 bits (kv_quant.py);
    "auto" stores them in the model's dtype. `compile` runs stage 1's full layers through
    torch.compile (stage1.compiled_layers; compiled on the first batch and on each new batch size).
    `video_backend` names the decoder (vococli.video.backends); "auto" tries each in turn.
    When another process is writing the same cache, wait up to `wait_s` seconds for it
    (`on_wait()` is called when waiting starts), then raise FolderBusy.
    """
    if model.llava is None:
        raise UserError("compress needs the full model with its vision tower")
    if compile and not supports_compiled_layers(model):
        raise UserError(f"{model.path}: --compile needs a LLaMA decoder with VoCo's causal frame layout; "
                        "compress without it")
    check_storage(cache_dtype)
    if batch_size is None:
        batch_size = auto_batch_size(model)
    for flag, value in (("--batch-size", batch_size), ("--chunk-frames", chunk_frames)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    t_start = time.perf_counter()
    video = Path(video)
    out = Path(out) if out is not None else default_output(video)
    reader = VideoReader(video, video_backend, fit=model.image.size)
    plan = plan_frames(reader.timestamps, sampling)
    lay = model.layout
    meta = CacheMeta(
        model_fingerprint=model.fingerprint, model_path=model.path, k=lay.k, c0=lay.c0, n_image=lay.n_image,
        dtype=DTYPE_NAMES[model.dtype], storage=DTYPE_NAMES[model.dtype] if cache_dtype == "auto" else cache_dtype,
        video=video_identity(video), sampling=sampling.to_dict(), planned_frames=int(len(plan)),
        backend=reader.backend, video_duration_s=round(reader.duration, 6), family=model.family.name,
        compressor=model.compressor)
    with CacheWriter(out, meta, overwrite=overwrite, wait_s=wait_s, on_wait=on_wait) as writer:  # locks the folder until the end
        total = len(plan)
        if writer.finished:
            notice(f"{out}: already complete ({writer.frames_done} frames); nothing to do")
            return CompressResult(out, writer.frames_done, total, writer.lost, 0, time.perf_counter() - t_start,
                                  reader.backend)
        if writer.targets_done:
            notice(f"{out}: resuming after frame {writer.targets_done} of {total}")
        start = writer.targets_done
        lost_before, frames_before = writer.lost, writer.frames_done
        keys, values, stamps = [], [], []
        buffered, computed, seen = 0, 0, start
        if progress:
            progress(start, total)
        pin = model.device.type == "cuda"
        backoff = Backoff(batch_size, notice)

        def stage1(frames: torch.Tensor):
            return compress_pixels(model, to_pixels(frames, model.image, model.device, model.dtype))

        # frames are read in batches no larger than a chunk, so a chunk is written as soon as it is
        # full; the decoded arrays are dropped once copied (to pinned memory on CUDA). A full chunk is
        # copied to the host asynchronously and written by the chunk queue's thread: the loop never
        # waits for a copy or a write.
        batches = Prefetcher(decoded_batches(reader, plan[start:], min(batch_size, chunk_frames), model.image),
                             lambda b: (replace(b, frames=None), frames_tensor(b.frames, pin)))
        with batches, ChunkQueue(writer) as chunk_queue, (compiled_layers(model) if compile else nullcontext()):
            for batch, frames in batches:
                for k, v in backoff(stage1, frames):  # (L, B, Hkv, K, D) each
                    keys.append(k)
                    values.append(v)
                    buffered += k.shape[1]
                    computed += k.shape[1]
                stamps += batch.timestamps
                seen = start + batch.indices[-1] + 1
                if buffered >= chunk_frames:
                    chunk_queue.submit(torch.cat(keys, 1), torch.cat(values, 1), stamps, seen,
                                  lost_before + (seen - start) - computed, final=False)
                    keys, values, stamps, buffered = [], [], [], 0
                if progress:
                    progress(seen, total)
            lost = lost_before + (total - start) - computed
            if frames_before + computed == 0:
                raise UserError(f"{video}: no frame could be decoded")
            k_all = torch.cat(keys, 1) if keys else _empty_chunk(model)
            v_all = torch.cat(values, 1) if values else _empty_chunk(model)
            chunk_queue.submit(k_all, v_all, stamps, total, lost, final=True)
        if progress:
            progress(total, total)
        if lost:
            notice(f"note: {lost} of {total} planned frames could not be decoded (damaged video) and were skipped")
        return CompressResult(out, writer.frames_done, total, lost, computed, time.perf_counter() - t_start,
                              reader.backend, batches.waited)


def decoded_batches(reader: VideoReader, plan: np.ndarray, batch_size: int, spec) -> Iterator[FrameBatch]:
    """The planned frames in batches of `batch_size`, decoded at most DECODE_BYTES of full-size
    frames at a time and large frames shrunk to the model's input size at once, so memory does
    not grow with the video's resolution (see compress/pixels.py)."""
    width, height = reader.size
    per_read = max(1, min(batch_size, DECODE_BYTES // max(1, width * height * 3)))
    held: list[FrameBatch] = []
    count = 0
    for batch in reader.read(plan, per_read):
        held.append(replace(batch, frames=shrink_large_frames(batch.frames, spec)))
        count += len(batch.indices)
        if count >= batch_size:
            yield _joined(held)
            held, count = [], 0
    if held:
        yield _joined(held)


def _joined(batches: list[FrameBatch]) -> FrameBatch:
    if len(batches) == 1:
        return batches[0]
    return FrameBatch([i for b in batches for i in b.indices], [t for b in batches for t in b.timestamps],
                      np.concatenate([b.frames for b in batches]))


def _empty_chunk(model: VocoModel) -> torch.Tensor:
    """Keys/values of zero frames (L, 0, Hkv, K, D): the last chunk when only its end marker is left."""
    cfg = model.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = (cfg.num_hidden_layers, 0, cfg.num_key_value_heads, model.layout.k, head_dim)
    return torch.zeros(shape, dtype=model.dtype)
