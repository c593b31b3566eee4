"""The shipped default model answers held-out synthetic questions as well as its model card says.

Everything goes through the product path: `synth` writes clips from seeds never used in training,
`compress_video` writes cache files, `ask` answers from them.
"""

import json
import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT

warnings.filterwarnings("ignore", category=FutureWarning)
BUNDLED = ROOT / "models" / "default"
CARD = json.loads((BUNDLED / "eval.json").read_text())
DEMO = ROOT / "video" / "shapes_demo.mp4"
MARGIN = {"frame": 0.08, "temporal": 0.12}  # ~3 standard errors of the smaller test sets


@pytest.fixture(scope="module")
def bundled():
    from vococli.defaults import default_model_path
    from vococli.families.loading import load_model

    os.environ.pop("VOCOCLI_MODEL", None)
    return load_model(default_model_path(), device="cpu", dtype="float32")


def accuracy(model, folder, tmp_path):
    from vococli.answer.session import GenerationConfig, Session
    from vococli.cache.chunks import load_cache
    from vococli.compress.pipeline import compress_video
    from vococli.train.qa_score import normalise, read_qa
    from vococli.video.sampling import Sampling

    right, total, sessions = 0, 0, {}
    for e in read_qa(folder):
        vid = e["video_id"]
        if vid not in sessions:
            cache = tmp_path / f"{vid}.voco"
            compress_video(model, folder / "videos" / f"{vid}.mp4", cache, Sampling(fps=1), notice=lambda s: None)
            sessions[vid] = Session(model, load_cache(cache, fingerprint=model.fingerprint))
        sessions[vid].reset()
        ans = sessions[vid].ask(e["question"], GenerationConfig(max_new_tokens=8))
        right += normalise(ans.text) == normalise(e["answer"])
        total += 1
    return right / total


@pytest.mark.parametrize("kind,count", [("frame", 30), ("temporal", 80)])
def test_bundled_model_meets_its_model_card(bundled, tmp_path, kind, count):
    from vococli.synth.clips import SynthConfig, synthesize

    data = tmp_path / kind
    synthesize(SynthConfig(seed=CARD["test_seed"], count=count, kind=kind), data)
    acc = accuracy(bundled, data, tmp_path)
    assert acc >= CARD[kind]["accuracy"] - MARGIN[kind], (kind, acc, CARD[kind])


def test_default_model_is_used_without_model_flag(tmp_path):
    """The README quick start: compress and ask the demo clip with no --model at all."""
    env = {k: v for k, v in os.environ.items() if k != "VOCOCLI_MODEL"}
    cache = tmp_path / "demo.voco"
    run = lambda *a: subprocess.run([sys.executable, "-m", "vococli", *map(str, a)], capture_output=True,
                                    text=True, env=env, timeout=300)
    r = run("compress", DEMO, "-o", cache)
    assert r.returncode == 0, r.stderr
    r = run("ask", cache, "-q", "what colour was the square at the start?", "-q", "what colour was the square at the end?")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if not l.startswith("Q:")]
    assert lines == CARD["demo_answers"], r.stdout


def test_a_missing_model_folder_from_the_environment_is_named_as_such(monkeypatch, tmp_path):
    from vococli.defaults import default_model_path
    from vococli.errors import UserError

    monkeypatch.setenv("VOCOCLI_MODEL", str(tmp_path / "gone"))
    with pytest.raises(UserError, match=r"gone \(from \$VOCOCLI_MODEL\): model folder not found"):
        default_model_path()
    monkeypatch.setenv("VOCOCLI_MODEL", "org/name")  # a hub id: resolved when the model is loaded
    assert default_model_path() == "org/name"


OLD_CACHE = ROOT / "tests" / "data" / "caches" / "shapes_demo-v1.voco"  # in the format vococli 0.1.0 wrote before
# caches recorded their model family and compressor (its tensors made again with the current bundled model)


def test_a_cache_written_before_the_family_and_compressor_fields_still_answers(bundled, tmp_path):
    import torch

    from vococli.answer.opening import open_for_answering
    from vococli.answer.session import GenerationConfig
    from vococli.cache.chunks import load_cache, read_info
    from vococli.compress.pipeline import compress_video
    from vococli.families.loading import answering_model

    info = read_info(OLD_CACHE)
    assert (info.meta.family, info.meta.compressor, info.meta.storage) == ("llava_llama", "voco", "float32")
    old = load_cache(OLD_CACHE, fingerprint=bundled.fingerprints)
    new = load_cache(compress_video(bundled, DEMO, tmp_path / "demo.voco", notice=lambda s: None).path)
    # the same numbers up to float32 rounding: a different torch thread count (`train --threads`
    # sets it for the process) changes the order of summation, not the result
    torch.testing.assert_close(old.keys, new.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(old.values, new.values, atol=1e-5, rtol=1e-5)
    session = open_for_answering(OLD_CACHE, answering_model(bundled), reserve=64)
    answers = []
    for q in ("what colour was the square at the start?", "what colour was the square at the end?"):
        session.reset()
        answers.append(session.ask(q, GenerationConfig(max_new_tokens=8)).text)
    assert answers == ["cyan", "yellow"]


def test_the_readme_python_api_runs_as_written(tmp_path):
    """The README's Python API blocks, run as they are (the video path relative to a folder that
    holds `video/`): the answers the comments give, and no transformers loading bars."""
    import re

    text = (ROOT / "README.md").read_text()
    api = text[text.index("## Python API"):text.index("## How it works")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", api, flags=re.S))
    (tmp_path / "video").symlink_to(ROOT / "video", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "VOCOCLI_MODEL"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == re.findall(r"\.text\)\s+# (\w+)", code), r.stdout
    assert "Loading weights" not in r.stderr and "%|" not in r.stderr, r.stderr
