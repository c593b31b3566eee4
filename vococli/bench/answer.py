"""`vococli bench`, answering: the paper's Table 7 and answering over long caches.

Table 7 answers one question from (a) the image tokens with no cache, (b) their cached
keys/values and (c) K VoCo tokens. The long-cache rows time the first token and decoding over
minutes of 1-fps video, on the plain (dynamic cache) path and the pre-allocated + CUDA-graph path,
with peak memory and the decode limit that memory bandwidth implies.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from vococli.answer.buffers import StaticBuffer, forward_tokens
from vococli.answer.opening import open_for_answering
from vococli.answer.session import Session
from vococli.bench.timing import BenchConfig, PeakMemory, gib, module_bytes, sync, timed
from vococli.layout import text_start
from vococli.families.base import VocoModel
from vococli.compress.stage1 import frame_embeddings, image_features
from vococli.cache.kv import VideoCache

QUESTION = "What happens in the video after the person puts the red cup on the table, and why?"


def random_cache(model: VocoModel, frames: int, seed: int = 0) -> VideoCache:
    """VoCo keys/values of `frames` frames with random contents, in host memory like a loaded cache."""
    tc = model.text_config
    d = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    shape = (tc.num_hidden_layers, frames, tc.num_key_value_heads, model.layout.k, d)
    g = torch.Generator(device=model.device).manual_seed(seed)
    keys = torch.randn(shape, generator=g, device=model.device, dtype=model.dtype).cpu()
    values = torch.randn(shape, generator=g, device=model.device, dtype=model.dtype).cpu()
    return VideoCache(keys=keys, values=values, timestamps=np.arange(frames, dtype=float))


def answer_once(session: Session, ids: list[int], n_tokens: int) -> tuple[float, float]:
    """Prefill `ids` and decode exactly `n_tokens` greedy tokens (end-of-sequence ignored), each
    fed back on the device as the decode loop does. Returns (time to first token, decode seconds
    for the remaining tokens)."""
    session.reset()
    dev = session.model.device
    sync(dev)
    t0 = time.perf_counter()
    token = session.prefill(ids, n_tokens).argmax(-1, keepdim=True)
    sync(dev)
    t1 = time.perf_counter()
    for _ in range(n_tokens - 1):
        token = session.decode_step(token).argmax(-1, keepdim=True)
    sync(dev)
    return t1 - t0, time.perf_counter() - t1


def measure_answering(session: Session, ids: list[int], cfg: BenchConfig) -> dict:
    answer_once(session, ids, cfg.answer_tokens)  # warm-up (captures the graph when there is one)
    runs = [answer_once(session, ids, cfg.answer_tokens) for _ in range(cfg.repeats)]
    ttft = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    total = statistics.median(r[0] + r[1] for r in runs)
    row = {"ttft_ms": round(ttft * 1000, 2), "decode_tok_s": round((cfg.answer_tokens - 1) / decode, 1),
           "answer_ms": round(total * 1000, 1)}
    buffer = session.buffer
    decoder = getattr(buffer, "decoder", None)
    if decoder is not None and decoder.graph is not None:
        # the GPU time of the captured step alone: what the decode rate would be with no host work
        session.reset()
        session.prefill(ids, cfg.answer_tokens)
        steps = min(16, buffer.width - buffer.base - buffer.used - 1)
        if steps > 0:
            row["graph_only_tok_s"] = round(1000 / decoder.replay_ms(steps), 1)
            buffer.cache.crop(-steps)  # the replays wrote past what the buffer counts as used
        session.reset()
    return row


def kv_bytes(model: VocoModel, tokens: int) -> int:
    tc = model.text_config
    d = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return 2 * tc.num_hidden_layers * tc.num_key_value_heads * d * tokens * torch.finfo(model.dtype).bits // 8


def table7(cfg: BenchConfig, model: VocoModel, lm: VocoModel) -> list[dict]:
    """Answering one question from (a) the image tokens, no cache; (b) their cached keys/values;
    (c) the K VoCo tokens' cached keys/values: the first token (prefill) and a whole answer of
    `answer_tokens` tokens, on the plain path. The vision tower is not counted in any row."""
    from transformers import DynamicCache

    dev, lay = cfg.device, model.layout
    ids = lm.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    n = cfg.answer_tokens
    s = model.image.size
    with torch.inference_mode():
        feats = image_features(model, torch.randn(1, 3, s, s, device=dev, dtype=model.dtype))
        image_embeds = frame_embeddings(model, feats)[:, : lay.c0]  # BOS, image, separator
        q_embeds = model.language_model.get_input_embeddings()(torch.tensor([ids], device=dev))

    def generate(cache, first_logits_fn, start_pos, count):
        logits = first_logits_fn()
        token, pos = int(logits.argmax(-1)), start_pos
        for _ in range(count - 1):
            logits = forward_tokens(lm, torch.tensor([[token]]), cache, pos)
            token, pos = int(logits.argmax(-1)), pos + 1

    def no_cache(count):
        cache = DynamicCache(config=lm.text_config)
        seq = torch.cat([image_embeds, q_embeds], 1)
        with torch.inference_mode():
            out = lm.lm(inputs_embeds=seq, cache=cache, use_cache=True, logits_to_keep=1)
        generate(cache, lambda: out.logits[:, -1], seq.shape[1], count)

    with torch.inference_mode():
        full = DynamicCache(config=lm.text_config)
        lm.lm(inputs_embeds=image_embeds, cache=full, use_cache=True, logits_to_keep=1)
        image_kv = [(layer.keys.clone(), layer.values.clone()) for layer in full.layers]

    def image_cached(count):
        cache = DynamicCache(config=lm.text_config)
        for i, (k, v) in enumerate(image_kv):
            cache.update(k, v, i)
        generate(cache, lambda: forward_tokens(lm, torch.tensor([ids]), cache, lay.c0), lay.c0 + len(ids), count)

    # the VoCo cache of one frame, on the device like the image tokens' cache of (b)
    voco_kv = list(random_cache(lm, 1).layer_states(lm))

    def voco_cached(count):
        cache = DynamicCache(config=lm.text_config)
        for i, (k, v) in enumerate(voco_kv):
            cache.update(k, v, i)
        start = text_start(lay, 1)
        generate(cache, lambda: forward_tokens(lm, torch.tensor([ids]), cache, start), start + len(ids), count)

    rows = []
    for name, tokens, fn in [("(a) baseline: image tokens, no cache", lay.c0 + len(ids), no_cache),
                             ("(b) full caching: image tokens' KV", lay.c0, image_cached),
                             (f"(c) VoCo: {lay.k} tokens' KV", lay.k, voco_cached)]:
        with PeakMemory(dev) as mem:
            first = timed(lambda: fn(1), dev, cfg.repeats)
            t = timed(lambda: fn(n), dev, cfg.repeats)
        rows.append({"method": name, "cached_tokens": 0 if fn is no_cache else tokens,
                     "cache_mib": 0.0 if fn is no_cache else round(kv_bytes(lm, tokens) / 2**20, 3),
                     "first_token_ms": round(first * 1000, 2), "answer_ms": round(t * 1000, 1),
                     "peak_gib": gib(mem.extra)})
    for r in rows:
        r["first_token_vs_baseline"] = round(r["first_token_ms"] / rows[0]["first_token_ms"], 3)
        r["vs_baseline"] = round(r["answer_ms"] / rows[0]["answer_ms"], 3)
    return rows


def long_caches(cfg: BenchConfig, models: dict[str, VocoModel], bandwidth_gb_s: float | None,
                rows: list | None = None, on_row: Callable[[], None] = lambda: None) -> list[dict]:
    """Time to first token and decode speed over caches of `cfg.minutes` of 1-fps video; rows are
    appended to `rows` as they are measured and `on_row()` is called after each."""
    rows = [] if rows is None else rows
    some = next(iter(models.values()))
    ids = some.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    paths = ["dynamic", "graph"] if cfg.device.type == "cuda" else ["dynamic", "static"]
    for minutes in cfg.minutes:
        compiled = cfg.compile and minutes == max(cfg.minutes)
        frames = int(round(minutes * 60))
        video = random_cache(some, frames)
        for weights, lm in models.items():
            wbytes = module_bytes(lm.lm) - module_bytes(lm.language_model.embed_tokens)
            limit = None
            if bandwidth_gb_s:
                per_token = wbytes + kv_bytes(lm, frames * lm.layout.k + len(ids) + cfg.answer_tokens)
                limit = round(bandwidth_gb_s * 1e9 / per_token, 1)
            for path in paths + (["compiled"] if compiled else []):
                row = {"minutes": minutes, "frames": frames, "cache_gib": gib(kv_bytes(lm, frames * lm.layout.k)),
                       "weights": weights, "path": path}
                session = None
                try:
                    with PeakMemory(cfg.device) as mem:
                        t0 = time.perf_counter()
                        session = open_for_answering(video, lm, reserve=len(ids) + cfg.answer_tokens + 24, decode=path)
                        if isinstance(session.buffer, StaticBuffer):  # filled at the first prompt: count it in the load time
                            session.buffer.ensure_room(len(ids) + cfg.answer_tokens)
                        sync(cfg.device)
                        row["load_s"] = round(time.perf_counter() - t0, 3)
                        row.update(measure_answering(session, ids, cfg))
                        session = None
                    row["peak_gib"] = gib(None if mem.extra is None else module_bytes(lm.lm) + mem.extra)
                    if limit:
                        row["decode_limit_tok_s"] = limit
                        row["share_of_limit"] = round(row["decode_tok_s"] / limit, 3)
                except Exception as e:  # one failing configuration must not hide the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                finally:
                    session = None  # free its buffers before the next configuration
                if cfg.device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                on_row()
        del video
    return rows
