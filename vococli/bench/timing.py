"""What every `vococli bench` measurement shares: its settings, synchronised timing, peak memory."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

SECTIONS = ("ceilings", "vision", "stage1", "compress", "table7", "long", "evidence", "ray", "startup", "serve")
# startup, serve and evidence time the commands, the server and --evidence with the default model, not the
# preset: asked for by name


@dataclass
class BenchConfig:
    preset: str = "tiny"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    voco_tokens: int = 2
    batch_size: int | None = None  # stage-1 frames per forward (None: automatic)
    video_frames: int = 64  # frames of the end-to-end compress video (1 fps)
    video: Path | None = None  # a video file to compress instead of writing one
    minutes: tuple[float, ...] = (1, 10, 60)
    answer_tokens: int = 64
    repeats: int = 3
    quantized: tuple[str, ...] = ("nf4", "int4")  # 4-bit answering models timed beside the full one
    compile: bool = False  # also time the compiled decode path (longest cache only)
    sections: tuple[str, ...] = SECTIONS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakMemory:
    """Peak GPU bytes allocated inside the block, above what was allocated at its start."""

    def __init__(self, device: torch.device):
        self.device, self.extra = device, None  # stays None off CUDA

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.start


def gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def module_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = _inner(t).data_ptr()  # a wrapper subclass has no storage of its own
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total


def _inner(t: torch.Tensor) -> torch.Tensor:
    return _inner(getattr(t, t.__tensor_flatten__()[0][0])) if hasattr(t, "__tensor_flatten__") else t


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; for a wrapper subclass (torchao's int4) the sum of its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    total = t.numel() * t.element_size()
    qs = getattr(t, "quant_state", None)  # nf4 absmax and friends
    if qs is not None and getattr(qs, "absmax", None) is not None:
        total += qs.absmax.numel() * qs.absmax.element_size()
    return total
