"""Feeding frames to the GPU: background decoding, pinned batches, batch size from free memory.

Decoding (decord/PyAV, which release the GIL) runs in a background thread that stays a few
batches ahead and hands over uint8 tensors, in pinned memory when the model is on CUDA, so the
host-to-device copy overlaps the previous batch's compute. `run_with_backoff` runs a batch and,
when the GPU runs out of memory, runs it again in halves: no frame is lost and later batches use
the smaller size.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator

import torch

from vococli.families.base import VocoModel
from vococli.compress.pixels import frames_as_tensor

AUTO_BATCH_CPU = 8
MAX_AUTO_BATCH = 256
MEMORY_SHARE = 0.6  # of the free GPU memory that batches may take


class Prefetcher:
    """Iterate `source` in a background thread, `depth` items ahead; exceptions are re-raised here.
    `waited` is the time the consumer spent waiting for items (the source was the slower side)."""

    _END = object()

    def __init__(self, source: Iterable, convert: Callable = lambda x: x, depth: int = 2):
        self.waited = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(source, convert), daemon=True)
        self._thread.start()

    def _work(self, source, convert) -> None:
        try:
            for item in source:
                if self._stop.is_set():
                    return
                self._put(convert(item))
        except BaseException as e:  # handed to the consumer
            self._put(e)
            return
        self._put(self._END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator:
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self.waited += time.perf_counter() - t0
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frames_tensor(frames, pin: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 frames as a torch tensor, pinned for an asynchronous copy when `pin`."""
    t = frames_as_tensor(frames)
    return t.pin_memory() if pin else t


def frame_cost_bytes(model: VocoModel) -> int:
    """Rough peak activation bytes of one frame in stage 1 (one layer's working set: hidden
    states, MLP intermediates, attention scores), plus its vision-tower share."""
    cfg = model.text_config
    fl = model.layout.frame_len
    size = torch.finfo(model.dtype).bits // 8
    hidden = fl * cfg.hidden_size * 8
    mlp = fl * cfg.intermediate_size * 3
    scores = cfg.num_attention_heads * fl * fl * 2
    vis = model.family.vision_config(model)
    vision = 0
    if vis is not None:
        n = (vis.image_size // vis.patch_size) ** 2 + 1
        vision = n * (vis.hidden_size * 8 + vis.intermediate_size * 2) + vis.num_attention_heads * n * n * 2
    return int((hidden + mlp + scores + vision) * size)


def auto_batch_size(model: VocoModel) -> int:
    """Frames per forward: 8 on CPU; on CUDA what a share of the free memory holds (a power of 2)."""
    if model.device.type != "cuda":
        return AUTO_BATCH_CPU
    free, _ = torch.cuda.mem_get_info(model.device)
    fit = int(free * MEMORY_SHARE // max(1, frame_cost_bytes(model)))
    size = 1
    while size * 2 <= min(fit, MAX_AUTO_BATCH):
        size *= 2
    return size


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Backoff:
    """Runs `fn` on a batch, halving the batch on out-of-memory until it fits (down to one frame)."""

    def __init__(self, batch_size: int, notice: Callable[[str], None] = print):
        self.batch_size = batch_size
        self.notice = notice

    def __call__(self, fn: Callable[[torch.Tensor], tuple], batch: torch.Tensor) -> list[tuple]:
        """Results of `fn` over consecutive pieces of `batch`, in order."""
        out, start = [], 0
        while start < batch.shape[0]:
            piece = batch[start:start + self.batch_size]
            try:
                out.append(fn(piece))
                start += piece.shape[0]
                continue
            except Exception as e:
                if not is_out_of_memory(e) or piece.shape[0] == 1:
                    raise
            # outside the handler, so the failed forward's tensors are no longer referenced
            self.batch_size = max(1, min(self.batch_size, piece.shape[0]) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.notice(f"note: out of GPU memory; continuing with batches of {self.batch_size} frames")
        return out
