"""The decode loop: tokens kept on the device and read in batches, the end-of-sequence token
taken back out of a batch, an interrupted answer leaving no trace, and on-device sampling."""

import pytest
import torch

from helpers import random_video
from vococli.answer.buffers import StaticBuffer
from vococli.answer.sampling import Sampler
from vococli.answer.session import GenerationConfig, Session


def conversation(session, gen, questions=("what is here?", "and after that?", "why?")):
    answers = [session.ask(q, gen) for q in questions]
    return [a.token_ids for a in answers], session.used, list(session.pending)


@pytest.mark.parametrize("every", [2, 3, 8])
@pytest.mark.parametrize("static", [False, True])
def test_reading_tokens_in_batches_changes_nothing(tiny_model, every, static):
    """The host reading every `every` tokens (the GPU setting) gives the answers, the state and the
    follow-up turns of reading every token, also when the end of an answer falls inside a batch."""
    video = random_video(tiny_model, 4, seed=9)
    results = []
    for read_every in (1, every):
        for max_new in (3, 7, 20):
            buffer = StaticBuffer(tiny_model, video, room=4) if static else None
            s = Session(tiny_model, video, buffer=buffer)
            s.buffer.read_every = read_every
            results.append(conversation(s, GenerationConfig(max_new_tokens=max_new)))
    half = len(results) // 2
    assert results[:half] == results[half:]


def test_end_of_sequence_inside_a_read_batch_is_taken_back(tiny_model):
    """A model that says end-of-sequence at once after a few tokens: with batches of 8 the loop fed
    tokens past it, and must crop them (state equal to reading every token)."""
    video = random_video(tiny_model, 3, seed=1)
    eos = tiny_model.tokenizer.eos_token_id
    first = Session(tiny_model, video).ask("what is here?", GenerationConfig(max_new_tokens=4)).token_ids

    class EndsAfterTwo(Session):  # the third generated token is end-of-sequence
        def decode_step(self, token):
            logits = super().decode_step(token)
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 2:
                logits = logits.clone()
                logits[..., eos] = logits.max() + 10
            return logits

    ref, batched = EndsAfterTwo(tiny_model, video), EndsAfterTwo(tiny_model, video)
    batched.buffer.read_every = 8
    a = ref.ask("what is here?", GenerationConfig(max_new_tokens=20))
    b = batched.ask("what is here?", GenerationConfig(max_new_tokens=20))
    assert a.token_ids == b.token_ids == first[:2] + [eos] and a.finished and b.finished
    assert ref.used == batched.used == a.prompt_tokens + 2  # eos itself is not in the state yet
    assert ref.pending == batched.pending == [eos]
    ids = ref.prompt_ids("and then?")
    torch.testing.assert_close(ref.prefill(ids), batched.prefill(ids))


def test_an_answer_stopped_midway_leaves_no_trace(tiny_model):
    video = random_video(tiny_model, 3, seed=2)
    gen = GenerationConfig(max_new_tokens=12)
    s = Session(tiny_model, video)
    first = s.ask("what is here?", gen)
    used, pending, messages = s.used, list(s.pending), list(s.messages)
    stream = s.generate(s.prompt_ids("and then?"), gen)
    next(stream), next(stream)
    stream.close()  # what Ctrl-C or a dropped client does
    assert (s.used, s.pending, s.messages) == (used, pending, messages)
    fresh = Session(tiny_model, video)
    fresh.ask("what is here?", gen)
    assert s.ask("and then?", gen).token_ids == fresh.ask("and then?", gen).token_ids
    assert first.token_ids


def test_greedy_sampler_keeps_the_token_on_the_device():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    token = Sampler(0.0, 1.0, 0, 4, "cpu")(logits)
    assert token.shape == (1, 1) and token.dtype == torch.long and int(token) == 1


def test_sampler_follows_the_nucleus_distribution():
    """Frequencies over many seeds against the truncated, renormalised softmax written out here."""
    logits = torch.tensor([[2.0, 1.5, 0.5, 0.0, -1.0, -3.0]])
    t, top_p = 0.8, 0.9
    p = torch.softmax(logits[0] / t, -1)
    order = p.argsort(descending=True)
    mass, keep = 0.0, []
    for i in order.tolist():  # the smallest set of most likely tokens with mass >= top_p
        keep.append(i)
        mass += float(p[i])
        if mass >= top_p:
            break
    want = torch.zeros_like(p)
    want[keep] = p[keep] / p[keep].sum()
    n = 4000
    counts = torch.zeros_like(p)
    for seed in range(n):
        counts[int(Sampler(t, top_p, seed, 1, "cpu")(logits))] += 1
    assert counts[[i for i in range(6) if i not in keep]].sum() == 0  # outside the nucleus: never
    assert (counts / n - want).abs().max() < 0.03  # ~4 standard errors at n=4000


def test_sampler_is_seeded_per_answer():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    draws = lambda seed: [int(s(logits)) for s in [Sampler(1.0, 1.0, seed, 8, "cpu")] for _ in range(8)]
    assert draws(3) == draws(3) and draws(3) != draws(4)
