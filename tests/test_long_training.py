"""Hour-long training scenes assembled from a bank of grey frames equal compressing every frame."""

import math

import numpy as np
import pytest
import torch

from vococli.compress.pixels import to_pixels
from vococli.synth.scenes import Distractor, Obj, Scene, draw
from vococli.train.config import TrainConfig
from vococli.train.forward import answer_loss, encode_frames
from vococli.train.long import ANGLES, GreyBank, LongSettings, assemble, long_batch
from vococli.train.loop import train
from vococli.errors import UserError

CPU = torch.device("cpu")


def exact_angle_scene(n: int, events: list[tuple[int, Obj]]) -> Scene:
    """A needle-like scene whose distractor sits exactly on bank angles in every frame."""
    dis = Distractor("triangle", 2 * math.pi * 5 / ANGLES, 2 * math.pi * 7 / ANGLES)
    frames = [[dis.obj(t)] for t in range(n)]
    for at, obj in events:
        for t in range(at, at + 3):
            frames[t].append(obj)
    facts = {"distractor": {"shape": dis.shape, "phase": dis.phase, "speed": dis.speed},
             "events": [[at, at + 3] for at, _ in events]}
    return Scene("needle", (80, 60, 45), frames, [("needle_shape", "which coloured shape appeared in the video?",
                                                    events[0][1].shape)], facts)


def test_an_assembled_context_equals_compressing_every_frame(tiny_model):
    bank = GreyBank(tiny_model, codec=False)
    bank.refresh(tiny_model, "voco", None, CPU)
    scenes = [exact_angle_scene(30, [(4, Obj("circle", "red", 0.2, 0.5, 0.13))]),
              exact_angle_scene(45, [(10, Obj("square", "blue", 0.8, 0.5, 0.13)),
                                     (30, Obj("square", "green", 0.5, 0.2, 0.13))])]
    got = assemble(tiny_model, bank, scenes, np.random.default_rng(0), LongSettings(codec=False, grad_grey=3),
                   "voco", None, CPU)
    size = tiny_model.image.size
    frames = np.stack([draw(s, t, size) for s in scenes for t in range(len(s.frames))])
    ref = encode_frames(tiny_model, to_pixels(frames, tiny_model.image, CPU, torch.float32), [30, 45])
    assert got.state.n_frames.tolist() == [30, 45] and got.state.first_frame.tolist() == [0, 30]
    for a, b in zip(ref.keys + ref.values, got.state.keys + got.state.values):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    # the loss reaches the event frames' compression (gradients flow into the vision tower)
    loss = answer_loss(tiny_model, got.state, got.ids, got.lengths, got.video, got.targets)
    loss.backward()
    grad = next(tiny_model.llava.parameters()).grad
    assert grad is not None and grad.abs().sum() > 0
    tiny_model.llava.zero_grad(set_to_none=True)


def test_scene_lengths_follow_the_ramp_and_repeat_for_the_same_step(tiny_model):
    s = LongSettings(min_frames=18, max_frames=4000, scenes=6, ramp=100)
    assert s.limit(0) == 72 and s.limit(100) == 4000 and 72 < s.limit(50) < 4000
    bank = GreyBank(tiny_model, codec=True)
    bank.refresh(tiny_model, "voco", None, CPU)
    with torch.no_grad():
        a = long_batch(tiny_model, bank, s, 0, 3, 0, "voco", None, CPU)
        b = long_batch(tiny_model, bank, s, 0, 3, 0, "voco", None, CPU)
    assert a.state.n_frames.max() <= s.limit(3)
    assert torch.equal(a.ids, b.ids) and all(torch.equal(x, y) for x, y in zip(a.state.keys, b.state.keys))


def test_training_with_long_scenes_resumes_exactly(synth_data, tmp_path):
    base = dict(data=(str(synth_data),), init="tiny", batch_size=8, warmup_steps=2, threads=1, save_every=3,
                long_max=300, long_scenes=3, long_ramp=4)
    full = train(TrainConfig(out=str(tmp_path / "full"), steps=6, **base))

    def stop_at_4(st, *_):
        if st.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "half"), steps=6, **base), on_step=stop_at_4)
    resumed = train(TrainConfig(out=str(tmp_path / "half"), steps=6, **base), resume=True)
    assert [l for _, l in resumed.losses] == pytest.approx([l for _, l in full.losses], rel=1e-4)
    assert all(math.isfinite(l) for _, l in full.losses)


@pytest.mark.parametrize("settings, message", [
    (dict(long_max=10, long_min=18), "--long-frames 18:10"),
    (dict(long_max=100, long_kinds="needle,movie"), "--long-kinds"),
])
def test_bad_long_settings_are_one_line(synth_data, tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        train(TrainConfig(data=(str(synth_data),), out=str(tmp_path / "r"), init="tiny", steps=1, **settings))
