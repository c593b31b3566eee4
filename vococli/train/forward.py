"""The differentiable two-stage forward used for training and batch scoring.

Stage 1 runs every frame of every video in the batch as its own sequence
`BOS | image | separator | <voco> x K` at positions `arange(frame_len) + t*K` (frame t of its
video) and keeps the keys/values of the tokens text may see (`layout.text_visible`). Stage 2 runs
each text after its video's kept keys/values, at positions from `c0 + T*K` on. This is the
temporal layout of `layout.py`, computed frame by frame instead of in one long sequence: a test
checks it equals one forward with the block mask of `layout.voco_mask`.

The compressor (vococli.compressors) decides the in-frame mask, what the K slots hold and which
frame tokens the text sees: `voco` (only the VoCo tokens), `full` (every frame token: the upper
bound, and the first stage of the training curriculum) or `avgpool` (pooled image features
through a linear layer; the "Avg. Pool + Linear" baseline, whose layer is `module`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from vococli.compressors import Compressor, get_compressor
from vococli.layout import additive_mask, text_start
from vococli.families.base import VocoModel
from vococli.compress.stage1 import frame_embeddings, image_features, prefill_frames

IGNORE = -100  # target of positions that are not supervised


@dataclass
class FrameState:
    """Kept keys/values of the frames of several videos, frames of one video contiguous."""

    keys: list[torch.Tensor]  # per layer (F, Hkv, m, D); m = tokens per frame text may see
    values: list[torch.Tensor]
    first_frame: torch.Tensor  # (V,) index of each video's first frame
    n_frames: torch.Tensor  # (V,) frames per video


def encode_frames(model: VocoModel, pixels: torch.Tensor, n_frames: list[int],
                  compressor: str | Compressor = "voco", module: torch.nn.Module | None = None) -> FrameState:
    """Stage 1 for the frames of V videos, stacked in order: pixels (sum(n_frames), 3, S, S)."""
    dev = pixels.device
    counts = torch.tensor(n_frames, device=dev)
    # frame t of its video sits at arange(frame_len) + t*K
    t_in_video = torch.arange(pixels.shape[0], device=dev) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    keys, values = frame_kv(model, pixels, t_in_video, compressor, module)
    return FrameState(keys=keys, values=values, first_frame=counts.cumsum(0) - counts, n_frames=counts)


def frame_kv(model: VocoModel, pixels: torch.Tensor, t: torch.Tensor, compressor: str | Compressor = "voco",
             module: torch.nn.Module | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer the kept keys/values (F, Hkv, m, D) of frames (F, 3, S, S), frame i compressed as
    frame t[i] of its video (positions arange(frame_len) + t[i]*K)."""
    lay = model.layout
    feats = image_features(model, pixels)  # (F, n_image, H)
    embeds = frame_embeddings(model, feats)  # (F, frame_len, H)
    compressor = get_compressor(compressor)
    embeds = compressor.slot_embeddings(embeds, feats, lay, module)
    return prefill_frames(model, embeds, lay.k * t.to(pixels.device), compressor)


def text_hidden(model: VocoModel, state: FrameState, ids: torch.Tensor, lengths: torch.Tensor,
                video: torch.Tensor) -> torch.Tensor:
    """Stage 2: texts (B, N) (right-padded to `lengths`), text b after the frames of video[b].

    Returns the last hidden states (B, N, H).
    """
    lay = model.layout
    dev = ids.device
    b, n = ids.shape
    m = state.keys[0].shape[2]
    frames = state.n_frames[video]  # (B,)
    slots = frames * m  # cached tokens each text sees
    width = int(slots.max())
    # index of cached token s of text b in the flattened (F*m) axis
    s = torch.arange(width, device=dev)
    valid = s[None, :] < slots[:, None]  # (B, W)
    flat = (state.first_frame[video] * m)[:, None] + s[None, :]
    flat = torch.where(valid, flat, torch.zeros_like(flat))
    cache = DynamicCache(config=model.text_config)
    for i, (k, v) in enumerate(zip(state.keys, state.values)):
        hkv, d = k.shape[1], k.shape[3]
        # (F, Hkv, m, D) -> (Hkv, F*m, D): frame-major along the sequence axis
        kf = k.permute(1, 0, 2, 3).reshape(hkv, -1, d)
        vf = v.permute(1, 0, 2, 3).reshape(hkv, -1, d)
        cache.update(kf[:, flat].transpose(0, 1), vf[:, flat].transpose(0, 1), i)  # (B, Hkv, W, D)
    t = torch.arange(n, device=dev)
    text_ok = (t[None, :] <= t[:, None])[None] & (t[None, None, :] < lengths[:, None, None])  # (B, N, N)
    allowed = torch.cat([valid[:, None, :].expand(b, n, width), text_ok], dim=2)  # (B, N, W+N)
    dtype = model.language_model.get_input_embeddings().weight.dtype
    mask = additive_mask(allowed, dtype).view(b, 1, n, width + n)
    positions = (text_start(lay, 0) + frames * lay.k)[:, None] + t[None, :]
    embeds = model.language_model.get_input_embeddings()(ids)
    out = model.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                               cache=cache, use_cache=True)
    return out.last_hidden_state


def lm_head(model: VocoModel) -> torch.nn.Module:
    return model.lm.get_output_embeddings()


def answer_loss(model: VocoModel, state: FrameState, ids, lengths, video, targets) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised (answer) positions; targets (B, N), IGNORE elsewhere."""
    hidden = text_hidden(model, state, ids, lengths, video)
    sel = targets != IGNORE
    logits = lm_head(model)(hidden[sel])  # only where the loss is taken
    return F.cross_entropy(logits.float(), targets[sel])


@torch.no_grad()
def greedy_answers(model: VocoModel, state: FrameState, prompts: list[list[int]], video: list[int],
                   max_new_tokens: int = 8) -> list[list[int]]:
    """Greedy decoding of a batch of prompts, prompt b after the frames of video[b].

    Reruns the whole text each step (answers are short); stops at the end-of-sequence token.
    """
    dev = state.n_frames.device
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos
    seqs = [list(p) for p in prompts]
    answers: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    vid = torch.tensor(video, device=dev)
    for _ in range(max_new_tokens):
        lengths = torch.tensor([len(x) for x in seqs], device=dev)
        ids = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long, device=dev)
        for i, x in enumerate(seqs):
            ids[i, :len(x)] = torch.tensor(x)
        hidden = text_hidden(model, state, ids, lengths, vid)
        last = hidden[torch.arange(len(seqs), device=dev), lengths - 1]
        nxt = lm_head(model)(last).argmax(-1).tolist()
        for i, tok in enumerate(nxt):
            if done[i]:
                continue
            answers[i].append(tok)
            seqs[i].append(tok)
            done[i] = tok == eos
        if all(done):
            break
    return answers
