"""VoCo training: the training forward equals the inference layout, the loss falls, resume continues."""

import json
import warnings

import pytest
import torch

from vococli.errors import UserError
from vococli.layout import voco_allowed, voco_mask, voco_positions
from vococli.families.loading import load_model
from vococli.compress.stage1 import frame_embeddings, image_features
from vococli.train.checkpoint import load_optimizer, save_optimizer, state_file
from vococli.train.config import TrainConfig
from vococli.train.loop import train
from vococli.compressors import get_compressor
from vococli.compressors.avgpool import AvgPoolCompressor
from vococli.train.forward import encode_frames, text_hidden

warnings.filterwarnings("ignore", category=FutureWarning)
TEXT = "\nYou answer questions about a video. USER: which shape moved? ASSISTANT: a red circle"


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, tiny_ckpt):
    return load_model(tiny_ckpt, device="cpu", dtype="float32", attn=request.param)


def one_forward_hidden(model, pixels, ids, compressor, module=None):
    """Reference: the frames and the text in ONE forward with the block mask of layout.py."""
    lay = model.layout
    feats = image_features(model, pixels)
    embeds = frame_embeddings(model, feats)  # (T, frame_len, H)
    if compressor in ("avgpool", "qformer"):  # the slots, computed here rather than by the compressor class
        embeds = torch.cat([embeds[:, :lay.c0], module(feats)], dim=1)
    t = embeds.shape[0]
    text = model.language_model.get_input_embeddings()(ids)
    seq = torch.cat([embeds.reshape(1, -1, embeds.shape[-1]), text], dim=1)
    mask = voco_mask(lay, t, ids.shape[1], torch.float32, compressor)
    pos = voco_positions(lay, t, ids.shape[1]).view(1, -1)
    out = model.language_model(inputs_embeds=seq, attention_mask=mask, position_ids=pos)
    return out.last_hidden_state[0, -ids.shape[1]:]


@pytest.mark.parametrize("compressor", ["voco", "full", "avgpool", "qformer"])
def test_per_frame_training_forward_equals_block_masked_forward(model, compressor):
    """Two videos (3 and 1 frames) and three texts of different lengths in one padded batch."""
    torch.manual_seed(0)
    s = model.image.size
    pixels = torch.randn(4, 3, s, s)
    comp = get_compressor(compressor).build_module(model.text_config.hidden_size, model.layout.k)
    if isinstance(comp, AvgPoolCompressor):
        torch.nn.init.normal_(comp.proj.weight, std=0.2)
    tok = model.tokenizer
    texts = [TEXT, TEXT[:40], TEXT[:25]]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    video = torch.tensor([0, 1, 0])
    n = max(map(len, ids))
    batch = torch.full((3, n), tok.pad_token_id)
    for i, x in enumerate(ids):
        batch[i, :len(x)] = torch.tensor(x)
    with torch.no_grad():
        state = encode_frames(model, pixels, [3, 1], compressor, comp)
        got = text_hidden(model, state, batch, torch.tensor(list(map(len, ids))), video)
        for i, x in enumerate(ids):
            frames = pixels[:3] if video[i] == 0 else pixels[3:]
            ref = one_forward_hidden(model, frames, torch.tensor([x]), compressor, comp)
            torch.testing.assert_close(got[i, :len(x)], ref, atol=1e-4, rtol=1e-4)


