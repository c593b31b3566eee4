"""eval under faults: one run per folder, machine problems stop the run without recording
anything, errors whose cause is gone are asked again, unusable annotation entries are each
their own error, and a shared cache folder serves two runs at once."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CLIP, run
from vococli.errors import EnvironmentProblem, UserError
from vococli.eval.formats import read_questions
from vococli.eval.run import EvalConfig, run_eval
from vococli.video.sampling import Sampling

SAMPLING = Sampling(fps=1.0, max_frames=4)


def annotations(folder: Path, entries: list[dict]) -> Path:
    path = folder / "qa.json"
    path.write_text(json.dumps(entries))
    return path


def videos_folder(tmp_path, names=("a", "b")) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir(exist_ok=True)
    for n in names:
        shutil.copy(CLIP, folder / f"{n}.mkv")
    return folder


def questions(names=("a", "b"), per=2):
    return [{"video_id": n, "question": f"what is here {i}?", "answer": "x", "id": f"{n}{i}"}
            for n in names for i in range(per)]


def evaluate(model, qa: Path, videos: Path, out: Path, **cfg):
    items, fmt = read_questions("msvd", qa=qa)
    config = EvalConfig(dataset="msvd", videos=videos, out=out, sampling=SAMPLING, max_new_tokens=3, **cfg)
    return run_eval(model, items, config, [qa], fmt, notice=lambda s: None)


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_a_second_run_into_the_same_folder_is_refused(tiny_model, tmp_path):
    from vococli.locks import lock_folder

    qa, videos, out = annotations(tmp_path, questions()), videos_folder(tmp_path), tmp_path / "out"
    out.mkdir()

    first = lock_folder(out, "held")  # what a first eval holds while it runs
    with pytest.raises(UserError, match="another vococli eval is writing this run folder"):
        evaluate(tiny_model, qa, videos, out)
    assert not (out / "predictions.jsonl").exists()
    first.release()
    assert evaluate(tiny_model, qa, videos, out).answered == 4


@pytest.mark.parametrize("where", ["writing an answer", "writing a cache chunk", "answering (memory)"])
def test_machine_problems_stop_the_run_and_are_never_an_answer(tiny_model, tmp_path, monkeypatch, where):
    """A full disk (or exhausted memory) midway: the run stops in one line, nothing is written as
    a question's error, and a plain rerun answers every question."""
    import vococli.eval.predictions as predictions
    from vococli.answer.session import Session

    qa, videos, out = annotations(tmp_path, questions()), videos_folder(tmp_path), tmp_path / "out"
    calls = {"n": 0}
    nth = 2 if where == "writing a cache chunk" else 3  # one chunk per video: the second video's

    def fails_once(real):
        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == nth:
                if where == "answering (memory)":
                    raise torch.OutOfMemoryError("CUDA out of memory")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **k)
        return wrapped

    if where == "writing an answer":
        monkeypatch.setattr(predictions.os, "fsync", fails_once(predictions.os.fsync))
    elif where == "writing a cache chunk":
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_file", fails_once(safetensors.torch.save_file))
    else:
        monkeypatch.setattr(Session, "ask", fails_once(Session.ask))
    with pytest.raises(EnvironmentProblem, match="(No space left on device|out of memory)"):
        evaluate(tiny_model, qa, videos, out, cache_dir=tmp_path / "caches")
    assert not any("error" in r for r in rows(out))
    monkeypatch.undo()
    summary = evaluate(tiny_model, qa, videos, out, cache_dir=tmp_path / "caches")
    assert summary.errors == 0 and summary.answered + summary.already_done == 4
    assert sorted(r["id"] for r in rows(out)) == ["a0", "a1", "b0", "b1"] and all("pred" in r for r in rows(out))


def test_a_rerun_asks_again_when_the_video_has_appeared(tiny_model, tmp_path):
    qa = annotations(tmp_path, questions(("a", "late")))
    videos, out = videos_folder(tmp_path, ("a",)), tmp_path / "out"
    first = evaluate(tiny_model, qa, videos, out)
    assert (first.answered, first.errors) == (2, 2)
    assert {r["error_kind"] for r in rows(out) if "error" in r} == {"video"}
    same = evaluate(tiny_model, qa, videos, out)  # nothing changed: the errors stand
    assert (same.answered, same.errors, same.retried, same.earlier_errors) == (0, 0, 0, 2)
    shutil.copy(CLIP, videos / "late.mkv")
    later = evaluate(tiny_model, qa, videos, out)
    assert (later.answered, later.errors, later.retried) == (2, 0, 2)
    assert sorted(r["id"] for r in rows(out)) == ["a0", "a1", "late0", "late1"]
    assert all("pred" in r for r in rows(out))


