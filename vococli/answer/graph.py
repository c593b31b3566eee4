"""The static buffer with its decode step captured once as a CUDA graph and replayed per token.

Replaying a graph removes the Python and kernel-launch overhead that bounds decoding of a batch
of one. The token, its position and the mask are read from static tensors, so a token sampled on
the device is fed back without the host reading it.
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from vococli.answer.buffers import MIN_ROOM, StaticBuffer
from vococli.cache.kv import VideoCache
from vococli.errors import UserError
from vococli.families.base import VocoModel


class GraphBuffer(StaticBuffer):
    """A StaticBuffer whose decode step is a CUDA graph (of the torch.compile'd step with
    `compile=True`). Logits equal the plain path's within rounding (tests/test_gpu.py)."""

    def __init__(self, model: VocoModel, video: VideoCache, room: int = MIN_ROOM, compile: bool = False):
        if model.device.type != "cuda":
            raise UserError("graph decoding needs a CUDA device")
        self.decoder: GraphDecoder | None = None
        super().__init__(model, video, room, compile)
        self.records_evidence = False  # the decode step replays a captured graph

    def allocated(self) -> None:
        self.decoder = GraphDecoder(self.model, self.cache, self.width, self.step_forward)

    def decode(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        self.ensure_room(1)
        logits = self.decoder.step(token, self.base + self.used, pos)
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

    def _set(self, token: torch.Tensor, filled: int, pos: int) -> None:
        self.ids.copy_(token.view(1, 1), non_blocking=True)  # device to device: no host read
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
    def step(self, token: torch.Tensor, filled: int, pos: int) -> torch.Tensor:
        """Logits (1, V) after `token` (1, 1) at position `pos` written into slot `filled`."""
        self._set(token, filled, pos)
        with torch.cuda.device(self.model.device):  # the model's GPU, also when it is not the current one
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.filled += 1  # the mask now has to open this slot for the next token too
        self.mask[..., self.filled] = 0
        return self.logits.clone()  # the graph overwrites its output tensor at the next replay
