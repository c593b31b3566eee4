"""`vococli serve` with the official openai client: answers, streaming, one compression per
video under concurrent requests, malformed requests refused with OpenAI error JSON, media-root
confinement, API keys, and a clean stop on SIGTERM."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

DEMO = ROOT / "video" / "shapes_demo.mp4"
END, START = "what colour was the square at the end?", "what colour was the square at the start?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(video: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "video_url", "video_url": {"url": video}}]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The bundled model served on loopback, over a media root holding the demo clip twice."""
    root = tmp_path_factory.mktemp("serve")
    media = root / "media"
    media.mkdir()
    for name in ("demo.mp4", "again.mp4"):
        shutil.copy(DEMO, media / name)
    (root / "secret.txt").write_text("not for clients")
    (media / "escape").symlink_to(root, target_is_directory=True)
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if k != "VOCOCLI_MODEL"}
    proc = subprocess.Popen([sys.executable, "-m", "vococli", "serve", "--media-root", str(media), "--cache-dir",
                             str(root / "caches"), "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{base}/models", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
    yield base, root, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=120)


def test_answers_like_ask_streamed_or_not(client):
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=ask("demo.mp4", END))
    assert r.choices[0].message.content == "yellow" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=model, messages=ask("demo.mp4", START), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "cyan"
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_compress_each_video_once(client, server):
    base, root, _ = server
    questions = [(v, q) for v in ("again.mp4", "demo.mp4") for q in (END, START)] * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda vq: client.chat.completions.create(
            model="m", messages=ask(*vq)).choices[0].message.content, questions))
    assert answers == [("yellow" if q == END else "cyan") for _, q in questions]
    caches = httpx.get(f"{base}/vococli/caches").json()["data"]
    assert sorted(c["video"] for c in caches) == ["again.mp4", "demo.mp4"]
    assert all(c["finished"] and c["frames"] == 8 for c in caches)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (json.dumps({}).encode(), 400, "messages"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "no video"}]}).encode(), 400, "exactly one video"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "audio_url"}]}]}).encode(), 400, "audio_url"),
    (json.dumps({"messages": [{"role": "user", "content": 7}]}).encode(), 400, "content"),
    (json.dumps({"messages": ask("../secret.txt", "q")}).encode(), 400, "outside the media root"),
    (json.dumps({"messages": ask("escape/secret.txt", "q")}).encode(), 400, "outside the media root"),
    (json.dumps({"messages": ask("file:///etc/passwd", "q")}).encode(), 400, "outside the media root"),
    (json.dumps({"messages": ask("http://example.com/v.mp4", "q")}).encode(), 400, "downloads nothing"),
    (json.dumps({"messages": ask("nothere.mp4", "q")}).encode(), 400, "no such file"),
    (json.dumps({"messages": ask("demo.mp4", "q"), "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": ask("demo.mp4", "q"), "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": ask("demo.mp4", "q"), "vococli": {"fps": -1}}).encode(), 400, "fps"),
    (json.dumps({"messages": ask("demo.mp4", "q") + [{"role": "assistant", "content": "x"}]}).encode(), 400,
     "last message"),
    (b"{" + b" " * (2 << 20) + b"}", 413, "larger than"),
    (b"[" * 100000 + b"]" * 100000, 400, ""),
])
def test_malformed_requests_get_openai_errors(server, body, status, words):
    base = server[0]
    r = httpx.post(f"{base}/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"], err
    assert "Traceback" not in r.text


def test_a_client_leaving_midway_does_not_hurt_the_next(client, server):
    base = server[0]
    with httpx.stream("POST", f"{base}/chat/completions", json={"messages": ask("demo.mp4", START), "stream": True,
                                                                "max_tokens": 64}, timeout=60) as r:
        next(r.iter_lines())  # the first event, then the client goes away
    assert client.chat.completions.create(model="m", messages=ask("demo.mp4", END)).choices[0].message.content == "yellow"


def test_a_follow_up_goes_on_in_the_kept_conversation(client, server):
    """The second turn of a conversation: only its own tokens are fed (prompt_tokens counts what
    was computed), and it answers as a Session over the same cache does (`vococli chat`)."""
    from vococli import GenerationConfig, Session, load_cache, load_model

    first = client.chat.completions.create(model="m", messages=ask("demo.mp4", START), max_tokens=16)
    history = ask("demo.mp4", START) + [{"role": "assistant", "content": first.choices[0].message.content}]
    follow = history + [{"role": "user", "content": END}]
    second = client.chat.completions.create(model="m", messages=follow, max_tokens=16)
    other = history[:1] + [{"role": "assistant", "content": "magenta"}, {"role": "user", "content": END}]
    fresh = client.chat.completions.create(model="m", messages=other, max_tokens=16)  # no kept state matches
    assert second.usage.prompt_tokens < fresh.usage.prompt_tokens / 2
    answerer = load_model(vision=False)
    cache = next(c for c in (server[1] / "caches").glob("demo-*.voco"))
    session = Session(answerer, load_cache(cache, fingerprint=answerer.fingerprints))
    gen = GenerationConfig(max_new_tokens=16)
    assert session.ask(START, gen).text == first.choices[0].message.content
    assert session.ask(END, gen).text == second.choices[0].message.content


