"""`vococli bench --sections startup`: how long commands take to start, against `import torch`.

Each command runs as a fresh process, as a user starts it; the times are medians over repeats,
measured in the same run as the baselines: `import torch` alone, and `import torch` with the
transformers Llama modules (what any answer from a transformers model needs to import). The
ask row answers one question from a cache of a synthetic clip with the default model.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "what colour is the circle?"


def _seconds(args: list[str], repeats: int, env: dict) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(args, capture_output=True, env=env, timeout=600)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup_times(repeats: int, model: str | None = None) -> dict:
    """Start-up seconds of the commands and their ratio to `import torch` alone."""
    from vococli.defaults import default_model_path
    from vococli.synth.clips import SynthConfig, synthesize

    env = dict(os.environ, VOCOCLI_MODEL=model or default_model_path())
    py = sys.executable
    cli = [py, "-m", "vococli"]
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig(seed=5, count=1, kind="frame"), Path(tmp) / "s")
        video = next((Path(tmp) / "s").rglob("*.mp4"))
        cache = Path(tmp) / "clip.voco"
        made = subprocess.run([*cli, "compress", str(video), "-o", str(cache)], capture_output=True, text=True,
                              env=env, timeout=600)
        if made.returncode != 0:
            raise RuntimeError(f"compressing the clip failed: {made.stderr.strip()[-300:]}")
        rows = {
            "import torch": [py, "-c", "import torch"],
            "import torch + transformers Llama": [py, "-c", "import torch, transformers.models.llama.modeling_llama"],
            "vococli --version": [*cli, "--version"],
            "vococli --help": [*cli, "--help"],
            "vococli info CACHE": [*cli, "info", str(cache)],
            "vococli ask (a bad flag)": [*cli, "ask", str(cache), QUESTION, "--temperature", "-1"],
            "vococli ask (a missing cache)": [*cli, "ask", str(Path(tmp) / "none.voco"), QUESTION],
            "vococli ask CACHE (one answer)": [*cli, "ask", str(cache), QUESTION],
        }
        times = {name: _seconds(args, repeats, env) for name, args in rows.items()}
    base = times["import torch"]
    return {"repeats": repeats, "rows": [{"command": name, "seconds": round(t, 3), "vs_import_torch": round(t / base, 2)}
                                         for name, t in times.items()]}
