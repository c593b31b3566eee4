"""`vococli eval` end to end with the bundled model on synthetic videos: a run killed with SIGKILL
and rerun ends with the same predictions as an uninterrupted run, no question recorded twice;
broken and missing videos are per-question errors; caches are shared between runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vococli.synth.clips import SynthConfig, synthesize


def cmd(*args):
    return [sys.executable, "-m", "vococli", *map(str, args)]


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "VOCOCLI_MODEL"}
    return subprocess.run(cmd(*args), capture_output=True, text=True, env=env, timeout=600)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """24 synthetic clips plus a missing and a corrupt video, in the LLaMA-VID test_qa.json format."""
    root = tmp_path_factory.mktemp("evalset")
    synthesize(SynthConfig(seed=4242, count=24, kind="mix", needle_seconds=(20,)), root)
    qa = json.loads((root / "test_qa.json").read_text())
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    qa.insert(3, {"video_id": "gone", "question": "what colour is the circle?", "answer": "red", "id": "gone_0"})
    qa += [{"video_id": "broken", "question": "how many shapes are there?", "answer": "one", "id": "broken_0"},
           {"video_id": "broken", "question": "is there a square?", "answer": "no", "id": "broken_1"},
           {"video_id": "../../etc/passwd", "question": "what?", "answer": "x", "id": "evil_0"}]
    (root / "test_qa.json").write_text(json.dumps(qa))
    return root, qa


def eval_args(root, out, *extra):
    return ("eval", "msvd", "--qa", root / "test_qa.json", "--videos", root / "videos", "--out", out,
            "--suffix", "", "--json", *extra)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    root, qa = dataset
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run(*eval_args(root, out, "--cache-dir", out.parent / "caches"))
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_uninterrupted_run(dataset, reference):
    root, qa = dataset
    out, summary = reference
    rows = lines(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == [str(q["id"]) for q in sorted(qa, key=lambda q: _video_order(qa)[q["video_id"]])]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"gone_0", "broken_0", "broken_1", "evil_0"}
    assert "not found" in errors["gone_0"] and "leaves the videos folder" in errors["evil_0"]
    assert all("pred" not in r for r in rows if "error" in r)
    assert summary["errors"] == 4 and summary["answered"] == len(qa) - 4
    rec = json.loads((out / "run.json").read_text())
    assert rec["prompt"]["suffix"] == "" and rec["k"] == 2 and len(rec["annotations"][0]["sha256"]) == 64
    assert rec["generation"]["decoding"] == "greedy" and "torch" in rec["versions"]
    # the bundled model really answers: well above guessing on these synthetic questions
    answered = [r for r in rows if "pred" in r]
    assert sum(r["pred"] == r["answer"] for r in answered) / len(answered) > 0.5


def _video_order(qa):
    order = {}
    for q in qa:
        order.setdefault(q["video_id"], len(order))
    return order


def test_killed_run_resumes_to_the_same_predictions(dataset, reference, tmp_path):
    root, qa = dataset
    ref_out, _ = reference
    out = tmp_path / "run"
    pred = out / "predictions.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "VOCOCLI_MODEL"}
    proc = subprocess.Popen(cmd(*eval_args(root, out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(lines(pred)) < 6:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = lines(pred)
    assert proc.returncode == -signal.SIGKILL and 6 <= len(partial) < len(qa), "the run was not caught midway"
    r = run(*eval_args(root, out))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = lines(pred)
    ids = [x["id"] for x in rows]
    assert len(ids) == len(set(ids)) == len(qa)  # nothing recorded twice, nothing missing
    assert summary["already_done"] == len(partial) and summary["answered"] + summary["errors"] == len(qa) - len(partial)
    strip = lambda rs: {x["id"]: (x.get("pred"), x.get("error")) for x in rs}  # noqa: E731
    assert strip(rows) == strip(lines(ref_out / "predictions.jsonl"))
    # once complete, a rerun asks nothing
    again = json.loads(run(*eval_args(root, out)).stdout)
    assert again["answered"] == again["errors"] == 0 and again["already_done"] == len(qa)


def test_torn_last_line_is_cut_and_redone(dataset, reference, tmp_path):
    root, qa = dataset
    ref_out, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text((ref_out / "run.json").read_text())
    full = (ref_out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(full[:5]) + full[5][:20])
    r = run(*eval_args(root, out, "--cache-dir", ref_out.parent / "caches"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["already_done"] == 5 and summary["frames_compressed"] == 0  # caches shared, not redone
    assert len(lines(out / "predictions.jsonl")) == len(qa)


def test_other_settings_are_refused_and_scores_written(dataset, reference):
    root, _ = dataset
    out, _ = reference
    r = run(*eval_args(root, out, "--fps", "2"))
    assert r.returncode == 1 and "different sampling" in r.stderr and "Traceback" not in r.stderr
    assert "sampling fps (1.0 there, 2.0 now)" in r.stderr, r.stderr
    r = run(*eval_args(root, out, "--dtype", "bfloat16"))  # other answers: not the same run
    assert r.returncode == 1 and "different dtype" in r.stderr
    r = run("score", out, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    rows = [x for x in lines(out / "predictions.jsonl") if "pred" in x]
    assert s["overall"]["errors"] == 4 and s["overall"]["judged"] == len(rows) > 0
    assert s["overall"]["correct"] == sum(x["pred"].strip().lower() == x["answer"] for x in rows)
    assert s["overall"]["answered"] == round(len(rows) / (len(rows) + 4), 4)  # accuracy is over these alone
    assert set(s["by_type"]) >= {"color", "count", "shape"}
    assert (out / "accuracy_exact.png").exists()
    r = run("score", out)
    assert r.returncode == 0 and "overall" in r.stdout
    assert f"{100 * len(rows) / (len(rows) + 4):.1f}%" in r.stdout  # the share answered, beside the accuracy


def test_a_changed_setting_is_named_with_both_values(tmp_path):
    from vococli.errors import UserError
    from vococli.eval.record import check_same_run

    record = {"dataset": "msvd", "sampling": {"fps": 1.0, "start": 0.0, "end": None, "max_frames": None},
              "generation": {"max_new_tokens": 32, "temperature": 0.0, "decoding": "greedy"}}
    (tmp_path / "run.json").write_text(json.dumps(record))
    check_same_run(tmp_path / "run.json", record)
    now = {**record, "sampling": {**record["sampling"], "max_frames": 8},
           "generation": {**record["generation"], "max_new_tokens": 4}}
    with pytest.raises(UserError, match="holds a run with different") as e:
        check_same_run(tmp_path / "run.json", now)
    assert "different sampling max_frames (None there, 8 now), generation max_new_tokens (32 there, 4 now)" in str(e.value)
    gone = {**record, "sampling": {k: v for k, v in record["sampling"].items() if k != "end"}}
    with pytest.raises(UserError, match="different sampling end"):  # a field missing on one side
        check_same_run(tmp_path / "run.json", gone)


def test_a_rerun_says_how_many_earlier_answers_were_errors(tiny_ckpt, tmp_path):
    (tmp_path / "videos").mkdir()
    qa = [{"video_id": f"gone{i}", "question": "what colour?", "answer": "red", "id": f"gone{i}_0"} for i in range(2)]
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    args = ("eval", "msvd", "--qa", tmp_path / "qa.json", "--videos", tmp_path / "videos", "--out", tmp_path / "o",
            "--model", tiny_ckpt)
    first = run(*args, "--json")
    assert json.loads(first.stdout)["errors"] == 2
    assert first.returncode == 1 and "every question of this run failed (2; the first: video 'gone0' not found" \
        in first.stderr, first.stderr
    scored = run("score", tmp_path / "o")
    assert scored.returncode == 0 and "0.0%" in scored.stdout, scored.stdout  # answered: none of the questions
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "0 answered, 0 errors, 2 done before (2 of them errors; --retry-errors asks them again)" in r.stdout
    again = json.loads(run(*args, "--json", "--retry-errors").stdout)
    assert again["errors"] == 2 and again["already_done"] == again["earlier_errors"] == 0


def test_videos_that_is_a_file_is_refused_as_not_a_folder(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not a folder")
    r = run("eval", "msvd", "--qa", tmp_path / "qa.json", "--videos", clip, "--out", tmp_path / "o")
    assert r.returncode == 1 and f"{clip}: not a folder" in r.stderr and "not found" not in r.stderr, r.stderr


def test_four_bit_answering_is_its_own_run(dataset, reference, tmp_path):
    """--load-4bit answers with an nf4 language model from the same (shared) caches; the run record
    says so, and a full-precision run folder refuses to continue in 4-bit."""
    root, qa = dataset
    ref_out, _ = reference
    out = tmp_path / "q4"
    r = run(*eval_args(root, out, "--cache-dir", ref_out.parent / "caches", "--load-4bit", "--limit", "12"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["answered"] + summary["errors"] == 12 and summary["frames_compressed"] == 0
    assert json.loads((out / "run.json").read_text())["answer_weights"] == "nf4"
    assert json.loads((ref_out / "run.json").read_text())["answer_weights"] == "full"
    full = {x["id"]: x.get("pred") for x in lines(ref_out / "predictions.jsonl")}
    q4 = [x for x in lines(out / "predictions.jsonl") if "pred" in x]
    assert q4 and sum(full[x["id"]] == x["pred"] for x in q4) >= len(q4) * 0.7, q4
    r = run(*eval_args(root, ref_out, "--load-4bit"))
    assert r.returncode == 1 and "different answer_weights" in r.stderr
    r = run(*eval_args(root, out, "--weights", "int4"))
    assert r.returncode == 1 and "different answer_weights" in r.stderr
    int4 = tmp_path / "int4"
    r = run(*eval_args(root, int4, "--cache-dir", ref_out.parent / "caches", "--weights", "int4", "--limit", "4"))
    assert r.returncode == 0, r.stderr
    record = json.loads((int4 / "run.json").read_text())
    assert record["answer_weights"] == "int4" and "torchao" in record["versions"]


def test_bad_input_is_one_line(dataset, tmp_path):
    root, _ = dataset
    r = run("eval", "msvd", "--qa", tmp_path / "none.json", "--videos", root / "videos", "--out", tmp_path / "o")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "none.json" in r.stderr
    r = run("eval", "ucf", "--qa", root / "test_qa.json", "--videos", root / "videos", "--out", tmp_path / "o")
    assert r.returncode == 1 and "unknown dataset" in r.stderr
    r = run("score", tmp_path)
    assert r.returncode == 1 and "not an eval run folder" in r.stderr


def test_eval_and_synth_refuse_folders_that_are_not_theirs(dataset, tmp_path):
    root, _ = dataset
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for target, word in [(mine, "not empty"), (a_file, "not a folder")]:
        r = run(*eval_args(root, target, "--limit", "1"))
        assert r.returncode == 1 and word in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = run("synth", "--count", "1", "--out", target)
        assert r.returncode == 1 and word in r.stderr, r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # what an unfinished run of the same command leaves is not someone else's
    r = run("synth", "--count", "1", "--types", "nosuchtype", "--out", tmp_path / "s")
    assert r.returncode == 1 and not (tmp_path / "s").exists()
    (tmp_path / "s" / "videos").mkdir(parents=True)  # as a killed synth leaves it
    r = run("synth", "--count", "1", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    (tmp_path / "new" / "caches").mkdir(parents=True)  # caches copied in before the first run
    r = run(*eval_args(root, tmp_path / "new", "--limit", "1"))
    assert r.returncode == 0, r.stderr
