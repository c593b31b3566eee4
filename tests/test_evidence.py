"""Evidence: the frames an answer drew on, checked against the model's own attention weights."""

import json

import numpy as np
import pytest
import torch

from helpers import run
from vococli.layout import decode_mask
from vococli.answer.evidence import clock
from vococli.answer.opening import open_for_answering
from vococli.answer.settings import GenerationConfig
from vococli.cache.chunks import load_cache
from vococli.errors import UserError
from vococli.families.loading import load_model

GEN = GenerationConfig(max_new_tokens=6)
Q = "which shape moved?"


def reference_weights(ckpt, cache, prompt: list[int], answer: list[int]) -> np.ndarray:
    """Per-frame evidence from transformers' eager attention weights (output_attentions): for the
    rows that predict answer tokens, attention x value norm summed over heads and layers."""
    model = load_model(ckpt, device="cpu", dtype="float32", attn="eager")
    video = load_cache(cache, fingerprint=model.fingerprints)
    kv = video.past_key_values(model)
    slots = kv.get_seq_length()
    values = [layer.values[0].clone() for layer in kv.layers]  # (Hkv, slots, D) before the text is appended
    ids = torch.tensor([prompt + answer[:-1]])
    start = model.layout.c0 + video.n_frames * model.layout.k
    pos = torch.arange(start, start + ids.shape[1]).view(1, -1)
    with torch.no_grad():
        out = model.lm(input_ids=ids, position_ids=pos, attention_mask=decode_mask(slots, ids.shape[1], torch.float32),
                       cache=kv, use_cache=True, output_attentions=True)
    rows = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))
    total = torch.zeros(slots, dtype=torch.float64)
    for att, v in zip(out.attentions, values):
        groups = att.shape[1] // v.shape[0]
        norms = v.norm(dim=-1).repeat_interleave(groups, dim=0)  # (H, slots)
        total += (att[0, :, rows, :slots] * norms[:, None, :]).sum((0, 1)).double()
    per_frame = total.view(video.n_frames, -1).sum(-1).numpy()
    return per_frame / per_frame.sum()


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_evidence_equals_the_models_own_attention(tiny_ckpt, tiny_model, cache, decode):
    session = open_for_answering(cache, tiny_model, reserve=64, decode=decode, notice=lambda s: None)
    prompt = session.prompt_ids(Q)
    ans = session.ask(Q, GEN, evidence=True)
    ref = reference_weights(tiny_ckpt, cache, prompt, ans.token_ids)
    ev = ans.evidence
    assert ev.weights.shape == (session.video.n_frames,) and ev.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ev.weights, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ev.timestamps, session.video.timestamps)
    top = ev.top(3)
    assert [f["weight"] for f in top] == sorted((f["weight"] for f in top), reverse=True)
    assert top[0]["frame"] == int(np.argmax(ref))
    # recording changes nothing in the answer, and a later turn without it records nothing
    session.reset()
    plain = session.ask(Q, GEN)
    assert plain.token_ids == ans.token_ids and plain.evidence is None


def test_compiled_paths_refuse_evidence_in_one_line(tiny_model, cache):
    from vococli.answer.paths import evidence_decode

    assert evidence_decode("auto") == "dynamic" and evidence_decode("static") == "static"
    with pytest.raises(UserError, match="--evidence needs --decode dynamic or static"):
        evidence_decode("compiled")
    session = open_for_answering(cache, tiny_model, reserve=64, decode="compiled", notice=lambda s: None)
    with pytest.raises(UserError, match="evidence needs a decode path"):
        session.ask(Q, GEN, evidence=True)


def test_clock_format():
    assert clock(0) == "00:00:00.0" and clock(3723.46) == "01:02:03.5" and clock(10799.96) == "03:00:00.0"


def test_ask_evidence_json_and_plot(compressed, tiny_ckpt, tmp_path):
    cache, _ = compressed
    plot = tmp_path / "ev.png"
    r = run("ask", cache, Q, "--model", tiny_ckpt, "--max-new-tokens", "4", "--json", "--evidence-plot", plot)
    assert r.returncode == 0, r.stderr
    ans = json.loads(r.stdout)["answers"][0]
    top = ans["evidence"]["top"]
    assert len(top) == 5 and all(set(f) == {"frame", "seconds", "time", "weight"} for f in top)
    assert top[0]["time"] == clock(top[0]["seconds"])
    assert plot.stat().st_size > 5000 and "no thumbnails" in r.stderr  # the clip is not beside this cache
    r = run("ask", cache, Q, "--model", tiny_ckpt, "--max-new-tokens", "4", "--evidence")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("evidence: 00:00:")
    r = run("ask", cache, Q, "--model", tiny_ckpt, "--evidence", "--decode", "compiled")
    assert r.returncode != 0 and "--evidence needs --decode dynamic or static" in r.stderr
    assert "Traceback" not in r.stderr
