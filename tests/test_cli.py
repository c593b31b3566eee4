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

    monkeypatch.setattr(cli, "app", fail)
    for error, code in [(InductorError(InvalidCxxCompiler(), None), 1),
                        (InductorError(RuntimeError("a bug in a lowering"), None), 2)]:
        raised[:] = [error]
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == code
        msg = capsys.readouterr().err
        assert ("No working C++ compiler" in msg and "without --compile" in msg) == (code == 1), msg
        assert len(msg.strip().splitlines()) == 1
