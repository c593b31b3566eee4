"""`vococli bench --sections serve`: many clients at once against `vococli serve` on loopback.

Starts the server (the default model) over a media root of synthetic clips, runs `clients`
threads that each ask `requests` questions about the clips through the official openai client,
and reports errors, how many caches were made (one per video), latency percentiles and answers
per second. The server is stopped at the end, whatever happened.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_load(clients: int = 16, requests: int = 4, videos: int = 4, timeout_s: float = 600.0) -> dict:
    import httpx
    from openai import OpenAI

    from vococli.synth.clips import SynthConfig, synthesize

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig(seed=31, count=videos, kind="frame"), Path(tmp) / "media")
        media = Path(tmp) / "media"
        names = sorted(str(p.relative_to(media)) for p in media.rglob("*.mp4"))
        port = _port()
        proc = subprocess.Popen([sys.executable, "-m", "vococli", "serve", "--media-root", str(media), "--cache-dir",
                                 str(Path(tmp) / "caches"), "--port", str(port), "--queue", str(clients * 2)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(f"{base}/models", timeout=1)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not start: {proc.stderr.read()[-300:]}")
                    time.sleep(0.3)
            client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=timeout_s)

            def one(i: int) -> tuple[float, str | None]:
                video = names[i % len(names)]
                t0 = time.perf_counter()
                try:
                    client.chat.completions.create(model="m", max_tokens=8, messages=[{"role": "user", "content": [
                        {"type": "text", "text": "what colour is the circle?"},
                        {"type": "video_url", "video_url": {"url": video}}]}])
                    return time.perf_counter() - t0, None
                except Exception as e:  # counted, not raised: the report says how many failed
                    return time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:120]}"

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, range(clients * requests)))
            wall = time.perf_counter() - t0
            caches = httpx.get(f"{base}/vococli/caches", timeout=10).json()["data"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    latencies = sorted(t for t, e in results if e is None)
    errors = [e for _, e in results if e is not None]

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

    return {"clients": clients, "requests": len(results), "videos": len(names), "errors": len(errors),
            "first_error": errors[0] if errors else None, "caches": len(caches),
            "p50_s": pct(0.50), "p95_s": pct(0.95), "max_s": round(latencies[-1], 3) if latencies else None,
            "answers_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 2),
            "median_s": round(statistics.median(latencies), 3) if latencies else None}