def test_uploads_land_in_the_media_root_and_can_be_asked_about(client, server):
    base, root, _ = server
    data = DEMO.read_bytes()
    r = httpx.put(f"{base}/vococli/media/uploaded.mp4", content=data, timeout=60)
    assert r.status_code == 200 and r.json()["bytes"] == len(data)
    assert (root / "media" / "uploaded.mp4").read_bytes() == data
    assert httpx.put(f"{base}/vococli/media/uploaded.mp4", content=data).status_code == 409
    assert httpx.put(f"{base}/vococli/media/..%2Fevil.mp4", content=data).status_code in (400, 404)
    assert httpx.put(f"{base}/vococli/media/notes.txt", content=b"x").status_code == 400
    assert "uploaded.mp4" in [m["path"] for m in httpx.get(f"{base}/vococli/media").json()["data"]]
    answer = client.chat.completions.create(model="m", messages=ask("uploaded.mp4", END)).choices[0].message.content
    assert answer == "yellow"
    strip = httpx.get(f"{base}/vococli/thumbnails", params={"video": "uploaded.mp4"})
    assert strip.status_code == 200 and strip.content.startswith(b"\x89PNG")


def test_an_image_is_a_one_frame_cache(client, server):
    import io

    import numpy as np
    from PIL import Image

    base, root, _ = server
    buf = io.BytesIO()
    Image.fromarray(np.full((96, 96, 3), (40, 200, 200), dtype=np.uint8)).save(buf, format="PNG")
    assert httpx.put(f"{base}/vococli/media/still.png", content=buf.getvalue()).status_code == 200
    messages = [{"role": "user", "content": [{"type": "text", "text": "what colour is the background?"},
                                             {"type": "image_url", "image_url": {"url": "still.png"}}]}]
    reply = client.chat.completions.create(model="m", messages=messages, max_tokens=8)
    assert reply.choices[0].message.content
    still = [c for c in httpx.get(f"{base}/vococli/caches").json()["data"] if c["video"] == "still.png"]
    assert len(still) == 1 and still[0]["frames"] == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs the system's Chromium (apt-get install chromium)")
def test_the_web_page_answers_in_a_real_browser(server, tmp_path):
    """Headless Chromium: choose the clip, ask, read the streamed answer (a screenshot is saved
    beside the test's files when it fails)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base = server[0].removesuffix("/v1")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        try:
            page.goto(f"{base}/")
            page.wait_for_selector("#video option[value='demo.mp4']", state="attached", timeout=30000)
            page.select_option("#video", "demo.mp4")
            page.fill("#question", END)
            page.click("#ask")
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=60000)
            assert page.text_content("#answer") == "yellow"
            assert page.eval_on_selector("#strip img", "img => img.naturalWidth") > 0  # the frame strip loaded
        except Exception:
            page.screenshot(path=str(tmp_path / "page.png"))
            print(f"screenshot: {tmp_path / 'page.png'}")
            raise
        finally:
            browser.close()


def test_sigterm_stops_the_server_cleanly(server):
    _, _, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_an_api_key_is_required_when_set(tiny_ckpt, tmp_path, monkeypatch):
    """In process (FastAPI's test client): without the key 401, with it the models list."""
    from fastapi.testclient import TestClient

    from vococli.serve.app import make_app
    from vococli.serve.engine import Engine

    engine = Engine(str(tiny_ckpt), tmp_path / "caches")
    web = TestClient(make_app(engine, tmp_path, api_key="sesame"))
    assert web.get("/v1/models").status_code == 401
    assert web.get("/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
    assert web.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_a_server_killed_while_compressing_resumes_the_cache(tmp_path):
    """kill -9 while a long clip is being compressed, start the server again, ask again: the
    chunks written before the kill are kept as they were (resumed, not redone) and it answers."""
    import os

    from helpers import make_clip

    media = tmp_path / "media"
    media.mkdir()
    make_clip(media / "long.mp4", 96, 96, 120, fps=10)
    env = {k: v for k, v in os.environ.items() if k != "VOCOCLI_MODEL"}

    def start():
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "vococli", "serve", "--media-root", str(media), "--cache-dir",
                                 str(tmp_path / "caches"), "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(400):
            try:
                httpx.get(f"{base}/models", timeout=1)
                return proc, base
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("the server did not start")

    body = {"messages": ask("long.mp4", "what colour is the block?"), "max_tokens": 4, "vococli": {"fps": 10}}
    proc, base = start()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: httpx.post(f"{base}/chat/completions", json=body, timeout=300))
        for _ in range(600):
            chunks = sorted((tmp_path / "caches").glob("*.voco/chunk-*.safetensors"))
            if len(chunks) >= 2:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
        with pytest.raises(httpx.HTTPError):
            pending.result(timeout=60).raise_for_status()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in chunks}
    assert before, "no chunk was written before the kill"
    proc, base = start()
    try:
        r = httpx.post(f"{base}/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        cache = next((tmp_path / "caches").glob("*.voco"))
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("chunk-*.safetensors")}
        assert all(after[name] == seen for name, seen in before.items())  # kept, not rewritten
        assert len(after) > len(before)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_sixteen_clients_over_four_videos():
    """The bench's load run, small: no errors, one cache per video, latencies reported."""
    from vococli.bench.serving import serve_load

    report = serve_load(clients=16, requests=1, videos=4)
    assert report["errors"] == 0, report["first_error"]
    assert report["caches"] == report["videos"] == 4 and report["requests"] == 16
    assert 0 < report["p50_s"] <= report["p95_s"] <= report["max_s"]
