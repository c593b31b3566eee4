"""Fault injection: damaged checkpoints, out-of-range settings and killed processes end in one
line and exit 1, or resume with identical results; nothing is silently accepted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import CLIP, run


def one_line_error(r, *words):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture
def damaged_ckpt(tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


def test_a_config_field_of_the_wrong_type_is_one_line(damaged_ckpt, tmp_path):
    config = json.loads((damaged_ckpt / "config.json").read_text())
    config["image_seq_length"] = "many"
    (damaged_ckpt / "config.json").write_text(json.dumps(config))
    one_line_error(run("compress", CLIP, "--model", damaged_ckpt, "-o", tmp_path / "c.voco"), "image_seq_length")
    assert not (tmp_path / "c.voco").exists()


def test_a_truncated_weight_file_is_one_line(damaged_ckpt, tmp_path):
    weights = damaged_ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 2 // 3])
    one_line_error(run("compress", CLIP, "--model", damaged_ckpt, "-o", tmp_path / "c.voco"), "the weights cannot be loaded")


def test_a_config_that_is_not_json_is_one_line(damaged_ckpt, tmp_path):
    (damaged_ckpt / "config.json").write_text("{ not json")
    one_line_error(run("compress", CLIP, "--model", damaged_ckpt, "-o", tmp_path / "c.voco"), "config.json")


@pytest.mark.parametrize("k", ["100000", "3", "0"])
def test_voco_tokens_beyond_the_trained_k_are_refused(tiny_ckpt, tmp_path, k):
    """The tiny checkpoint is trained with K=2: more slots would hold nothing it learned to fill
    (and 100000 ends in an out-of-memory kill)."""
    one_line_error(run("compress", CLIP, "--model", tiny_ckpt, "-o", tmp_path / "c.voco", "--voco-tokens", k),
                   "--voco-tokens must be between 1 and 2 (the checkpoint was trained with K=2)")


@pytest.mark.parametrize("flag", [["--lr", "nan"], ["--lr", "inf"], ["--weight-decay", "nan"], ["--fps", "-2"]])
def test_train_refuses_numbers_that_are_not_numbers(tmp_path, flag):
    (tmp_path / "data").mkdir()
    r = run("train", "--data", tmp_path / "data", "--init", "tiny", "--out", tmp_path / "run", *flag)
    one_line_error(r)
    assert not (tmp_path / "run").exists()


def test_compress_killed_at_random_moments_resumes_to_the_same_cache(tiny_ckpt, tmp_path):
    """kill -9 at three moments of a compress, then a plain rerun: the same bytes as one
    uninterrupted compress (chunks are whole or absent; a resume computes only what is missing)."""
    from vococli.cache.chunks import load_cache

    args = ["compress", CLIP, "--model", tiny_ckpt, "--fps", "4", "--chunk-frames", "4"]
    ref = run(*args, "-o", tmp_path / "ref.voco")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed.voco"
    env = dict(os.environ, VOCOCLI_MODEL="")
    for delay in (2.0, 3.0, 4.0):
        p = subprocess.Popen([sys.executable, "-m", "vococli", *map(str, args), "-o", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    r = run(*args, "-o", out)
    assert r.returncode == 0, r.stderr
    a, b = load_cache(tmp_path / "ref.voco"), load_cache(out)
    assert a.keys.equal(b.keys) and a.values.equal(b.values) and (a.timestamps == b.timestamps).all()


def test_a_tokenizer_that_does_not_fit_the_embedding_is_one_line(damaged_ckpt, tmp_path):
    """<voco> added to the tokenizer but the embedding never grown (an IndexError before)."""
    config = json.loads((damaged_ckpt / "config.json").read_text())
    config["text_config"]["vocab_size"] = 8
    (damaged_ckpt / "config.json").write_text(json.dumps(config))
    one_line_error(run("compress", CLIP, "--model", damaged_ckpt, "-o", tmp_path / "c.voco"),
                   "is outside the model's embedding (8 rows)")


def test_an_image_is_a_one_frame_cache(tiny_ckpt, tmp_path):
    import numpy as np
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((120, 160, 3), (200, 40, 40), dtype=np.uint8)).save(photo)
    r = run("compress", photo, "--model", tiny_ckpt, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["frames"] == 1, r.stderr
    a = run("ask", tmp_path / "photo.voco", "what colour is it?", "--model", tiny_ckpt, "--max-new-tokens", "3")
    assert a.returncode == 0, a.stderr
