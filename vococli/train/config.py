"""The settings of a training run (saved with every checkpoint, so a resume continues the same run)
and its progress."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # LLaVA JSON files or folders holding train.json
    out: str
    media: str | None = None  # folder the media paths are relative to (default: each JSON's folder)
    init: str | None = None  # a preset name (tiny, synth-small): start from random weights
    checkpoint: str | None = None  # or start from this checkpoint folder
    mask: str = "voco"  # voco | causal (no VoCo mask: the upper bound / first curriculum stage)
    compressor: str = "voco"  # a name in vococli.compressors (voco, avgpool, ...)
    voco_tokens: int | None = None  # default: the checkpoint's, else 2
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    batch_size: int = 64  # conversations per micro-batch
    grad_accum: int = 1
    steps: int | None = None
    epochs: float = 1.0
    freeze_vision: bool = False
    fps: float = 1.0
    max_frames: int = 64
    keep_frames: bool = True  # keep decoded pixels in memory (fp16) after their first use
    save_every: int = 200
    seed: int = 0
    threads: int | None = None
    device: str | None = None
    bf16: bool | None = None  # default: on for CUDA
    long_max: int = 0  # longest assembled needle/long scene in frames (train/long.py); 0: none
    long_min: int = 18
    long_scenes: int = 16  # assembled scenes per micro-batch, besides the --data conversations
    long_ramp: int = 0  # steps over which the longest scene grows from 4 x long_min to long_max
    long_kinds: str = "needle,long"

    def long_settings(self):
        from vococli.train.long import LongSettings

        return LongSettings(min_frames=self.long_min, max_frames=self.long_max, scenes=self.long_scenes,
                            ramp=self.long_ramp, kinds=tuple(self.long_kinds.split(",")))

    @property
    def compressor_name(self) -> str:
        """The compressor trained (vococli.compressors): `--mask causal` trains `full`."""
        return "full" if self.mask == "causal" else self.compressor


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    cursor: int = 0  # micro-batches of `epoch` done
    samples: int = 0  # conversations seen
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
