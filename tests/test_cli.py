"""The command line end to end on the sample clip with a tiny random checkpoint."""

import json
import sys

import pytest

from conftest import REALDATA
from helpers import CLIP, run






def test_compress_json(compressed):
    out, res = compressed
    assert res["frames"] == 11 and res["lost"] == 0 and res["cache"] == str(out)


def test_info(compressed, tiny_ckpt):
    out, _ = compressed
    r = run("info", out, "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["frames"] == 11 and meta["k"] == 2 and meta["final"] is True
    r = run("info", out)
    assert "K=2" in r.stdout and "pancake.mkv" in r.stdout


def test_ask_json_several_questions(compressed, tiny_ckpt):
    out, _ = compressed
    r = run("ask", out, "what is here?", "-q", "and then?", "--model", tiny_ckpt, "--json",
            "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["frames"] == 11 and [a["question"] for a in res["answers"]] == ["what is here?", "and then?"]
    assert (res["weights"], res["decode"], res["dtype"], res["device"]) == ("full", "dynamic", "float32", "cpu")
    for a in res["answers"]:
        assert 1 <= a["tokens"] <= 6 and a["time_to_first_token_s"] > 0


def test_ask_stream_matches_plain(compressed, tiny_ckpt):
    out, _ = compressed
    plain = run("ask", out, "what is here?", "--model", tiny_ckpt, "--max-new-tokens", "8")
    streamed = run("ask", out, "what is here?", "--model", tiny_ckpt, "--max-new-tokens", "8", "--stream")
    assert plain.returncode == streamed.returncode == 0
    assert plain.stdout.strip() == streamed.stdout.strip()


def test_chat_reads_turns_from_stdin(compressed, tiny_ckpt):
    out, _ = compressed
    r = run("chat", out, "--model", tiny_ckpt, "--max-new-tokens", "6", input="hello?\n/reset\nhello?\n/quit\n")
    assert r.returncode == 0, r.stderr
    turns = [line for line in r.stdout.split("vococli>")[1:]]
    assert len(turns) == 2
    # after /reset the same question is asked of the video alone again: the same greedy answer
    first, second = (t.split("you>")[0].strip() for t in turns)
    assert first == second and "earlier turns forgotten" in r.stderr


def test_user_errors_exit_1_with_one_line(tmp_path, tiny_ckpt):
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is text, not video")
    for args in (("compress", tmp_path / "missing.mp4", "--model", tiny_ckpt),
                 ("compress", junk, "--model", tiny_ckpt),
                 ("ask", tmp_path / "missing.voco", "q", "--model", tiny_ckpt),
                 ("compress", CLIP, "--model", tmp_path / "no-model"),
                 ("compress", CLIP, "--model", tiny_ckpt, "--fps", "0", "-o", tmp_path / "x.voco")):
        r = run(*args)
        assert r.returncode == 1, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "Traceback" not in r.stderr
    assert run("ask", "--no-such-flag").returncode == 1
    r = run("compress", CLIP, "--model", tiny_ckpt, "--cache-dtype", "fp8", "-o", tmp_path / "y.voco")
    assert r.returncode == 1 and "error: --cache-dtype 'fp8': choose one of auto, int8" in r.stderr, r.stderr



@pytest.mark.parametrize("k", ["0", "-1"])
def test_tiny_model_refuses_fewer_than_one_voco_token(tmp_path, k):
    r = run("tiny-model", tmp_path / "m", "--voco-tokens", k)
    assert r.returncode == 1 and "--voco-tokens must be at least 1" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


CORRUPT = REALDATA / "videos" / "decord_corrupted.mp4"


@pytest.mark.skipif(not CORRUPT.exists(), reason="real damaged clip not present")
def test_damaged_video_gives_one_note_not_ffmpeg_noise(tiny_ckpt, tmp_path):
    r = run("compress", CORRUPT, "-o", tmp_path / "c.voco", "--model", tiny_ckpt)
    assert r.returncode == 0, r.stderr
    assert "could not be decoded" in r.stderr and "[h264" not in r.stderr, r.stderr


def test_ctrl_c_says_the_work_is_kept(monkeypatch, capsys, tiny_ckpt):
    """Ctrl-C inside a command: exit code 130 and one line saying how to resume."""
    import vococli.cli.app as cli
    import vococli.compress.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vococli.compress.pipeline, "compress_video", interrupted)
    monkeypatch.setattr(sys, "argv", ["vococli", "compress", str(CLIP), "--model", str(tiny_ckpt)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130
    assert "interrupted; the finished cache chunks are kept: the same command resumes" in capsys.readouterr().err
    from vococli.cli.app import interrupted_message

    assert "--resume" in interrupted_message(["train"]) and interrupted_message(["ask"]) == "interrupted"


def test_a_failing_compiler_is_a_user_error(monkeypatch, capsys):
    """torch.compile's back end failing for want of a C++ compiler is the machine's, not a crash:
    one line, exit 1, and the way around it. Other failures inside inductor stay internal errors."""
    from torch._inductor.exc import InductorError, InvalidCxxCompiler

    import vococli.cli.app as cli

    raised = []

    def fail(**kw):
        raise raised[0]

    monkeypatch.setattr(cli, "build_command", lambda: fail)
    for error, code in [(InductorError(InvalidCxxCompiler(), None), 1),
                        (InductorError(RuntimeError("a bug in a lowering"), None), 2)]:
        raised[:] = [error]
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == code
        msg = capsys.readouterr().err
        assert ("No working C++ compiler" in msg and "without --compile" in msg) == (code == 1), msg
        assert len(msg.strip().splitlines()) == 1


def test_ask_about_a_video_file_compresses_it_once(tiny_ckpt, tmp_path):
    import shutil

    video = tmp_path / "clip.mkv"
    shutil.copy(CLIP, video)
    first = run("ask", video, "what is here?", "--model", tiny_ckpt, "--max-new-tokens", "6")
    assert first.returncode == 0, first.stderr
    assert f"compressing {video} into {tmp_path / 'clip.voco'}" in first.stderr
    assert (tmp_path / "clip.voco").is_dir()
    again = run("ask", video, "what is here?", "--model", tiny_ckpt, "--max-new-tokens", "6")
    assert again.returncode == 0 and "compressing" not in again.stderr, again.stderr
    from_cache = run("ask", tmp_path / "clip.voco", "what is here?", "--model", tiny_ckpt, "--max-new-tokens", "6")
    assert first.stdout == again.stdout == from_cache.stdout and first.stdout.strip()


def test_threads_default_to_the_cpus_the_process_may_use(tiny_ckpt, tmp_path):
    """--threads N is used and reported; without it, the count is the affinity mask's (a process
    pinned to one CPU computes with one thread, whatever the machine has)."""
    import os
    import subprocess

    args = ["compress", CLIP, "--model", tiny_ckpt, "--max-frames", "2", "--json"]
    r = run(*args, "-o", tmp_path / "a.voco", "--threads", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["threads"] == 1, r.stderr
    r = run(*args, "-o", tmp_path / "b.voco")
    assert json.loads(r.stdout)["threads"] == len(os.sched_getaffinity(0))
    env = dict(os.environ, VOCOCLI_MODEL="")
    pinned = subprocess.run([sys.executable, "-m", "vococli", *map(str, args), "-o", str(tmp_path / "c.voco")],
                            capture_output=True, text=True, env=env, timeout=300,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["threads"] == 1, pinned.stderr
    bad = run(*args, "-o", tmp_path / "d.voco", "--threads", "0")
    assert bad.returncode == 1 and "--threads must be at least 1" in bad.stderr and not (tmp_path / "d.voco").exists()


def test_training_gives_the_thread_count_back(tmp_path):
    import torch

    from vococli.train.config import TrainConfig
    from vococli.train.loop import train
    from vococli.synth.clips import SynthConfig, synthesize

    synthesize(SynthConfig(seed=3, count=2, kind="frame", size=64), tmp_path / "d")
    before = torch.get_num_threads()
    train(TrainConfig(data=(str(tmp_path / "d"),), out=str(tmp_path / "run"), init="tiny", steps=1, batch_size=2,
                      threads=1 if before > 1 else 2))
    assert torch.get_num_threads() == before


def test_version_short_help_and_one_way_of_writing_help():
    from vococli import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vococli {__version__}"
    for command in ("compress", "ask", "chat", "info", "eval", "score", "bench", "synth", "train", "tiny-model"):
        h = run(command, "-h")
        assert h.returncode == 0 and "Usage:" in h.stdout, (command, h.stderr)
        assert "<bool>" not in h.stdout and "list[str]" not in h.stdout, command
        assert "--load-4bit" not in h.stdout and "--no-voco-mask" not in h.stdout  # older spellings: hidden
    assert "--out" in run("compress", "-h").stdout
    old = run("compress", "--output", "x.voco", "missing.mp4")
    assert old.returncode == 1 and "missing.mp4: file not found" in old.stderr  # the old spelling still parses
