"""Video reading: true timestamps, sampling plans, every real clip, the corrupt clip."""

import numpy as np
import pytest

from conftest import REALDATA, ROOT
from vococli.errors import UserError
from vococli.video.reader import Sampling, VideoReader, plan_frames

CLIPS = sorted((REALDATA / "videos").glob("*")) if (REALDATA / "videos").is_dir() else []


def pyav_frames(path):
    """Reference: decode every frame with PyAV, skipping packets that fail."""
    import av

    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for packet in c.demux(s):
            try:
                for f in packet.decode():
                    out.append(float(f.pts * s.time_base))
            except av.error.InvalidDataError:
                pass
    return np.array(sorted(out))


def test_plan_uses_true_timestamps_for_variable_frame_rate():
    ts = np.array([0.0, 0.1, 0.15, 0.9, 1.0, 2.4, 2.5])
    idx = plan_frames(ts, Sampling(fps=1))
    # instants 0, 1, 2 -> frames shown then: 0.0, 1.0, 1.0 (2.4 not yet shown at t=2)
    assert idx.tolist() == [0, 4]
    assert plan_frames(ts, Sampling(fps=10, start=0.9, end=1.0)).tolist() == [3, 4]


def test_plan_caps_frames_evenly():
    ts = np.arange(100) / 10
    idx = plan_frames(ts, Sampling(fps=10, max_frames=5))
    assert idx.tolist() == [0, 25, 50, 74, 99]


def test_plan_rejects_bad_ranges():
    ts = np.arange(10.0)
    with pytest.raises(UserError):
        plan_frames(ts, Sampling(fps=0))
    with pytest.raises(UserError):
        plan_frames(ts, Sampling(start=20))
    with pytest.raises(UserError, match="--start must be .*0 or more"):
        plan_frames(ts, Sampling(start=-5))


def test_sample_clip_reads_with_timestamps():
    r = VideoReader(ROOT / "video" / "pancake.mkv")
    idx = plan_frames(r.timestamps, Sampling(fps=2))
    batches = list(r.read(idx, 4))
    stamps = [t for b in batches for t in b.timestamps]
    assert len(stamps) == len(idx) == 21
    assert np.allclose(stamps, r.timestamps[idx])
    assert all(b.frames.dtype == np.uint8 and b.frames.shape[1:] == (240, 426, 3) for b in batches)


@pytest.mark.skipif(not CLIPS, reason="shared/realdata/videos not present")
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_real_clips_open_with_pyav_timestamps(clip):
    ref = pyav_frames(clip)
    r = VideoReader(clip)
    if "corrupted" not in clip.name:
        assert len(r.timestamps) == len(ref)
        np.testing.assert_allclose(r.timestamps, ref, atol=1e-3)
    idx = plan_frames(r.timestamps, Sampling(fps=1))
    got = [t for b in r.read(idx, 8) for t in b.timestamps]
    assert len(got) + r.lost == len(idx)
    # every frame we return carries a timestamp PyAV also decoded
    assert np.abs(np.array(got)[:, None] - ref[None, :]).min(axis=1).max() < 1e-3
    if "corrupted" in clip.name:
        assert len(got) >= 1
    else:
        assert r.lost == 0


@pytest.mark.skipif(not (REALDATA / "videos" / "moviepy_fire2.mp4").exists(), reason="realdata absent")
def test_pyav_path_applies_display_rotation_like_decord():
    clip = REALDATA / "videos" / "moviepy_fire2.mp4"
    r = VideoReader(clip)
    assert r.backend == "decord"
    a = next(r.read(np.array([3]), 1)).frames[0].astype(np.int16)
    r._decord = None  # force the PyAV path
    b = next(r.read(np.array([3]), 1)).frames[0].astype(np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 3  # same orientation (a flip would differ by tens)
    assert np.abs(a - b[::-1, ::-1]).mean() > 3 * np.abs(a - b).mean()


def test_missing_and_non_video_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        VideoReader(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(UserError, match="junk.mp4"):
        VideoReader(junk)


def test_plan_rejects_non_finite_and_caps_huge_rates():
    ts = np.arange(10.0)
    for bad in (Sampling(fps=float("inf")), Sampling(fps=float("nan")), Sampling(start=float("nan"))):
        with pytest.raises(UserError):
            plan_frames(ts, bad)
    assert plan_frames(ts, Sampling(fps=1e9)).tolist() == list(range(10))
