"""4-bit answering weights: int4 computes with exactly the group-wise quantised weights, on every
answering path; choosing the kind from the command line."""

import pytest
import torch

from helpers import check_int4_linears, group_quantised, random_video, run
from vococli.answer.buffers import StaticBuffer, forward_tokens
from vococli.answer.session import GenerationConfig, Session
from vococli.families.loading import answering_model
from vococli.errors import UserError
from vococli.layout import text_start
from vococli.families.quantize import int4_group_size, weights_of

pytest.importorskip("torchao")








def prompt_logits(model, video):
    ids = torch.tensor([model.tokenizer("\\n USER: what? ASSISTANT:", add_special_tokens=False)["input_ids"]])
    return forward_tokens(model, ids, video.past_key_values(model), text_start(model.layout, video.n_frames))


def test_int4_decoder_computes_with_the_group_quantised_weights(tiny_ckpt, tiny_model):
    from vococli.families.loading import load_model

    q4 = load_model(tiny_ckpt, device="cpu", dtype="float32", vision=False, weights="int4")
    assert q4.weights == weights_of(q4.lm) == "int4" and q4.fingerprint == tiny_model.fingerprint
    ref = load_model(tiny_ckpt, device="cpu", dtype="float32", vision=False)
    linears = [m for m in ref.lm.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for lin in linears:
        lin.weight.data = group_quantised(lin.weight.data, int4_group_size(lin.in_features))
    video = random_video(tiny_model, 3)
    expected, got = prompt_logits(ref, video), prompt_logits(q4, video)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    full = prompt_logits(tiny_model, video)
    assert not torch.allclose(got, full, atol=1e-3)  # the weights really are 4-bit
    assert torch.nn.functional.cosine_similarity(got, full).item() > 0.9


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int4_linears_hold_the_reference_weights(tiny_ckpt, dtype):
    from vococli.families.loading import load_model

    full = load_model(tiny_ckpt, device="cpu", dtype=dtype, vision=False)
    assert check_int4_linears(answering_model(full, "int4"), full) == 14  # 2 layers x 7 Linears


def test_answering_model_quantises_a_copy(tiny_model):
    video = random_video(tiny_model, 2)
    before = prompt_logits(tiny_model, video)
    q4 = answering_model(tiny_model, "int4")
    assert q4.weights == "int4" and weights_of(q4.lm) == "int4"
    assert weights_of(tiny_model.language_model) == "full"
    torch.testing.assert_close(prompt_logits(tiny_model, video), before, atol=0, rtol=0)
    fired = []  # a hook added to the original later runs in the original only
    handle = tiny_model.language_model.layers[-1].register_forward_pre_hook(lambda *a: fired.append(1))
    try:
        prompt_logits(q4, video)
        assert not fired
        prompt_logits(tiny_model, video)
        assert fired
    finally:
        handle.remove()
    with pytest.raises(UserError, match="^weights 'int3': choose one of full, nf4, int4$"):
        answering_model(tiny_model, "int3")


@pytest.mark.parametrize("weights", ["nf4", "int4"])
def test_four_bit_answers_like_full_precision_on_cpu(tiny_ckpt, tiny_model, weights):
    from helpers import check_four_bit_against_full_precision
    from vococli.families.loading import load_model

    if weights == "nf4":
        pytest.importorskip("bitsandbytes")
    full = load_model(tiny_ckpt, device="cpu", dtype="float32", vision=False)
    q4 = load_model(tiny_ckpt, device="cpu", dtype="float32", vision=False, weights=weights)
    assert weights_of(q4.lm) == weights
    check_four_bit_against_full_precision(q4, full, random_video(tiny_model, 4, seed=3))


def test_int4_answers_alike_on_every_cpu_path(tiny_model):
    """The static buffer and the compiled step run on int4 weights (a tensor subclass) and give the
    plain path's tokens and logits."""
    import torch._dynamo

    q4 = answering_model(tiny_model, "int4")
    video = random_video(q4, 4, seed=6)
    gen = GenerationConfig(max_new_tokens=10)
    plain = Session(q4, video).ask("what is here?", gen).token_ids
    assert Session(q4, video, buffer=StaticBuffer(q4, video)).ask("what is here?", gen).token_ids == plain
    torch._dynamo.reset()
    p, c = Session(q4, video), Session(q4, video, buffer=StaticBuffer(q4, video, compile=True))
    ids = p.prompt_ids("what is here?")
    torch.testing.assert_close(c.prefill(ids), p.prefill(ids), atol=1e-5, rtol=1e-5)
    for tok in [5, 8, 13]:
        torch.testing.assert_close(c.decode_step(tok), p.decode_step(tok), atol=1e-5, rtol=1e-5)


def test_ask_with_int4_weights(compressed, tiny_ckpt):
    cache, _ = compressed
    r = run("ask", cache, "what is here?", "--model", tiny_ckpt, "--weights", "int4", "--max-new-tokens", "4",
            "--json")
    assert r.returncode == 0, r.stderr
    assert "torchao" not in r.stderr and "Failed to load" not in r.stderr
    r = run("ask", cache, "what?", "--model", tiny_ckpt, "--weights", "int4", "--load-4bit")
    assert r.returncode == 1 and "--load-4bit means --weights nf4" in r.stderr
    r = run("ask", cache, "what?", "--model", tiny_ckpt, "--weights", "int2")
    assert r.returncode == 1 and "choose one of full, nf4, int4" in r.stderr
    r = run("ask", cache, "what?", "--model", tiny_ckpt, "--weights", "full", "--load-4bit")
    assert r.returncode == 1 and "--load-4bit means --weights nf4" in r.stderr
    if not torch.cuda.is_available():  # refused before the model loads
        r = run("ask", cache, "what?", "--model", "/no/such/model", "--decode", "graph")
        assert r.returncode == 1 and "--decode graph needs a CUDA GPU" in r.stderr
