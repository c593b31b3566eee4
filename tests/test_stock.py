"""Checkpoints that never learned VoCo (a stock LLaVA: no `<voco>` token, no voco_num_tokens):
the `pool` and `full` compressors, checked against transformers' own LLaVA.

- parity: with `full` on one image, the cached answer's first logits and greedy tokens equal
  `LlavaForConditionalGeneration.generate()` on `BOS | image | prompt`;
- equivalence: a pooled multi-frame cache answers with the logits of ONE masked forward whose
  frames hold the image features averaged by an independent pooling (torch's avg_pool2d);
- the CLI: a stock checkpoint compresses (images too) with a one-line notice, `info` names the
  compressor, `ask` and `eval` answer, and mistakes are one clear line.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import run
from vococli.answer.opening import open_for_answering
from vococli.answer.settings import GenerationConfig
from vococli.cache.chunks import read_info
from vococli.compress.pipeline import compress_video
from vococli.compress.pixels import to_pixels
from vococli.compress.stage1 import compress_pixels
from vococli.families.loading import load_model
from vococli.families.tiny import TinyConfig, make_tiny_checkpoint
from vococli.layout import voco_mask, voco_positions
from vococli.video.reader import VideoReader
from vococli.video.sampling import Sampling

QUESTION = "what is the man holding in his hand?"


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A tiny random stock LLaVA (4x4 image tokens per frame) and a 64x48 photo."""
    root = tmp_path_factory.mktemp("stock")
    ckpt = make_tiny_checkpoint(root / "llava", TinyConfig(voco_tokens=0, seed=3, init_std=0.08))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "photo.png")
    return root, ckpt


def image_pixels(model, path):
    """The photo as compress reads it (the same reader and preprocessing)."""
    reader = VideoReader(path, "auto", fit=model.image.size)
    batch = next(iter(reader.read(np.array([0]), 1)))
    return to_pixels(batch.frames, model.image, torch.device("cpu"), torch.float32)


def test_full_on_one_image_matches_the_familys_own_generate(stock):
    from transformers import LlavaForConditionalGeneration

    root, ckpt = stock
    model = load_model(ckpt, device="cpu", dtype="float32", compressor="full")
    assert (model.layout.k, model.layout.c0, model.layout.bos_visible) == (16, 1, True)
    compress_video(model, root / "photo.png", root / "photo.voco", Sampling())
    assert read_info(root / "photo.voco").meta.compressor == "full"
    session = open_for_answering(root / "photo.voco", ckpt, reserve=64)
    ids = session.prompt_ids(QUESTION)
    first = session.prefill(ids, 0)[0]
    session.reset()
    ours = [t for got in session.generate(ids, GenerationConfig(max_new_tokens=16)) for t in got]

    ref = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
    prompt = torch.tensor([[model.layout.bos_id] + [ref.config.image_token_index] * 16 + ids])
    with torch.inference_mode():
        out = ref.generate(input_ids=prompt, pixel_values=image_pixels(model, root / "photo.png"), max_new_tokens=16,
                           do_sample=False, output_scores=True, return_dict_in_generate=True,
                           eos_token_id=model.tokenizer.eos_token_id)
    theirs = out.sequences[0, prompt.shape[1]:].tolist()
    torch.testing.assert_close(first, out.scores[0][0].float(), atol=1e-4, rtol=1e-4)
    assert len(set(theirs)) > 2  # a sequence that tells models apart, not one repeated token
    assert ours == theirs[:len(ours)] and len(ours) >= min(len(theirs), 8)


