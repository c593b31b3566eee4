"""Stage 2 behaviour: multi-turn state, context budget, sampling, preprocessing."""

import numpy as np
import pytest
import torch

from vococli.answer.buffers import forward_tokens
from vococli.answer.session import GenerationConfig, Session
from vococli.errors import UserError
from vococli.layout import text_start
from vococli.families.base import ImageSpec
from vococli.compress.pixels import to_pixels
from vococli.cache.kv import fit_to_context
from helpers import random_video




def test_second_turn_equals_fresh_forward_over_whole_conversation(tiny_model):
    """A follow-up fed into the kept state gives the logits of feeding every token at once."""
    video = random_video(tiny_model, 3)
    s = Session(tiny_model, video)
    ids1 = s.prompt_ids("what is first?")
    ans = s.ask("what is first?", GenerationConfig(max_new_tokens=5))
    ids2 = s.prompt_ids("and then?")  # starts with the answer's last token (and eos) not yet fed
    kept = s.prefill(ids2)
    every = ids1 + ans.token_ids[:-1] + ids2
    fresh = forward_tokens(tiny_model, torch.tensor([every]), video.past_key_values(tiny_model),
                           text_start(tiny_model.layout, 3))
    torch.testing.assert_close(kept, fresh, atol=1e-4, rtol=1e-4)
    assert ids2[0] == ans.token_ids[-1]


def test_reset_forgets_turns(tiny_model):
    s = Session(tiny_model, random_video(tiny_model, 2))
    gen = GenerationConfig(max_new_tokens=4)
    a = s.ask("q?", gen)
    s.ask("more?", gen)
    s.reset()
    b = s.ask("q?", gen)
    assert a.token_ids == b.token_ids and s.used > 0
    assert s.buffer.cache.get_seq_length() == 2 * tiny_model.layout.k + s.used


def test_sampling_is_seeded(tiny_model):
    s = Session(tiny_model, random_video(tiny_model, 2))
    hot = GenerationConfig(max_new_tokens=12, temperature=1.5, seed=7)
    a = s.ask("q?", hot).token_ids
    s.reset()
    b = s.ask("q?", hot).token_ids
    s.reset()
    c = s.ask("q?", GenerationConfig(max_new_tokens=12, temperature=1.5, seed=8)).token_ids
    assert a == b and a != c


def test_context_budget_fails_with_advice_or_subsamples(tiny_model):
    fit = (tiny_model.max_positions - tiny_model.layout.c0 - 200) // tiny_model.layout.k
    video = random_video(tiny_model, fit + 10)
    with pytest.raises(UserError, match=f"at most {fit} frames fit"):
        fit_to_context(tiny_model, video, 200, subsample=False)
    notes = []
    small = fit_to_context(tiny_model, video, 200, subsample=True, notice=notes.append)
    assert small.n_frames == fit and "evenly spaced" in notes[0]
    assert small.timestamps[0] == 0 and small.timestamps[-1] == fit + 9
    assert fit_to_context(tiny_model, random_video(tiny_model, 5), 200, False).n_frames == 5
    with pytest.raises(UserError, match="shorten the question or lower --max-new-tokens"):
        fit_to_context(tiny_model, video, tiny_model.max_positions, subsample=True)


def test_preprocessing_matches_llava_reference():
    """Pad-to-square with the mean colour, resize, normalise: as LLaVA's own image processor does."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from vococli.families.tiny import image_processor_config

    cfg = image_processor_config(48)
    cfg.pop("image_processor_type")
    ref_proc = LlavaImageProcessorPil(**cfg)
    rng = np.random.default_rng(0)
    frame = (rng.random((30, 70, 3)) * 255).astype(np.uint8)
    frame[:, :35] = [200, 30, 40]  # structure, not only noise
    ref = ref_proc(images=[frame], return_tensors="pt")["pixel_values"][0]
    spec = ImageSpec(size=48, mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))
    got = to_pixels(frame[None], spec, torch.device("cpu"), torch.float32)[0]
    assert got.shape == ref.shape == (3, 48, 48)
    # padding rows are exactly the mean colour in both (0 after normalisation, up to uint8 rounding)
    assert got[:, :5].abs().max() < 0.02 and ref[:, :5].abs().max() < 0.02
    assert (got - ref).abs().mean() < 0.05  # bicubic kernels of PIL and torch differ slightly


def test_four_bit_on_cpu_stays_close_to_full_precision(tiny_ckpt, tiny_model):
    pytest.importorskip("bitsandbytes")
    from vococli.families.loading import load_model

    q4 = load_model(tiny_ckpt, device="cpu", dtype="float32", vision=False, weights="nf4")
    assert type(q4.lm.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert q4.llava is None and q4.fingerprint == tiny_model.fingerprint
    video = random_video(tiny_model, 3)
    ids = torch.tensor([tiny_model.tokenizer("\\n USER: what? ASSISTANT:", add_special_tokens=False)["input_ids"]])
    pos = text_start(tiny_model.layout, 3)
    full = forward_tokens(tiny_model, ids, video.past_key_values(tiny_model), pos)
    quant = forward_tokens(q4, ids, video.past_key_values(q4), pos)
    assert torch.nn.functional.cosine_similarity(full, quant).item() > 0.9
    assert not torch.equal(full, quant)


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"max_new_tokens": -1}, {"temperature": -1.0},
                                 {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": float("nan")},
                                 {"top_p": 1.5}])
def test_generation_settings_are_checked_where_they_are_made(bad):
    """The library refuses what the command line refuses (the CLI builds the same object)."""
    (name,) = bad
    with pytest.raises(UserError, match=f"^{name} must") as e:
        GenerationConfig(**bad)
    assert e.value.for_command_line().startswith("--" + name.replace("_", "-") + " must")


def test_a_question_must_be_text(tiny_model):
    with pytest.raises(UserError, match="a question is text"):
        Session(tiny_model, random_video(tiny_model, 2)).ask(None)