def test_compressors_differ_only_in_what_text_sees(model):
    """voco and full agree inside frames and differ for the text rows; avgpool's slots never see
    the image."""
    lay = model.layout
    voco, causal = voco_allowed(lay, 2, 5, "voco"), voco_allowed(lay, 2, 5, "full")
    n_vis = 2 * lay.frame_len
    assert torch.equal(voco[:n_vis], causal[:n_vis])
    assert causal[n_vis:, :n_vis].all() and voco[n_vis:, :n_vis].sum() == 5 * 2 * lay.k
    avg = voco_allowed(lay, 1, 0, "avgpool")
    assert not avg[lay.c0:, 1:lay.c0].any() and avg[lay.c0:, 0].all()


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    load_optimizer(opt2, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(a["state"][0][k], b["state"][0][k])


def test_training_reduces_loss_and_writes_a_loadable_checkpoint(synth_data, tmp_path):
    cfg = TrainConfig(data=(str(synth_data),), out=str(tmp_path / "run"), init="tiny", steps=30,
                      batch_size=16, lr=3e-3, warmup_steps=5, save_every=100, threads=1)
    st = train(cfg)
    first = sum(l for _, l in st.losses[:5]) / 5
    last = sum(l for _, l in st.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 1000
    m = load_model(run, device="cpu")  # the product loads what training wrote
    assert m.layout.k == 2


def test_resume_continues_from_the_saved_step(synth_data, tmp_path):
    """12 steps straight == killed at step 7, resumed from the save at 5 (same data order across epochs,
    optimizer state, frames kept in memory or decoded again)."""
    base = dict(data=(str(synth_data),), init="tiny", batch_size=8, warmup_steps=2, threads=1, save_every=5)
    full = train(TrainConfig(out=str(tmp_path / "full"), steps=12, **base))
    assert full.epoch >= 1  # the run crosses an epoch boundary after the resume point
    def stop_at_7(st, *_):
        if st.step == 7:
            raise KeyboardInterrupt  # killed after the save at step 5

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "half"), steps=12, **base), on_step=stop_at_7)
    assert json.loads(state_file(tmp_path / "half").read_text())["state"]["step"] == 5
    # settings other than the length come from the saved run, whatever the command line says
    resumed = train(TrainConfig(out=str(tmp_path / "half"), steps=12, **{**base, "batch_size": 3, "seed": 9}),
                    resume=True)
    assert resumed.step == 12 and [s for s, _ in resumed.losses] == list(range(1, 13))
    assert [l for _, l in resumed.losses] == pytest.approx([l for _, l in full.losses], rel=1e-4)
    state = json.loads(state_file(tmp_path / "half").read_text())
    assert state["state"]["step"] == 12


def test_a_save_is_one_atomic_switch(synth_data, tmp_path, monkeypatch):
    """Killed at any point of a save, the run folder holds one whole save: the model files and the
    trainer state of the same step (never the model of step 4 beside the state of step 2)."""
    import os

    import vococli.train.checkpoint as ckpt

    base = dict(data=(str(synth_data),), init="tiny", batch_size=8, warmup_steps=1, threads=1, save_every=2)
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=2, **base))
    assert (out / "LATEST").read_text().strip() == "save-0000002"
    before = (out / "save-0000002" / "model.safetensors").read_bytes()
    real_replace, calls = os.replace, []

    def killed_at(n):
        def replace(a, b):
            calls.append((a, b))
            if len(calls) == n:
                raise KeyboardInterrupt  # the process dies here
            real_replace(a, b)
        return replace

    for n in (1, 2):  # before the save's folder is in place; before LATEST is switched
        calls.clear()
        monkeypatch.setattr(ckpt.os, "replace", killed_at(n))
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(out=str(out), steps=4, **base), resume=True)
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        current = load_model(out, device="cpu")  # what any reader sees meanwhile: step 2, whole
        assert current.path.endswith("save-0000002")
        assert (out / "save-0000002" / "model.safetensors").read_bytes() == before
        assert json.loads(state_file(out).read_text())["state"]["step"] == 2
    resumed = train(TrainConfig(out=str(out), steps=4, **base), resume=True)  # tidies, then continues
    assert resumed.step == 4 and (out / "LATEST").read_text().strip() == "save-0000004"
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "loss.csv", "loss.png", "save-0000004"]
    assert json.loads(state_file(out).read_text())["state"]["step"] == 4


def test_a_full_disk_during_a_save_keeps_the_previous_save(synth_data, tmp_path, monkeypatch):
    import errno

    import vococli.train.checkpoint as ckpt
    from vococli.errors import EnvironmentProblem

    base = dict(data=(str(synth_data),), init="tiny", batch_size=8, warmup_steps=1, threads=1, save_every=2)
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=2, **base))

    def no_room(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_optimizer", no_room)
    with pytest.raises(EnvironmentProblem, match="checkpoint of step 4 cannot be written .No space left on device.; "
                                                 "the save of step 2 is kept"):
        train(TrainConfig(out=str(out), steps=4, **base), resume=True)
    assert (out / "LATEST").read_text().strip() == "save-0000002" and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert train(TrainConfig(out=str(out), steps=4, **base), resume=True).step == 4


def test_a_run_folder_of_the_flat_layout_resumes(synth_data, tmp_path):
    """Run folders written before versioned saves (checkpoint files in the folder itself) load,
    resume, and switch to versioned saves at their next save."""
    import shutil

    base = dict(data=(str(synth_data),), init="tiny", batch_size=8, warmup_steps=1, threads=1, save_every=2)
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=2, **base))
    for f in (out / "save-0000002").iterdir():  # the layout of the earlier vococli
        shutil.move(str(f), str(out / f.name))
    (out / "save-0000002").rmdir()
    (out / "LATEST").unlink()
    assert load_model(out, device="cpu").path == str(out)
    assert train(TrainConfig(out=str(out), steps=4, **base), resume=True).step == 4
    assert not (out / "model.safetensors").exists() and not (out / "trainer").exists()
    assert load_model(out, device="cpu").path.endswith("save-0000004")


