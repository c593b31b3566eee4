import os
from pathlib import Path

import json

import pytest
import torch
import transformers

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("VOCOCLI_REALDATA", ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random checkpoint folder, made once per test run."""
    from vococli.families.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from vococli.families.loading import load_model

    return load_model(tiny_ckpt, device="cpu", dtype="float32")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def compressed(tiny_ckpt, tmp_path_factory):
    """The test clip compressed by `vococli compress --json` with the tiny model: (cache, its JSON)."""
    from helpers import CLIP, run

    out = tmp_path_factory.mktemp("cli") / "pancake.voco"
    r = run("compress", CLIP, "-o", out, "--model", tiny_ckpt, "--fps", "1", "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


@pytest.fixture
def cache(tiny_model, tmp_path):
    """The test clip compressed at 2 fps into chunks of 8 frames (21 frames, 3 chunks)."""
    from helpers import CLIP, SAMPLING
    from vococli.compress.pipeline import compress_video

    return compress_video(tiny_model, CLIP, tmp_path / "e.voco", SAMPLING, chunk_frames=8,
                          notice=lambda s: None).path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic training set (12 single-frame clips of 64 px)."""
    from vococli.synth.clips import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(seed=11, count=12, kind="frame", size=64), out)
    return out
