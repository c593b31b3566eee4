"""Answering over a pre-allocated key/value cache, with the decode step captured as a CUDA graph.

`StaticSession` behaves like `answer.Session` (same prompts, same answers) but holds the video's
keys/values and the room for the prompt and answer in one transformers `StaticCache` allocated
up front; the attention mask always spans the whole buffer, so every decode step has the same
shapes. On CUDA that step is captured once as a CUDA graph and replayed per token, which removes
the Python and kernel-launch overhead that bounds decoding of a batch of one. `compiled` also runs
torch.compile on that step (fusing its small kernels); the compilation costs seconds to a minute
once per process and buffer size, so it pays off over many answers (chat, eval).
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from vococli.answer.session import Session
from vococli.compiling import allow_recompiles
from vococli.errors import UserError
from vococli.layout import additive_mask
from vococli.families.base import VocoModel
from vococli.cache.kv import VideoCache

DECODE_MODES = ("auto", "dynamic", "static", "graph", "compiled")
MIN_ROOM = 512  # tokens of prompt and answer the buffer holds beyond the video at first
# compiled decode steps kept per process: one per buffer width (compile_width gives four widths per
# power of two: about 40 up to 64k tokens); past torch's default of 8, steps would silently run
# uncompiled
COMPILED_WIDTHS = 64


def compile_width(width: int) -> int:
    """`width` rounded up to one of four sizes per power of two (at most 25% more; under 256
    slots, at most 63 more), so that videos of similar length share one compiled decode step
    instead of compiling one each."""
    step = max(64, 1 << max(0, width.bit_length() - 3))
    return -(-width // step) * step


def static_mask(used: int, new: int, width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, new, width) mask for `new` tokens written after `used` filled slots of a buffer of `width`."""
    rows = torch.arange(new, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return additive_mask(cols <= used + rows, dtype)


class StaticSession(Session):
    """A conversation over one video cache held in a pre-allocated buffer.

    `graph=True` (CUDA only) replays the decode step as a captured CUDA graph. `compile=True`
    runs the decode step through torch.compile (inside the graph when there is one). Its logits
    equal the plain path's within rounding: float32 to 1e-5, bf16 within the plain path's own
    distance from float32; greedy tokens can differ only where the top two logits tie within
    that rounding (tests/test_fast_decode.py, tests/test_gpu.py).
    """

    def __init__(self, model: VocoModel, video: VideoCache, system: str | None = None, graph: bool = False,
                 room: int = MIN_ROOM, compile: bool = False):
        if graph and model.device.type != "cuda":
            raise UserError("graph decoding needs a CUDA device")
        self.graph, self.compile = graph, compile
        self.step_forward = model.lm
        if compile:
            allow_recompiles(COMPILED_WIDTHS)
            self.step_forward = torch.compile(model.lm, dynamic=False)
        self.base = video.n_frames * model.layout.k
        self.min_room = room
        self.decoder: GraphDecoder | None = None
        self.width = self.base
        super().__init__(model, video, system)

    def _video_cache(self) -> None:
        return None  # the buffer is allocated at the first prompt, sized for it

    # the buffer

    def _allocate(self, room: int) -> None:
        """(Re)build the buffer with `room` slots after the video (at least the tokens used so far
        plus one). The old buffer is copied and freed one layer at a time, so growing needs one
        layer's worth of extra memory, not a second cache."""
        width = self.base + max(room, self.used + 1)
        if self.compile:
            width = compile_width(width)
        cache = StaticCache(config=self.model.text_config, max_cache_len=width)
        if self.cache is None:
            for i, (ki, vi) in enumerate(self.video.layer_states(self.model)):
                cache.update(ki, vi, i)
        else:  # keep the video and the turns so far
            self.decoder = None  # its graph points at the old buffer
            filled = self.base + self.used
            for i, layer in enumerate(self.cache.layers):
                cache.update(layer.keys[:, :, :filled], layer.values[:, :, :filled], i)
                layer.keys = layer.values = None  # free as we go
        self.cache, self.width = cache, width
        self.decoder = GraphDecoder(self.model, cache, width, self.step_forward) if self.graph else None

    def _ensure_room(self, tokens: int) -> None:
        if self.cache is None:
            self._allocate(max(self.min_room, tokens))
        elif tokens > self.width - self.base - self.used:
            self._allocate(max(2 * (self.width - self.base), self.used + tokens))

    # the two forwards

    def _forward(self, ids: torch.Tensor, forward=None) -> torch.Tensor:
        n = ids.shape[1]
        dev = self.model.device
        positions = torch.arange(self.next_pos, self.next_pos + n, device=dev).view(1, n)
        mask = static_mask(self.base + self.used, n, self.width, self.model.dtype, dev)
        with torch.inference_mode():
            forward = self.model.lm if forward is None else forward
            out = forward(input_ids=ids.to(dev), position_ids=positions, attention_mask=mask,
                          cache=self.cache, use_cache=True, logits_to_keep=1)
        self.used += n
        return out.logits[:, -1].float()

    def _prefill(self, ids: list[int], room: int) -> torch.Tensor:
        self._ensure_room(len(ids) + room)
        return self._forward(torch.tensor([ids]))

    def _decode(self, token: int) -> torch.Tensor:
        self._ensure_room(1)
        if self.decoder is None:
            return self._forward(torch.tensor([[token]]), self.step_forward)
        logits = self.decoder.step(token, self.base + self.used, self.next_pos)
        self.used += 1
        return logits


class GraphDecoder:
    """One decode step (a token at a position, after `filled` slots) captured as a CUDA graph.

    The graph reads the token, its position and the mask from static tensors and writes its
    logits into a static tensor; the cache's own write position advances inside the graph.
    """

    def __init__(self, model: VocoModel, cache: StaticCache, width: int, forward=None):
        self.model, self.cache = model, cache
        self.forward = model.lm if forward is None else forward  # the model's forward, or its torch.compile'd version
        dev = model.device
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.mask = torch.full((1, 1, 1, width), torch.finfo(model.dtype).min, dtype=model.dtype, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.filled = -1  # slots the mask currently opens (0..filled-1)

    def _run(self) -> torch.Tensor:
        out = self.forward(input_ids=self.ids, position_ids=self.pos, attention_mask=self.mask,
                           cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _set(self, token: int, filled: int, pos: int) -> None:
        self.ids.fill_(token)
        self.pos.fill_(pos)
        if filled != self.filled:
            self.mask[..., : filled + 1] = 0
            self.mask[..., filled + 1:] = torch.finfo(self.model.dtype).min
            self.filled = filled

    @torch.inference_mode()
    def _capture(self) -> None:
        dev = self.model.device
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up (and compile) runs write one slot each: take it back
                self._run()
                self.cache.crop(-1)
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device=dev)):
            self.logits = self._run()  # recorded, not run: the cache does not advance

    @torch.inference_mode()
    def replay_ms(self, steps: int) -> float:
        """GPU milliseconds per replay of the captured step, `steps` replays back to back (they
        write `steps` slots past the current one: the caller takes them back)."""
        with torch.cuda.device(self.model.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                self.graph.replay()
            end.record()
            torch.cuda.synchronize()
        return start.elapsed_time(end) / steps

    @torch.inference_mode()
    def step(self, token: int, filled: int, pos: int) -> torch.Tensor:
        """Logits (1, V) after `token` at position `pos` written into slot `filled`."""
        self._set(token, filled, pos)
        with torch.cuda.device(self.model.device):  # the model's GPU, also when it is not the current one
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.filled += 1  # the mask now has to open this slot for the next token too
        self.mask[..., self.filled] = 0
        return self.logits.clone()  # the graph overwrites its output tensor at the next replay


def check_decode(decode: str) -> str:
    if decode not in DECODE_MODES:
        raise UserError(f"--decode {decode!r}: choose one of {', '.join(DECODE_MODES)}")
    return decode


def resolve_decode(model: VocoModel, decode: str) -> str:
    """The path `--decode` names on this model's device (auto: graph on CUDA, dynamic elsewhere)."""
    check_decode(decode)
    if decode == "auto":
        return "graph" if model.device.type == "cuda" else "dynamic"
    return decode


def open_session(model: VocoModel, video: VideoCache, decode: str = "auto", system: str | None = None,
                 room: int = MIN_ROOM) -> Session:
    """The session for `--decode`: auto = graph on CUDA, dynamic elsewhere; compiled = the static
    buffer with a torch.compile'd decode step, captured as a CUDA graph on CUDA."""
    decode = resolve_decode(model, decode)
    cuda = model.device.type == "cuda"
    if decode == "dynamic":
        return Session(model, video, system)
    compiled = decode == "compiled"
    return StaticSession(model, video, system, graph=decode == "graph" or (compiled and cuda), compile=compiled,
                         room=room)
