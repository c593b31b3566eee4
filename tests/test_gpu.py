"""The same equivalences on a CUDA GPU in bf16, and the 4-bit answering path (skipped without CUDA)."""

import pytest
import torch

from test_equivalence import one_forward_logits, pixels_for, text_ids, two_stage_logits
from vococli.answer import GenerationConfig, Session
from vococli.model import load_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_two_stage_equivalence_bf16(tiny_ckpt, attn):
    model = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", attn=attn)
    pixels, ids = pixels_for(model, 4, seed=1).to("cuda", torch.bfloat16), text_ids(model).cuda()
    ref = one_forward_logits(model, pixels, ids)
    got = two_stage_logits(model, pixels, ids)
    assert (ref - got).abs().max() < 5e-2 * max(1.0, ref.abs().max().item())


def test_four_bit_answers(tiny_ckpt, tiny_model):
    from test_answer import random_video

    fp = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False)
    q4 = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False, load_4bit=True)
    assert "4bit" in type(q4.lm.model.layers[0].mlp.down_proj).__name__.lower()
    video = random_video(tiny_model, 4)
    gen = GenerationConfig(max_new_tokens=8)
    a = Session(fp, video).ask("what is here?", gen)
    b = Session(q4, video).ask("what is here?", gen)
    assert len(a.token_ids) >= 1 and len(b.token_ids) >= 1
