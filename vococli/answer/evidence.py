"""Evidence: the frames an answer drew on, from its attention over each frame's cached tokens.

While an answer is decoded, every query that predicts an answer token (the prompt's last token,
then each answer token fed back) attends over the video's cached keys. `recording` swaps the
language model's attention function for one that computes the same output with the model's own
implementation and also adds up, for that query row, the attention weights on every frame's
cached tokens (softmax over everything the row sees, summed over heads and layers), each weight
scaled by the norm of the value it reads (what the attended token actually contributes to the
output: attention alone also counts weight on tokens whose values are near zero). Per frame the
weights are summed over its tokens and normalised to sum to 1 over the video.

It costs one extra score row per layer and token (see docs/performance.md) and needs a decode
path that runs the attention in Python on each step (`dynamic`, `static`); the paths that replay
a captured graph or a compiled step (`graph`, `compiled`) cannot record it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

NAME = "vococli_evidence"
TOP = 5  # frames listed by default


def clock(seconds: float) -> str:
    """HH:MM:SS.s"""
    tenths = int(round(max(seconds, 0.0) * 10))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    return f"{h:02d}:{m:02d}:{rest // 10:02d}.{rest % 10}"


@dataclass
class Evidence:
    """Per-frame weights (summing to 1) of one answer over the frames of its cache."""

    weights: np.ndarray  # (T,)
    timestamps: np.ndarray  # (T,) seconds

    def top(self, n: int = TOP) -> list[dict]:
        order = np.argsort(-self.weights, kind="stable")[:n]
        return [{"frame": int(i), "seconds": round(float(self.timestamps[i]), 3), "time": clock(self.timestamps[i]),
                 "weight": round(float(self.weights[i]), 4)} for i in order]

    def to_dict(self, n: int = TOP) -> dict:
        return {"method": "attention x value norm, summed over layers and heads", "top": self.top(n)}

    def line(self, n: int = TOP) -> str:
        return "evidence: " + ", ".join(f"{f['time']} ({f['weight']:.2f})" for f in self.top(n))


class Recorder:
    """Adds up the rows of one answer: rows[i] (slots,) for the query that predicts answer token i."""

    def __init__(self, slots: int):
        self.slots = slots
        self.rows: list[torch.Tensor] = []
        self.norms: dict[int, torch.Tensor] = {}

    def add(self, layer: int, query, key, value, mask, scaling: float) -> None:
        b, h, _, d = query.shape
        hkv = key.shape[1]
        q = query[:, :, -1:].to(key.dtype).view(b, hkv, h // hkv, d)  # the row that predicts the next token
        scores = (q @ key.transpose(-1, -2)).float() * scaling  # (B, Hkv, groups, kv): no copy of the keys
        if mask is not None:
            m = mask[..., -1, : key.shape[2]].view(b, 1, 1, -1)
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        w = torch.softmax(scores, dim=-1)[0, :, :, : self.slots].sum(1)  # (Hkv, slots), summed over each group
        if layer not in self.norms:  # the video's values never change during an answer
            self.norms[layer] = value[0, :, : self.slots].float().norm(dim=-1)  # (Hkv, slots)
        row = (w * self.norms[layer]).sum(0)
        if layer == 0 or not self.rows:
            self.rows.append(row)
        else:
            self.rows[-1] = self.rows[-1] + row

    def evidence(self, n_answer_tokens: int, per_frame: int, timestamps: np.ndarray) -> Evidence | None:
        rows = self.rows[:n_answer_tokens]
        if not rows:
            return None
        total = torch.stack(rows).sum(0).view(-1, per_frame).sum(-1).double().cpu().numpy()
        s = total.sum()
        return Evidence(total / s if s > 0 else total, np.asarray(timestamps, dtype=np.float64))


_active: list[tuple[Recorder, str]] = []  # the recorder and the attention it wraps (one answer at a time)


def _recording_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    recorder, inner = _active[-1]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    recorder.add(getattr(module, "layer_idx", 0), query, key, value, attention_mask, scale)
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(inner, eager_attention_forward)
    return fn(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, _recording_attention)


def _attention_configs(lm: torch.nn.Module) -> list:
    seen: dict[int, object] = {}
    for m in lm.modules():
        if hasattr(m, "layer_idx") and hasattr(m, "config"):
            seen.setdefault(id(m.config), m.config)
    return list(seen.values())


@contextmanager
def recording(lm: torch.nn.Module, slots: int):
    """Record the evidence rows of every forward of `lm` inside the block; yields the Recorder."""
    _register()
    configs = _attention_configs(lm)
    inner = configs[0]._attn_implementation if configs else "sdpa"
    recorder = Recorder(slots)
    _active.append((recorder, inner))
    previous = [c._attn_implementation_internal for c in configs]
    for c in configs:
        c._attn_implementation_internal = NAME
    try:
        yield recorder
    finally:
        for c, p in zip(configs, previous):
            c._attn_implementation_internal = p
        _active.pop()
