"""Hour-long training videos assembled from frames compressed one by one.

A needle or long scene (`vococli.synth.scenes`) of T frames is a stretch of grey distractor
frames with a few event frames. Frames are compressed independently (the temporal layout), so
the context the text reads can be assembled instead of computed frame by frame:

- a bank holds the kept keys/values of every distractor frame that can occur, up to angle:
  each background x distractor shape x `ANGLES` angles around its circle, compressed at frame 0
  without gradients and recomputed from the current weights every `refresh` steps;
- grey frame t takes the bank entry at its distractor's nearest angle, keys rotated by t*K
  positions (the rotation `compress`'s caches get when they are loaded);
- event frames (anything besides the distractor) and `grad_grey` grey frames drawn at random are
  rendered, passed through the H.264 round trip clips get, and compressed as frame t with
  gradients.

A 3-hour scene then costs a few frame forwards and one text forward over its 21,600 cached
tokens instead of 10,800 frame forwards. Scene lengths are drawn log-uniformly from
`min_frames` up to a limit that grows from 4 x `min_frames` to `max_frames` over `ramp` steps.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from vococli.compress.pixels import to_pixels
from vococli.eval.formats import SHORT_ANSWER_SUFFIX
from vococli.families.base import VocoModel
from vococli.synth.clips import VIDEO_PROMPT
from vococli.synth.scenes import BACKGROUNDS, SHAPES, Distractor, Scene, draw, long_scene, needle_scene
from vococli.train.data import encode_conversation, pad_conversations, pad_token
from vococli.train.forward import FrameState, frame_kv

ANGLES = 48  # bank angles per distractor circle: 7.5 degrees, about 1 px of the distractor's travel
LONG_KINDS = ("needle", "long")


@dataclass(frozen=True)
class LongSettings:
    min_frames: int = 16
    max_frames: int = 10800
    scenes: int = 16  # long scenes per micro-batch
    ramp: int = 0  # steps over which the length limit grows to max_frames (0: at once)
    refresh: int = 20  # steps between bank recomputations
    grad_grey: int = 4  # grey frames per scene compressed with gradients
    kinds: tuple[str, ...] = LONG_KINDS
    codec: bool = True  # H.264 round trip of rendered frames, as in written clips

    def limit(self, step: int) -> int:
        """The longest scene drawn at `step`."""
        lo = min(self.max_frames, 4 * self.min_frames)
        if self.ramp <= 0 or step >= self.ramp:
            return self.max_frames
        return int(round(math.exp(math.log(lo) + (math.log(self.max_frames) - math.log(lo)) * step / self.ramp)))


def h264_roundtrip(frames: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 through the encoder settings of `vococli synth` and back."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buf.seek(0)
    with av.open(buf) as container:
        out = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return out


def _one_frame(background, objs) -> Scene:
    return Scene("needle", background, [list(objs)])


class GreyBank:
    """Kept keys/values of every (background, distractor shape, angle) grey frame at frame 0."""

    def __init__(self, model: VocoModel, codec: bool = True, angles: int = ANGLES):
        self.angles = angles
        size = model.image.size
        rows = []
        for bg in BACKGROUNDS:
            for shape in SHAPES:
                dis = Distractor(shape, 0.0, 0.0)
                clip = np.stack([draw(_one_frame(bg, [dis.at_angle(2 * math.pi * a / angles)]), 0, size)
                                 for a in range(angles)])
                rows.append(h264_roundtrip(clip) if codec else clip)
        self.pixels = to_pixels(np.concatenate(rows), model.image, torch.device("cpu"), torch.float32)
        self.keys: list[torch.Tensor] | None = None
        self.values: list[torch.Tensor] | None = None

    @torch.no_grad()
    def refresh(self, model: VocoModel, compressor, module, device: torch.device) -> None:
        t = torch.zeros(self.pixels.shape[0], dtype=torch.long, device=device)
        keys, values = [], []
        for chunk in range(0, self.pixels.shape[0], 256):
            k, v = frame_kv(model, self.pixels[chunk:chunk + 256].to(device), t[chunk:chunk + 256], compressor, module)
            keys.append(k)
            values.append(v)
        self.keys = [torch.cat(layer).detach() for layer in zip(*keys)]
        self.values = [torch.cat(layer).detach() for layer in zip(*values)]

    def rows(self, background, dis: Distractor, t: np.ndarray) -> np.ndarray:
        combo = BACKGROUNDS.index(tuple(background)) * len(SHAPES) + SHAPES.index(dis.shape)
        angle = np.rint((dis.phase + dis.speed * t) / (2 * math.pi) * self.angles).astype(np.int64) % self.angles
        return combo * self.angles + angle


def draw_scene(settings: LongSettings, rng: np.random.Generator, step: int) -> Scene:
    limit = settings.limit(step)
    length = int(round(math.exp(rng.uniform(math.log(settings.min_frames), math.log(max(limit, settings.min_frames))))))
    kind = settings.kinds[int(rng.integers(len(settings.kinds)))]
    if kind == "long":
        return long_scene(rng, max(length, 18))
    return needle_scene(rng, length)


@dataclass
class LongBatch:
    state: FrameState
    ids: torch.Tensor
    lengths: torch.Tensor
    video: torch.Tensor
    targets: torch.Tensor

    @property
    def conversations(self) -> int:
        return int(self.ids.shape[0])


def long_batch(model: VocoModel, bank: GreyBank, settings: LongSettings, seed: int, step: int, micro: int,
               compressor, module, device: torch.device) -> LongBatch:
    """`settings.scenes` scenes for micro-batch `micro` of `step` (the same seed, step and micro give
    the same scenes), their contexts assembled from the bank and their event frames."""
    rng = np.random.default_rng([seed, 17, step, micro])
    scenes = [draw_scene(settings, rng, step) for _ in range(settings.scenes)]
    return assemble(model, bank, scenes, rng, settings, compressor, module, device)


def assemble(model: VocoModel, bank: GreyBank, scenes: list[Scene], rng: np.random.Generator, settings: LongSettings,
             compressor, module, device: torch.device) -> LongBatch:
    """The contexts and conversations of needle/long `scenes` (each with distractor and events facts)."""
    size = model.image.size
    grad_pixels, grad_t, grad_at, grey_rows, grey_t, grey_at, convs = [], [], [], [], [], [], []
    start = 0
    for v, scene in enumerate(scenes):
        n = len(scene.frames)
        dis = Distractor(**scene.facts["distractor"])
        events = np.zeros(n, dtype=bool)
        for a, b in scene.facts["events"]:
            events[a:b] = True
        grey = np.flatnonzero(~events)
        extra = rng.choice(grey, size=min(settings.grad_grey, len(grey)), replace=False) if len(grey) else grey
        with_grad = np.union1d(np.flatnonzero(events), extra)
        rest = np.setdiff1d(np.arange(n), with_grad)
        clip = np.stack([draw(scene, int(t), size) for t in with_grad])
        grad_pixels.append(h264_roundtrip(clip) if settings.codec else clip)
        grad_t.append(with_grad)
        grad_at.append(start + with_grad)
        grey_rows.append(bank.rows(scene.background, dis, rest))
        grey_t.append(rest)
        grey_at.append(start + rest)
        for qtype, q, a in scene.qa:
            prompt = VIDEO_PROMPT + q + (SHORT_ANSWER_SUFFIX if rng.random() < 0.5 else "")
            turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": a}]
            convs.append((v, encode_conversation(model, turns, f"long scene ({qtype})")))
        start += n
    pixels = to_pixels(np.concatenate(grad_pixels), model.image, device, torch.float32)
    gk, gv = frame_kv(model, pixels, torch.from_numpy(np.concatenate(grad_t)).to(device), compressor, module)
    rows = torch.from_numpy(np.concatenate(grey_rows)).to(device)
    shift = model.layout.k * torch.from_numpy(np.concatenate(grey_t)).to(device)
    at_grad = torch.from_numpy(np.concatenate(grad_at)).to(device)
    at_grey = torch.from_numpy(np.concatenate(grey_at)).to(device)
    keys, values = [], []
    for layer in range(len(gk)):
        bk = model.family.shift_keys(model, bank.keys[layer][rows], shift)
        bv = bank.values[layer][rows]
        shape = (start, *gk[layer].shape[1:])
        keys.append(gk[layer].new_zeros(shape).index_put((at_grey,), bk).index_put((at_grad,), gk[layer]))
        values.append(gv[layer].new_zeros(shape).index_put((at_grey,), bv).index_put((at_grad,), gv[layer]))
    counts = torch.tensor([len(s.frames) for s in scenes], device=device)
    state = FrameState(keys=keys, values=values, first_frame=counts.cumsum(0) - counts, n_frames=counts)
    ids, targets, lengths, video = pad_conversations(convs, pad_token(model))
    return LongBatch(state, ids.to(device), lengths.to(device), video.to(device), targets.to(device))
