"""`vococli experiment needle`: sets at each length and depth, answers with evidence, a report that
adds up, and a rerun that resumes."""

import json

from helpers import run


def test_needle_experiment_writes_a_consistent_report_and_resumes(tmp_path):
    work = tmp_path / "w"
    args = ("experiment", "needle", "-w", work, "--lengths", "20,40", "--depths", "0,1", "--clips", "1",
            "--long-clips", "1", "--threads", "1", "--json")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = [json.loads(x) for x in (work / "needle.jsonl").read_text().splitlines()]
    needle = [x for x in rows if x["kind"] == "needle"]
    assert len(needle) == 2 * 2 * 2 and len([x for x in rows if x["kind"] == "long"]) >= 2
    for x in needle:  # the needle is where the depth puts it: the start, or the last 3 frames
        (a, b), = x["events"]
        assert b - a == 3 and a == (0 if x["depth"] == 0 else x["length_s"] - 3)
        assert x["correct"] == (x["pred"].strip().lower().rstrip(".") == x["answer"])
        top = x["evidence_top"]
        assert x["evidence_hit"] == (a <= top["seconds"] < b)
        assert x["frames"] == x["length_s"] and x["cache_bytes"] > 0
    for length in (20, 40):
        cell = summary["cells"][str(length)]["1.0"]
        at = [x for x in needle if x["length_s"] == length and x["depth"] == 1.0]
        assert cell["questions"] == len(at) and cell["correct"] == sum(x["correct"] for x in at)
    assert (work / "needle.png").stat().st_size > 5000
    md = (work / "needle.md").read_text()
    assert "| depth | 20 s | 40 s |" in md and "Long temporal" in md
    r = run(*args)  # everything is done: nothing is asked again
    assert r.returncode == 0, r.stderr
    assert len((work / "needle.jsonl").read_text().splitlines()) == len(rows)


def test_needle_experiment_refuses_bad_flags_in_one_line(tmp_path):
    r = run("experiment", "needle", "-w", tmp_path / "w", "--depths", "0,2")
    assert r.returncode != 0 and "--depths" in r.stderr and "Traceback" not in r.stderr
    r = run("experiment", "needle", "-w", tmp_path / "w", "--lengths", "5")
    assert r.returncode != 0 and "at least 18 seconds" in r.stderr
