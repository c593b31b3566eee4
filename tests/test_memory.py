"""Memory of compress does not grow with the video's resolution: 1080p and 4K clips peak within
300 MB of a 96-pixel clip (each decoded at about the model's input size)."""

import subprocess
import sys

import numpy as np
import pytest

from helpers import make_clip

av = pytest.importorskip("av")
pytestmark = pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")

# the peak resident memory of this process's own address space (VmHWM; getrusage's maxrss would
# also count the parent's memory at fork time)
MEASURE = """
import sys
from vococli.cli.app import main
sys.argv = ["vococli", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    if e.code:
        raise
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print("peak-rss-kib", peak)
"""


def peak_mib(video, out, model, *flags) -> float:
    r = subprocess.run([sys.executable, "-c", MEASURE, "compress", str(video), "-o", str(out), "--model", str(model),
                        *flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split("peak-rss-kib")[-1]) / 1024


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_compress_memory_does_not_grow_with_resolution(tiny_ckpt, tmp_path, backend):
    sizes = {"96": (96, 96, 30), "1080p": (1920, 1080, 30), "4k": (3840, 2160, 10)}
    peaks = {}
    for name, (w, h, seconds) in sizes.items():
        clip = tmp_path / f"{name}.mp4"
        if not clip.exists():
            make_clip(clip, w, h, seconds)
        peaks[name] = peak_mib(clip, tmp_path / f"{name}-{backend}.voco", tiny_ckpt, "--fps", "2",
                               "--video-backend", backend)
    assert peaks["1080p"] - peaks["96"] < 300, peaks
    assert peaks["4k"] - peaks["96"] < 300, peaks


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_large_frames_decoded_small_stay_close_to_the_full_frames(tiny_model, tmp_path, backend):
    """The pixels a 1080p frame gives when decoded at twice the model's input size, against
    padding and resizing the full decoded frame (the exact path): within half a level of 255 on
    average."""
    import torch

    from vococli.compress.pixels import to_pixels
    from vococli.video.reader import VideoReader
    from vococli.video.sampling import Sampling, plan_frames

    clip = tmp_path / "1080p.mp4"
    make_clip(clip, 1920, 1080, 3)
    full, small = VideoReader(clip, backend=backend), VideoReader(clip, backend=backend, fit=tiny_model.image.size)
    idx = plan_frames(full.timestamps, Sampling(fps=2))
    a = np.concatenate([b.frames for b in full.read(idx, 8)])
    b = np.concatenate([x.frames for x in small.read(idx, 8)])
    assert max(b.shape[1:3]) == 2 * tiny_model.image.size < max(a.shape[1:3])
    spec = tiny_model.image
    levels = (to_pixels(a, spec, "cpu", torch.float32) - to_pixels(b, spec, "cpu", torch.float32)).abs() \
        * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    assert levels.mean() < 0.75, levels.mean()
