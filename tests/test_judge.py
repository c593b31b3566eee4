"""Judges: exact and containment matching, and the LLM judge against a local chat-completions server
that misbehaves (malformed replies, HTTP 500s) the way real endpoints do."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vococli.errors import UserError
from vococli.eval.score import JUDGEMENTS_FILE, score_run
from vococli.eval.judge import JudgeConfig, JudgementCache, LLMJudge, contains_match, exact_match, parse_verdict


def test_exact_and_contains():
    assert exact_match("Red", " red. ")
    assert not exact_match("red", "dark red")
    assert contains_match("red", "It is dark red.")
    assert contains_match("ice cream", "eating ice cream")
    assert not contains_match("no", "not sure")
    assert not contains_match("cat", "cats")


def test_parse_verdict():
    assert parse_verdict('{"pred": "yes", "score": 4}') == ("yes", 4)
    assert parse_verdict("Sure! {'pred': 'no', 'score': 1} done") == ("no", 1)
    assert parse_verdict('{"pred": "YES", "score": "5"}') == ("yes", 5)
    for bad in ("yes", '{"pred": "maybe", "score": 3}', '{"pred": "yes", "score": 7}', '{"pred": "yes"}',
                '{"pred": "yes", "score": 2.5}', "{__import__('os')}"):
        assert parse_verdict(bad) is None, bad


class Judge(BaseHTTPRequestHandler):
    """Verdict: "yes" when the prediction equals the answer. Behaviour per prediction text:
    'flaky-500' fails twice with HTTP 500, 'garbled' replies unreadably once, 'dead' always fails."""

    calls: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        pred = user.split("Predicted answer: ")[1].split("\n")[0]
        answer = user.split("Correct answer: ")[1].split("\n")[0]
        with self.lock:
            n = self.calls[pred] = self.calls.get(pred, 0) + 1
        if pred == "dead" or (pred == "flaky-500" and n <= 2):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        content = "I think it matches" if pred == "garbled" and n == 1 else json.dumps(
            {"pred": "yes" if pred == answer or pred in ("flaky-500", "garbled") else "no", "score": 5 if pred == answer else 1})
        reply = {"model": "judge-2026-01", "choices": [{"message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    Judge.calls = {}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def make_run(tmp_path, rows):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


ROWS = [
    {"id": "1", "question": "what colour?", "answer": "red", "pred": "red", "type": "color"},
    {"id": "2", "question": "what colour?", "answer": "blue", "pred": "green", "type": "color"},
    {"id": "3", "question": "how many?", "answer": "two", "pred": "flaky-500", "type": "number"},
    {"id": "4", "question": "how many?", "answer": "three", "pred": "garbled", "type": "number"},
    {"id": "5", "question": "where?", "answer": "left", "pred": "dead", "type": "position"},
    {"id": "6", "question": "where?", "answer": "top", "error": "video 'x' not found", "type": "position"},
]


def test_llm_judge_retries_counts_failures_apart_and_caches(tmp_path, server):
    run = make_run(tmp_path, ROWS)
    cfg = JudgeConfig(url=server, model="judge", retries=3, backoff_s=0.001, workers=4)
    res = score_run(run, "llm", cfg).to_dict()
    o = res["overall"]
    # yes: 1, 3 (after two 500s), 4 (after one garbled reply); no: 2; failed: 5; error: 6
    assert (o["correct"], o["judged"], o["failed_judgements"], o["errors"]) == (3, 4, 1, 1)
    assert o["accuracy"] == 0.75 and o["score"] == pytest.approx((5 + 1 + 1 + 1) / 4)
    assert res["by_type"]["position"] == {"accuracy": None, "correct": 0, "judged": 0, "errors": 1, "answered": 0.5,
                                          "failed_judgements": 1, "score": None}
    assert res["judge_models_reported"] == {"judge-2026-01": 4}
    assert Judge.calls["dead"] == 4 and Judge.calls["flaky-500"] == 3 and Judge.calls["garbled"] == 2
    # a re-score asks only for the judgement that failed
    before = dict(Judge.calls)
    again = score_run(run, "llm", cfg).to_dict()
    assert again["overall"] == o
    assert {k: v - before.get(k, 0) for k, v in Judge.calls.items() if v != before.get(k, 0)} == {"dead": 4}
    assert len((run / JUDGEMENTS_FILE).read_text().splitlines()) == 4
    scores = json.loads((run / "scores.json").read_text())
    assert scores["llm"]["overall"] == o and (run / "accuracy_llm.png").stat().st_size > 0
    assert scores["llm"]["first_failure"].startswith("HTTP 500")


def test_llm_judge_that_never_answers_is_an_error_not_a_score(tmp_path):
    run = make_run(tmp_path, ROWS[:2])
    cfg = JudgeConfig(url="http://127.0.0.1:9/v1", model="judge", retries=1, backoff_s=0.001)
    with pytest.raises(UserError, match=r"127.0.0.1:9/v1: all 2 judgements failed \(ConnectError"):
        score_run(run, "llm", cfg)
    assert not (run / "scores.json").exists()


def test_scores_of_older_predictions_are_dropped(tmp_path):
    """Scores of one judge made before the run went on are not kept beside newer ones."""
    run = make_run(tmp_path, ROWS[:2])
    score_run(run, "exact")
    with open(run / "predictions.jsonl", "a") as f:
        f.write(json.dumps({"id": "9", "question": "q", "answer": "red", "pred": "red"}) + "\n")
    score_run(run, "contains")
    scores = json.loads((run / "scores.json").read_text())
    assert set(scores) == {"contains"} and scores["contains"]["overall"]["judged"] == 3
    assert not (run / "accuracy_exact.png").exists()
    score_run(run, "exact")
    assert set(json.loads((run / "scores.json").read_text())) == {"contains", "exact"}
    # an entry written before entries carried the hash is kept
    scores = json.loads((run / "scores.json").read_text())
    scores["old"] = {"overall": {}}
    (run / "scores.json").write_text(json.dumps(scores))
    score_run(run, "exact")
    assert set(json.loads((run / "scores.json").read_text())) == {"contains", "exact", "old"}


def test_exact_and_contains_scores_keep_errors_apart(tmp_path):
    rows = [{"id": "1", "question": "q", "answer": "red", "pred": "Red.", "type": "a"},
            {"id": "2", "question": "q", "answer": "red", "pred": "dark red", "type": "a"},
            {"id": "3", "question": "q", "answer": "two", "error": "video not found", "type": "b"}]
    run = make_run(tmp_path, rows)
    ex = score_run(run, "exact").to_dict()
    assert ex["overall"] == {"accuracy": 0.5, "correct": 1, "judged": 2, "errors": 1, "answered": 0.6667}
    co = score_run(run, "contains").to_dict()
    assert co["overall"]["accuracy"] == 1.0
    scores = json.loads((run / "scores.json").read_text())
    assert set(scores) == {"exact", "contains"}


def test_judge_does_not_retry_client_errors(tmp_path):
    class Refuse(BaseHTTPRequestHandler):
        hits = 0

        def log_message(self, *a):
            pass

        def do_POST(self):
            Refuse.hits += 1
            self.send_response(401)
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = LLMJudge(JudgeConfig(url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="m", backoff_s=0.001),
                         JudgementCache(tmp_path / "j.jsonl"))
        j = judge.judge("q", "a", "p")
        judge.close()
    finally:
        srv.shutdown()
    assert j.verdict is None and j.error.startswith("HTTP 401") and Refuse.hits == 1


class Dripping(BaseHTTPRequestHandler):
    """A hostile endpoint: `drip` sends a valid status line, then the body a byte every 0.3 s
    forever; `headers` drips its header lines; `hang` reads the request and never answers."""

    mode = "drip"

    def log_message(self, *args):
        pass

    def do_POST(self):
        import time

        self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.mode == "hang":
                time.sleep(30)
                return
            if self.mode == "headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(100):
                    self.wfile.write(b"X: y\r\n")
                    self.wfile.flush()
                    time.sleep(0.3)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:  # the client gave up
            pass


@pytest.fixture
def hostile():
    servers = []

    def start(mode):
        handler = type(f"Dripping_{mode}", (Dripping,), {"mode": mode})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("mode", ["drip", "headers", "hang"])
def test_a_judge_request_ends_at_its_deadline_whatever_the_endpoint_does(tmp_path, hostile, mode):
    import time

    url = hostile(mode)
    cfg = JudgeConfig(url=url, model="m", retries=0, timeout_s=1.0)
    judge = LLMJudge(cfg, JudgementCache(tmp_path / "j.jsonl"))
    t0 = time.monotonic()
    j = judge.judge("q?", "a", "b")
    took = time.monotonic() - t0
    judge.close()
    assert j.verdict is None and "no complete reply within 1 s" in j.error, j.error
    assert took < 2.5, took


def test_the_whole_scoring_run_has_a_deadline(tmp_path, hostile):
    """20 judgements, 2 workers, 3 retries of 1 s each against a dripping endpoint: without the
    run deadline ~40 s or more; with a 3 s deadline the command ends in about that."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"id": str(i), "question": f"q{i}?", "answer": "a", "pred": "b"} for i in range(20)]
    (run / "run.json").write_text(json.dumps({"format": "vococli-eval-run"}))
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vococli", "score", str(run), "--judge", "llm", "--judge-url",
                        hostile("drip"), "--judge-model", "m", "--judge-workers", "2", "--judge-retries", "3",
                        "--judge-timeout", "1", "--judge-deadline", "3"], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1 and "all 20 judgements failed" in r.stderr, r.stderr
    assert took < 12, took  # the deadline plus start-up (~4-7 s here)