def test_each_unusable_entry_is_its_own_error_and_the_rest_are_answered(tiny_model, tmp_path):
    entries = questions(("a",), per=1) + [
        {"video_id": "a", "question": "bad \ud800 text", "answer": "x", "id": "surrogate"},
        {"video_id": "a", "question": None, "answer": "x", "id": "null"},
        {"video_id": "a", "question": {"text": "what?"}, "answer": "x", "id": "object"},
        {"video_id": "a", "question": "fine?", "answer": None, "id": "no_answer"},
        {"video_id": "a", "question": "fine?", "answer": "x", "id": [1]},
    ]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(entries))  # json escapes the lone surrogate as \\ud800
    out = tmp_path / "out"
    summary = evaluate(tiny_model, qa, videos_folder(tmp_path, ("a",)), out)
    assert (summary.answered, summary.errors) == (1, 5)
    got = {r["id"]: r for r in rows(out)}
    assert "pred" in got["a0"]
    assert "lone surrogate" in got["surrogate"]["error"] and "question is null" in got["null"]["error"]
    assert "question is dict" in got["object"]["error"] and "answer is null" in got["no_answer"]["error"]
    assert "id [1] is not a string" in got["<entry 5>"]["error"]
    assert {r["error_kind"] for r in got.values() if "error" in r} == {"question"}
    again = evaluate(tiny_model, qa, videos_folder(tmp_path, ("a",)), out)  # the same file: not asked again
    assert (again.answered, again.errors, again.retried) == (0, 0, 0)


def test_deeply_nested_annotations_are_one_line(tmp_path):
    (tmp_path / "qa.json").write_text("[" * 100000 + "]" * 100000)
    r = run("eval", "msvd", "--qa", tmp_path / "qa.json", "--videos", tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 1 and "nested too deeply" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_two_runs_sharing_a_cache_folder_both_finish_without_errors(tiny_ckpt, tmp_path):
    """Two evals at once over the same videos and --cache-dir: one compresses each video, the
    other waits for it; no question is an error, every cache is made once."""
    qa, videos = annotations(tmp_path, questions(("a", "b", "c"))), videos_folder(tmp_path, ("a", "b", "c"))
    args = ["eval", "msvd", "--qa", str(qa), "--videos", str(videos), "--cache-dir", str(tmp_path / "caches"),
            "--model", str(tiny_ckpt), "--max-frames", "6", "--max-new-tokens", "3", "--json"]
    procs = [subprocess.Popen([sys.executable, "-m", "vococli", *args, "--out", str(tmp_path / f"run{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        summary = json.loads(stdout)
        assert summary["errors"] == 0 and summary["answered"] == 6
    assert len(list((tmp_path / "caches").glob("*.voco"))) == 3
    assert sum(json.loads(out)["frames_compressed"] for out, _ in results) == 3 * 6


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs whose size the test sets (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def resize(size_bytes: int):
        subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_up_midway_stops_eval_and_a_rerun_finishes(tiny_ckpt, tmp_path, small_disk):
    """A real full disk: the run folder (and its caches) on a tmpfs sized to half of what the run
    needs. eval stops in one line with nothing recorded as an error; with room again, a plain
    rerun answers every question exactly as a run that never hit the wall."""
    disk, resize = small_disk
    qa, videos = annotations(tmp_path, questions(("a", "b", "c", "d"))), videos_folder(tmp_path, ("a", "b", "c", "d"))

    def eval_into(out):
        return run("eval", "msvd", "--qa", qa, "--videos", videos, "--out", out, "--model", tiny_ckpt,
                   "--fps", "2", "--max-new-tokens", "3", "--json")

    free = shutil.disk_usage(disk).free
    ref = eval_into(disk / "ref")
    assert ref.returncode == 0, ref.stderr
    needed = free - shutil.disk_usage(disk).free
    expected = sorted((x["id"], x["pred"]) for x in rows(disk / "ref"))
    shutil.rmtree(disk / "ref")
    resize(max(4096, needed // 2 // 4096 * 4096))
    r = eval_into(disk / "run")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "No space left on device" in r.stderr, r.stderr
    written = rows(disk / "run") if (disk / "run" / "predictions.jsonl").exists() else []
    assert not any("error" in x for x in written) and len(written) < 8
    resize(64 << 20)
    again = eval_into(disk / "run")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["errors"] == 0
    assert sorted((x["id"], x["pred"]) for x in rows(disk / "run")) == expected
