"""compress-many and eval on Ray: the same caches and predictions as one process, and a worker
killed with a real signal loses nothing and answers nothing twice."""

import json
import os
import signal

import pytest
import torch

from vococli.cache.chunks import load_cache
from vococli.compress.pipeline import compress_video
from vococli.video.sampling import Sampling

ray = pytest.importorskip("ray")

SAMPLING = Sampling(fps=1.0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from vococli.synth.clips import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("clips")
    synthesize(SynthConfig(seed=21, count=6, kind="temporal", size=64), out)
    return out


@pytest.fixture(scope="module")
def local_ray(tiny_ckpt):
    from vococli.cluster.workers import WorkerSettings, connect

    settings = WorkerSettings(str(tiny_ckpt), "cpu", "float32", threads=1)
    connect("local", 2, settings)
    yield settings
    ray.shutdown()


def test_a_local_ray_instance_listens_on_loopback_only(local_ray):
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def same_tensors(a, b):
    ca, cb = load_cache(a), load_cache(b)
    assert torch.equal(ca.keys, cb.keys) and torch.equal(ca.values, cb.values)
    assert (ca.timestamps == cb.timestamps).all()


def one_by_one(model, clips, tmp_path):
    refs = {}
    for v in sorted((clips / "videos").glob("*.mp4")):
        refs[v.stem] = tmp_path / f"{v.stem}.voco"
        compress_video(model, v, refs[v.stem], SAMPLING, notice=lambda s: None)
    return refs


def by_stem(results):
    return {os.path.basename(r["video"]).removesuffix(".mp4"): r for r in results}


def test_compress_many_here_equals_compress_one_by_one(tiny_ckpt, tiny_model, clips, tmp_path):
    from vococli.cluster.compress_many import compress_many, list_inputs

    videos = list_inputs(clips)
    assert len(videos) == 6
    results = compress_many(videos, tmp_path / "caches", str(tiny_ckpt), SAMPLING, device="cpu", dtype="float32")
    refs = one_by_one(tiny_model, clips, tmp_path / "ref")
    for stem, r in by_stem(results).items():
        same_tensors(r["cache"], refs[stem])
    again = compress_many(videos, tmp_path / "caches", str(tiny_ckpt), SAMPLING, device="cpu", dtype="float32")
    assert all(r["frames_computed"] == 0 for r in again)  # a rerun skips finished caches
    listed = tmp_path / "list.txt"
    listed.write_text("# two of them\n" + "\n".join(os.path.relpath(v, tmp_path) for v in videos[:2]) + "\n")
    assert list_inputs(listed) == [tmp_path / os.path.relpath(v, tmp_path) for v in videos[:2]]


def test_compress_many_on_ray_survives_a_killed_worker(local_ray, tiny_model, clips, tmp_path):
    from vococli.cluster.compress_many import compress_many, list_inputs

    killed = []

    def kill_one(result, done, total):
        if not killed:  # the worker that finished first is busy with its next video: kill it
            killed.append(result["worker"])
            os.kill(result["worker"], signal.SIGKILL)

    videos = list_inputs(clips)
    results = compress_many(videos, tmp_path / "caches", local_ray.model, SAMPLING, ray_address="local", workers=2,
                            device="cpu", dtype="float32", on_result=kill_one)
    assert killed and len(results) == 6 and not any("error" in r for r in results)
    refs = one_by_one(tiny_model, clips, tmp_path / "ref")
    for stem, r in by_stem(results).items():
        same_tensors(r["cache"], refs[stem])
    assert len({r["worker"] for r in results}) >= 2


def test_eval_on_ray_equals_eval_here_and_answers_each_question_once(local_ray, tiny_model, clips, tmp_path):
    from vococli.cluster.eval_ray import run_eval_ray
    from vococli.eval.formats import read_questions
    from vococli.eval.run import EvalConfig, run_eval

    qa = clips / "test_qa.json"
    items, fmt = read_questions("msvd", qa=qa)
    here = EvalConfig(dataset="msvd", videos=clips / "videos", out=tmp_path / "here", max_new_tokens=4)
    run_eval(tiny_model, items, here, [qa], fmt, notice=lambda s: None)
    pids, killed = [], []

    def kill_after_first(done, total):
        if done == 1 and not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    there = EvalConfig(dataset="msvd", videos=clips / "videos", out=tmp_path / "ray", max_new_tokens=4)
    summary = run_eval_ray(local_ray, items, there, [qa], fmt, "local", 2, on_video=kill_after_first,
                           on_start=lambda actors: pids.extend(ray.get([a.ready.remote() for a in actors])))
    assert killed  # one worker was killed during the run
    rows = [json.loads(x) for x in (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()]
    ref = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "here" / "predictions.jsonl").read_text().splitlines()}
    assert sorted(r["id"] for r in rows) == sorted(ref) and summary.answered == len(ref)  # each exactly once
    assert all(r["pred"] == ref[r["id"]]["pred"] for r in rows)
    record = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert record["workers"] == {"ray": "local", "count": 2}
