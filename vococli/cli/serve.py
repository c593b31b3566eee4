"""`vococli serve`: the OpenAI-compatible server (vococli/serve)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer

from vococli.cli.common import DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt, err, model_path, quiet_transformers, threads_for
from vococli.errors import UserError


def serve(
    media_root: Path = typer.Option(..., "--media-root", help="Folder whose videos requests may name (nothing "
                                    "outside it is ever read)."),
    cache_dir: Path = typer.Option(..., "--cache-dir", help="Folder of the per-video caches (kept across restarts; "
                                   "the same names eval uses)."),
    model: Optional[str] = ModelOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key clients must "
                                              "send (Authorization: Bearer KEY); none: no key."),
    queue_size: int = typer.Option(16, "--queue", help="Requests that may wait; more get HTTP 429."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
):
    """Serve OpenAI-compatible chat completions about videos, each compressed once into a cache.

    Ctrl-C or SIGTERM stops it: requests in flight are finished first.
    """
    from vococli.serve.app import api_key_from
    from vococli.threads import check_threads

    if not media_root.is_dir():
        raise UserError(f"{media_root}: media root folder not found")
    if not 0 <= port < 65536 or queue_size < 1:
        raise UserError("--port must be 0-65535 and --queue at least 1")
    check_threads(threads)
    key = api_key_from(api_key_env)
    path = model_path(model)
    threads_for(threads)
    quiet_transformers()
    import uvicorn

    from vococli.serve.app import make_app
    from vococli.serve.engine import Engine

    engine = Engine(path, cache_dir, device=None if device == "auto" else device,
                    dtype=None if dtype == "auto" else dtype, queue_size=queue_size)
    app = make_app(engine, media_root, key)
    err.print(f"vococli serve: http://{host}:{port}/v1 (model {engine.model.path}, media root {media_root}, "
              f"caches {cache_dir})", markup=False)
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again: end there
    # with exit code 0 (a requested stop), as Ctrl-C ends with 130
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def _stopped(signum, frame) -> None:
    raise SystemExit(0)
