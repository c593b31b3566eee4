"""Key/value buffers: where a Session keeps the video's keys/values and the turns after them.

Every decode path is one buffer strategy with the same four operations: `prefill` (the prompt,
many tokens), `decode` (one token, given as a (1, 1) tensor on the device), `crop` (forget the
last tokens) and `used` (tokens held after the video). Every forward gets explicit position ids
and an explicit 4D mask; nothing is inferred by a generation helper.

- `DynamicBuffer`: transformers' DynamicCache, grown by concatenation (the plain path).
- `StaticBuffer`: one transformers StaticCache allocated up front with room for the prompt and
  the answer; the mask always spans the whole buffer, so every decode step has the same shapes
  (`compile=True` runs the decode step through torch.compile).
- `GraphBuffer` (graph.py): the static buffer with the decode step replayed as a CUDA graph.
"""

from __future__ import annotations

import torch

from vococli.compiling import allow_recompiles
from vococli.families.base import VocoModel
from vococli.cache.kv import VideoCache
from vococli.layout import additive_mask, decode_mask

MIN_ROOM = 512  # tokens of prompt and answer a static buffer holds beyond the video at first
# compiled decode steps kept per process: one per buffer width (compile_width gives four widths per
# power of two: about 40 up to 64k tokens); past torch's default of 8, steps would silently run
# uncompiled
COMPILED_WIDTHS = 64
READ_BATCH = 8  # on a GPU, generated tokens are read by the host this many at a time


@torch.inference_mode()
def forward_tokens(model: VocoModel, ids: torch.Tensor, cache, start_pos: int, all_logits: bool = False) -> torch.Tensor:
    """Feed token ids (1, N) after `cache` at positions start_pos..; returns the last logits (1, V),
    or every position's (1, N, V) with `all_logits`."""
    n = ids.shape[1]
    past = cache.get_seq_length()
    positions = torch.arange(start_pos, start_pos + n, device=model.device).view(1, n)
    mask = decode_mask(past, n, model.dtype).to(model.device)
    out = model.lm(input_ids=ids.to(model.device), position_ids=positions, attention_mask=mask,
                   cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
    return out.logits.float() if all_logits else out.logits[:, -1].float()


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


class KVBuffer:
    """The common part of every buffer: the model, the video, and the tokens held after it."""

    records_evidence = True  # attention runs in Python on every step (answer/evidence.py can record it)

    def __init__(self, model: VocoModel, video: VideoCache):
        self.model, self.video = model, video
        self.used = 0  # tokens in the buffer after the video
        self.read_every = READ_BATCH if model.device.type == "cuda" else 1

    def prefill(self, ids: torch.Tensor, pos: int, room: int) -> torch.Tensor:
        """Feed the prompt ids (1, N) at positions pos..; `room` more tokens will follow.
        Returns the next-token logits (1, V)."""
        raise NotImplementedError

    def decode(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed one token (1, 1) at position `pos`; returns the next-token logits (1, V)."""
        raise NotImplementedError

    def crop(self, tokens: int) -> None:
        """Forget the last `tokens` tokens."""
        if tokens > 0:
            self.cache.crop(-tokens)
            self.used -= tokens


class DynamicBuffer(KVBuffer):
    """transformers' DynamicCache holding the video; turns are appended to it."""

    def __init__(self, model: VocoModel, video: VideoCache):
        super().__init__(model, video)
        self.cache = video.past_key_values(model)

    def prefill(self, ids: torch.Tensor, pos: int, room: int) -> torch.Tensor:
        logits = forward_tokens(self.model, ids, self.cache, pos)
        self.used += ids.shape[1]
        return logits

    def decode(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        return self.prefill(token, pos, 0)


class StaticBuffer(KVBuffer):
    """One pre-allocated StaticCache for the video, the prompt and the answer.

    It is allocated at the first prompt, sized for it (at least `room` slots after the video),
    and grows by doubling when a turn needs more. Its logits equal the dynamic path's within
    rounding (float32 to 1e-5; tests/test_fast_decode.py).
    """

    def __init__(self, model: VocoModel, video: VideoCache, room: int = MIN_ROOM, compile: bool = False):
        super().__init__(model, video)
        self.compile, self.min_room = compile, room
        self.records_evidence = not compile
        self.step_forward = model.lm
        if compile:
            allow_recompiles(COMPILED_WIDTHS)
            self.step_forward = torch.compile(model.lm, dynamic=False)
        self.base = video.tokens(model)
        self.width = self.base
        self.cache = None

    def _allocate(self, room: int) -> None:
        """(Re)build the buffer with `room` slots after the video (at least the tokens used so far
        plus one). The old buffer is copied and freed one layer at a time, so growing needs one
        layer's worth of extra memory, not a second cache."""
        from transformers import StaticCache

        width = self.base + max(room, self.used + 1)
        if self.compile:
            width = compile_width(width)
        cache = StaticCache(config=self.model.text_config, max_cache_len=width)
        if self.cache is None:
            for i, (ki, vi) in enumerate(self.video.layer_states(self.model)):
                cache.update(ki, vi, i)
        else:  # keep the video and the turns so far
            filled = self.base + self.used
            for i, layer in enumerate(self.cache.layers):
                cache.update(layer.keys[:, :, :filled], layer.values[:, :, :filled], i)
                layer.keys = layer.values = None  # free as we go
        self.cache, self.width = cache, width
        self.allocated()

    def allocated(self) -> None:
        """Called after every (re)allocation (the graph buffer recaptures its step)."""

    def ensure_room(self, tokens: int) -> None:
        """Make room for `tokens` more tokens (allocating the buffer at the first call)."""
        if self.cache is None:
            self._allocate(max(self.min_room, tokens))
        elif tokens > self.width - self.base - self.used:
            self._allocate(max(2 * (self.width - self.base), self.used + tokens))

    def _forward(self, ids: torch.Tensor, pos: int, forward) -> torch.Tensor:
        n = ids.shape[1]
        dev = self.model.device
        positions = torch.arange(pos, pos + n, device=dev).view(1, n)
        mask = static_mask(self.base + self.used, n, self.width, self.model.dtype, dev)
        with torch.inference_mode():
            out = forward(input_ids=ids.to(dev), position_ids=positions, attention_mask=mask,
                          cache=self.cache, use_cache=True, logits_to_keep=1)
        self.used += n
        return out.logits[:, -1].float()

    def prefill(self, ids: torch.Tensor, pos: int, room: int) -> torch.Tensor:
        self.ensure_room(ids.shape[1] + room)
        return self._forward(ids, pos, self.model.lm)

    def decode(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        self.ensure_room(1)
        return self._forward(token, pos, self.step_forward)

    def crop(self, tokens: int) -> None:
        if self.cache is not None:
            super().crop(tokens)