def test_pooled_frames_equal_one_masked_forward(stock):
    root, ckpt = stock
    model = load_model(ckpt, device="cpu", dtype="float32", compressor="pool", pool=2)
    assert model.layout.k == 4
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, model.image.size, model.image.size, generator=g)
    keys, values = compress_pixels(model, pixels)

    from vococli.answer.buffers import forward_tokens
    from vococli.cache.kv import VideoCache

    ids = torch.tensor([open_for_answering(VideoCache(keys, values, np.arange(3.0)), model, 64).prompt_ids(QUESTION)])
    video = VideoCache(keys=keys, values=values, timestamps=np.arange(3.0))
    two_stage = forward_tokens(model, ids, video.past_key_values(model), 1 + 3 * 4, all_logits=True)[0]

    # independent: features from transformers' LLaVA, pooled on their 4x4 grid by avg_pool2d
    with torch.inference_mode():
        feats = model.llava.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                     vision_feature_select_strategy="default")
        feats = torch.stack(list(feats.pooler_output if hasattr(feats, "pooler_output") else feats))
        grid = feats.transpose(1, 2).reshape(3, -1, 4, 4)
        pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (3, 4, H)
        embed = model.language_model.get_input_embeddings()
        bos = embed(torch.tensor([model.layout.bos_id]))[None].expand(3, -1, -1)
        frames = torch.cat([bos, pooled], dim=1).reshape(1, -1, pooled.shape[-1])
        seq = torch.cat([frames, embed(ids)], dim=1)
        mask = voco_mask(model.layout, 3, ids.shape[1], torch.float32)
        assert mask[0, 0, 15:, 0].eq(0).all() and mask[0, 0, 15:, 5].lt(-1e30).all()  # first BOS seen, others not
        pos = voco_positions(model.layout, 3, ids.shape[1]).view(1, -1)
        one = model.llava(inputs_embeds=seq, attention_mask=mask, position_ids=pos).logits[0, -ids.shape[1]:]
    torch.testing.assert_close(two_stage, one.float(), atol=1e-4, rtol=1e-4)


def test_cli_stock_checkpoint_compress_info_ask_eval(stock, tmp_path):
    root, ckpt = stock
    r = run("compress", root / "photo.png", "--model", ckpt, "--out", tmp_path / "p.voco", "--json")
    assert r.returncode == 0, r.stderr
    assert "not a VoCo checkpoint" in r.stderr and "--compressor pool --pool 4" in r.stderr
    info = json.loads(run("info", tmp_path / "p.voco", "--json").stdout)
    assert (info["compressor"], info["k"], info["c0"], info["planned_frames"]) == ("pool", 16, 1, 1)
    r = run("compress", root / "photo.png", "--model", ckpt, "--out", tmp_path / "p2.voco", "--pool", "2")
    assert r.returncode == 0, r.stderr
    assert "pool: 4 tokens per frame" in r.stdout
    assert "compressor pool" in run("info", tmp_path / "p2.voco").stdout
    r = run("ask", tmp_path / "p2.voco", QUESTION, "--model", ckpt, "--json", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answers"][0]["tokens"] > 0

    qa = [{"video_id": "photo", "question": QUESTION, "answer": "a ball", "id": "q0"}]
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "photo.png").write_bytes((root / "photo.png").read_bytes())
    r = run("eval", "msvd", "--qa", tmp_path / "qa.json", "--videos", tmp_path / "videos", "--out", tmp_path / "run",
            "--model", ckpt, "--compressor", "full", "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["compressor"] == "full" and record["k"] == 16


@pytest.mark.parametrize("args, says", [
    (("--compressor", "voco"), "not a VoCo checkpoint"),
    (("--pool", "5"), "--pool must be between 1 and 4"),
    (("--compressor", "full", "--pool", "2"), "--pool is for --compressor pool"),
    (("--compressor", "qformer"), "choose voco, full or pool"),
])
def test_cli_mistakes_are_one_line(stock, tmp_path, args, says):
    root, ckpt = stock
    r = run("compress", root / "photo.png", "--model", ckpt, "--out", tmp_path / "x.voco", *args)
    assert r.returncode != 0 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_voco_checkpoint_also_pools_when_asked(stock, tiny_ckpt, tmp_path):
    root, _ = stock
    r = run("compress", root / "photo.png", "--model", tiny_ckpt, "--out", tmp_path / "v.voco", "--pool", "2", "--json")
    assert r.returncode == 0 and "not a VoCo checkpoint" not in r.stderr, r.stderr
    meta = read_info(tmp_path / "v.voco").meta
    assert (meta.compressor, meta.k, meta.c0) == ("pool", 4, 1)
    r = run("ask", tmp_path / "v.voco", QUESTION, "--model", tiny_ckpt, "--json", "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    r = run("compress", root / "photo.png", "--model", tiny_ckpt, "--out", tmp_path / "k.voco")
    assert r.returncode == 0 and read_info(tmp_path / "k.voco").meta.compressor == "voco", r.stderr
