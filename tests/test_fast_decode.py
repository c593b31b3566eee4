"""Every decode path (key/value buffer) gives the same answers and logits as the plain one."""

import pytest
import torch

from helpers import check_within_rounding, random_video
from vococli.answer.buffers import DynamicBuffer, StaticBuffer, compile_width, static_mask
from vococli.answer.paths import DECODE_PATHS, decode_names, open_session
from vococli.answer.session import GenerationConfig, Session
from vococli.errors import UserError


def test_static_mask_opens_filled_slots_and_earlier_new_tokens():
    m = static_mask(used=3, new=2, width=7, dtype=torch.float32, device="cpu")
    open_ = (m[0, 0] == 0).int().tolist()
    assert open_ == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]]


def test_compile_width_rounds_up_to_four_sizes_per_octave():
    widths = [compile_width(w) for w in range(1, 20000)]
    assert all(0 <= c - w < max(64, w / 4) for w, c in zip(range(1, 20000), widths))
    assert len({compile_width(w) for w in range(4097, 8193)}) == 4
    assert compile_width(600) == compile_width(640) == 640  # nearby lengths share one compiled shape


def static_session(model, video, room, compile=False):
    return Session(model, video, buffer=StaticBuffer(model, video, room=room, compile=compile))


@pytest.mark.parametrize("room", [512, 3])
def test_static_session_answers_like_plain_session(tiny_model, room):
    """Same tokens over two turns and a reset, also when the buffer has to grow mid-answer (room=3)."""
    video = random_video(tiny_model, 5, seed=3)
    gen = GenerationConfig(max_new_tokens=12)
    plain, static = Session(tiny_model, video), static_session(tiny_model, video, room)
    for q in ["what is here?", "and after that?"]:
        a, b = plain.ask(q, gen), static.ask(q, gen)
        assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens
    assert static.used == plain.used
    plain.reset(), static.reset()
    assert plain.ask("what is here?", gen).token_ids == static.ask("what is here?", gen).token_ids


@pytest.mark.parametrize("room", [512, 1])
def test_static_logits_match_plain_logits(tiny_model, room):
    """room=1 and no room reserved at the prompt: every decode step has to grow the buffer."""
    video = random_video(tiny_model, 4, seed=5)
    plain, static = Session(tiny_model, video), static_session(tiny_model, video, room)
    ids = plain.prompt_ids("is there a cat?")
    torch.testing.assert_close(static.prefill(ids), plain.prefill(ids), atol=1e-5, rtol=1e-5)
    buffer = static.buffer
    widths = [buffer.width]
    for tok in [7, 9, 11, 13]:
        torch.testing.assert_close(static.decode_step(tok), plain.decode_step(tok), atol=1e-5, rtol=1e-5)
        widths.append(buffer.width)
    assert static.used == plain.used == len(ids) + 4
    if room == 1:
        assert widths[0] == buffer.base + len(ids) and widths[-1] > widths[0]  # full at the prompt, then grew


def test_decode_paths_by_name(tiny_model):
    video = random_video(tiny_model, 2)
    assert decode_names() == ["auto", "dynamic", "static", "graph", "compiled"]
    assert type(open_session(tiny_model, video, "auto").buffer) is DynamicBuffer  # CPU: the plain path
    assert type(open_session(tiny_model, video, "static").buffer) is StaticBuffer
    compiled = open_session(tiny_model, video, "compiled").buffer
    assert type(compiled) is StaticBuffer and compiled.compile  # no CUDA graph on the CPU
    with pytest.raises(UserError, match="^decode 'fastest': choose one of auto, dynamic") as e:
        open_session(tiny_model, video, "fastest")
    assert e.value.for_command_line().startswith("--decode 'fastest'")
    with pytest.raises(UserError, match="^decode graph needs a CUDA GPU"):
        open_session(tiny_model, video, "graph")
    assert DECODE_PATHS["graph"].needs_cuda and not DECODE_PATHS["static"].needs_cuda


def test_compiled_decode_answers_like_plain_session(tiny_model):
    """torch.compile'd decode step (the `compiled` path; no CUDA graph on CPU): same tokens over two
    turns, logits equal to float32 rounding, including a step that grows the buffer (a new shape)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile here, whatever earlier tests compiled
    graphs = counters["stats"]["unique_graphs"]
    video = random_video(tiny_model, 5, seed=4)
    gen = GenerationConfig(max_new_tokens=10)
    plain, compiled = Session(tiny_model, video), open_session(tiny_model, video, "compiled")
    for q in ["what is here?", "and after that?"]:
        assert plain.ask(q, gen).token_ids == compiled.ask(q, gen).token_ids
    plain, compiled = Session(tiny_model, video), static_session(tiny_model, video, 2, compile=True)
    ids = plain.prompt_ids("is there a cat?")
    torch.testing.assert_close(compiled.prefill(ids), plain.prefill(ids), atol=1e-5, rtol=1e-5)
    buffer = compiled.buffer
    width = buffer.width
    assert width == compile_width(width)
    for tok in range(7, 9 + width - buffer.base - len(ids)):  # past the end of the first buffer
        torch.testing.assert_close(compiled.decode_step(tok), plain.decode_step(tok), atol=1e-5, rtol=1e-5)
    assert buffer.width > width
    assert counters["stats"]["unique_graphs"] - graphs >= 2  # the steps were compiled: a graph per width


def test_compiled_decode_in_bf16_is_within_rounding(tiny_ckpt, tiny_model):
    check_within_rounding(tiny_ckpt, tiny_model, "cpu")