def test_batched_scoring_answers_like_compress_and_ask(tiny_model, synth_data, tmp_path):
    """qa_score (batched, padded, training forward) generates the same tokens as the product path
    (compress to a cache file, load it, ask) for every question."""
    from vococli.answer.session import GenerationConfig, Session
    from vococli.cache.chunks import load_cache
    from vococli.compress.pipeline import compress_video
    from vococli.train.qa_score import read_qa, score_qa
    from vococli.video.sampling import Sampling

    entries = read_qa(synth_data)[:15]
    got = score_qa(tiny_model, synth_data, limit=15, max_new_tokens=4, videos_per_batch=2)
    for e, pred in zip(entries, got.predictions):
        cache = tmp_path / f"{e['video_id']}.voco"
        if not cache.exists():
            compress_video(tiny_model, synth_data / "videos" / f"{e['video_id']}.mp4", cache, Sampling(fps=1),
                           notice=lambda s: None)
        session = Session(tiny_model, load_cache(cache, fingerprint=tiny_model.fingerprint))
        ans = session.ask(e["question"], GenerationConfig(max_new_tokens=4))
        assert pred["pred"] == ans.text, (e["question"], pred["pred"], ans.text)


def test_image_samples_and_multi_turn_conversations_train(tmp_path):
    """LLaVA image samples (one frame) with two turns: only the answers are supervised."""
    import numpy as np
    from PIL import Image

    from vococli.train.data import read_training_file

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        samples.append({"id": str(i), "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the car?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "and the sky?"}, {"from": "gpt", "value": "blue"}]})
    (tmp_path / "data.json").write_text(json.dumps(samples))
    st = train(TrainConfig(data=(str(tmp_path / "data.json"),), out=str(tmp_path / "run"), init="tiny", steps=2,
                           batch_size=4, threads=1))
    assert st.step == 2 and st.samples == 8
    model = load_model(tmp_path / "run", device="cpu")
    conv = read_training_file(model, tmp_path / "data.json")[0].conversations[0]
    tok = model.tokenizer
    supervised = tok.decode([t for t in conv.targets if t != -100])
    assert supervised.replace("</s>", " ").split() == ["red", "blue"]
    # each supervised position predicts the very next token of the sequence
    assert all(t == conv.ids[i + 1] for i, t in enumerate(conv.targets) if t != -100)
    assert conv.targets[-1] == -100 and len(conv.targets) == len(conv.ids)


def test_train_refuses_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "vococli", "train", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    r = run("--data", tmp_path / "missing.json", "--out", tmp_path / "o", "--init", "tiny")
    assert r.returncode == 1 and "training file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text('[{"id": 1, "video": "../../etc/passwd", "conversations": []}]')
    r = run("--data", tmp_path / "bad.json", "--out", tmp_path / "o", "--init", "tiny")
    assert r.returncode == 1 and "leaves the media folder" in r.stderr
    r = run("--data", tmp_path / "bad.json", "--out", tmp_path / "o")
    assert r.returncode == 1 and "--init" in r.stderr


def run_train(data, out, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "vococli", "train", "-d", str(data), "--out", str(out),
                           *map(str, args)], capture_output=True, text=True, timeout=300)


def test_steps_and_epochs_together_are_refused(synth_data, tmp_path):
    r = run_train(synth_data, tmp_path / "run", "--init", "tiny", "--steps", 3, "--epochs", 1)
    assert r.returncode == 1 and "--steps or --epochs, not both" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_settings_given_on_the_command_line(synth_data, tmp_path):
    """Only the length, --save-every, --threads and --device may change on --resume; a setting given
    again with its saved value is fine."""
    def run(*args):
        return run_train(synth_data, tmp_path / "run", *args)

    r = run("--init", "tiny", "--steps", 1, "--batch-size", 8, "--threads", 1)
    assert r.returncode == 0, r.stderr
    r = run("--steps", 2, "--resume", "--lr", "1e-3", "--mask", "causal")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--lr is 0.0005 in the run, 0.001 now" in r.stderr and "--mask is voco in the run, causal now" in r.stderr
    r = run("--steps", 2, "--resume", "--init", "tiny", "--batch-size", 8, "--threads", 2)
    assert r.returncode == 0 and "2 steps" in r.stdout, r.stderr
    assert json.loads(state_file(tmp_path / "run").read_text())["config"]["init"] == "tiny"


def test_a_bare_resume_keeps_the_runs_length_and_settings(synth_data, tmp_path):
    def run(*args):
        return run_train(synth_data, tmp_path / "run", *args)

    r = run("--init", "tiny", "--steps", 2, "--batch-size", 8, "--threads", 1, "--no-keep-frames", "--save-every", 1)
    assert r.returncode == 0, r.stderr
    r = run("--resume", "--threads", 1)
    assert r.returncode == 0 and "2 steps" in r.stdout, r.stdout + r.stderr
    config = json.loads(state_file(tmp_path / "run").read_text())["config"]
    assert config["steps"] == 2 and config["keep_frames"] is False and config["save_every"] == 1
    r = run("--resume", "-o", tmp_path / "run", "--from", tmp_path / "elsewhere")
    assert r.returncode == 1 and "--from is not set in the run" in r.stderr, r.stderr


def test_from_a_llava_checkpoint_without_voco_registers_it_by_name(tmp_path, synth_data):
    """A plain LLaVA checkpoint (no <voco> in its tokenizer) gets the token added and its embeddings grown."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from vococli.families.tiny import TinyConfig, build_tiny_model, save_checkpoint

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vococli.families.tiny import CHAT_TEMPLATE

    model, _ = build_tiny_model(TinyConfig())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["what colour is the circle? red green"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    plain = tmp_path / "plain"
    save_checkpoint(model, tok, plain)
    before = AutoTokenizer.from_pretrained(plain)
    assert before.convert_tokens_to_ids("<voco>") in (None, before.unk_token_id)
    train(TrainConfig(data=(str(synth_data),), out=str(tmp_path / "run"), checkpoint=str(plain), steps=1,
                      batch_size=4, threads=1))
    after = load_model(tmp_path / "run", device="cpu")
    assert after.layout.voco_id not in (None, after.tokenizer.unk_token_id)
    emb = LlavaForConditionalGeneration.from_pretrained(after.path).get_input_embeddings()
    assert emb.num_embeddings >= len(after.tokenizer)


def test_prompts_render_with_templates_that_need_typed_content(tmp_path):
    """llava-hf style templates render only typed content parts; plain strings must still work."""
    from vococli.answer.prompts import render_prompt
    from vococli.families.tiny import build_tokenizer

    tok = build_tokenizer(384)
    tok.chat_template = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
                         "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT:{% endif %}")

    class Holder:
        tokenizer, path = tok, "x"

    text = render_prompt(Holder(), [{"role": "user", "content": "what colour is the car?"}])
    assert text == "USER: what colour is the car? ASSISTANT:"


@pytest.mark.parametrize("settings, message", [
    ({"compressor": "grid"}, "^compressor 'grid': choose one of voco, full, avgpool, qformer, pool"),
    ({"compressor": "pool"}, "^--compressor pool makes caches from checkpoints as they are"),
    ({"mask": "none"}, "^mask 'none': choose one of voco, causal"),
    ({"mask": "causal", "compressor": "avgpool"}, "^--mask causal trains the full compressor"),
])
def test_train_takes_compressors_from_the_registry(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        train(TrainConfig(data=(str(tmp_path),), out=str(tmp_path / "out"), init="tiny", **settings))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_the_qformer_baseline_trains_saves_and_answers_through_batch_scoring(synth_data, tmp_path):
    """Like avg-pool: its layer is trained beside the model, saved with it, and used by scoring."""
    from vococli.train.checkpoint import load_compressor
    from vococli.train.qa_score import score_qa

    cfg = TrainConfig(data=(str(synth_data),), out=str(tmp_path / "q"), init="tiny", compressor="qformer",
                      voco_tokens=1, steps=12, batch_size=16, lr=3e-3, warmup_steps=2, save_every=100, threads=1)
    st = train(cfg)
    assert st.losses[-1][1] < st.losses[0][1]
    model = load_model(tmp_path / "q", device="cpu", allow_baseline=True)
    module = load_compressor(tmp_path / "q", model)
    assert module is not None and module.queries.shape == (1, model.text_config.hidden_size)
    assert model.llava.config.voco_compressor == "qformer"
    res = score_qa(model, synth_data, compressor="qformer", module=module, limit=10, max_new_tokens=4)
    assert len(res.predictions) == 10
    with pytest.raises(ValueError, match="needs its"):  # never silently answered without its layer
        score_qa(model, synth_data, compressor="qformer", module=None, limit=2, max_new_tokens=2)
