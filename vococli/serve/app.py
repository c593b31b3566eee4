"""The HTTP side of `vococli serve` (FastAPI): OpenAI's chat completions and models, and the
cache listing of vococli's own extension API. Every error is OpenAI's error JSON with a 4xx or
5xx status, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vococli.errors import EnvironmentProblem, UserError
from vococli.serve.engine import Busy, Cancelled, Engine
from vococli.serve.media import resolve_media
from vococli.serve.pages import UPLOAD_MAX, add_pages
from vococli.serve.protocol import chunk, completion, error, parse_request

MAX_BODY = 1 << 20  # bytes of a request body


def make_app(engine: Engine, media_root: Path, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="vococli", docs_url=None, redoc_url=None, openapi_url=None)
    media_root = Path(media_root)

    def refusal(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        return JSONResponse(error(message, kind, code), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "") or f"Bearer {request.query_params.get('key', '')}"
            if given != f"Bearer {api_key}":
                return refusal(401, "a valid API key is needed (Authorization: Bearer KEY)", "authentication_error",
                               "invalid_api_key")
        length = request.headers.get("content-length")
        limit = UPLOAD_MAX if request.method == "PUT" else MAX_BODY
        if length is not None and (not length.isdigit() or int(length) > limit):
            return refusal(413, f"the request body is larger than {limit} bytes")
        try:
            return await call_next(request)
        except Exception as e:  # a bug: one line, no traceback to the client
            return refusal(500, f"internal error: {type(e).__name__}", "server_error")

    add_pages(app, media_root)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": int(time.time()),
                                            "owned_by": "vococli"}]}

    @app.get("/v1/vococli/caches")
    async def caches():
        return {"object": "list", "data": _caches(engine)}

    @app.delete("/v1/vococli/caches/{name}")
    async def delete_cache(name: str):
        folder = engine.cache_dir / name
        if "/" in name or not name.endswith(".voco") or not folder.is_dir():
            return refusal(404, f"no cache {name!r}")
        if engine.status.get(name) is not None and engine.status[name].state == "compressing":
            return refusal(409, f"{name} is being compressed")
        engine.forget(folder)
        shutil.rmtree(folder)
        engine.status.pop(name, None)
        return {"id": name, "object": "vococli.cache", "deleted": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return refusal(413, f"the request body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return refusal(400, "the request body is not valid JSON")
        try:
            req = parse_request(body)
            video = resolve_media(req.video, media_root)
        except UserError as e:
            return refusal(400, str(e))
        if req.stream:
            return _stream(engine, video, req)
        try:
            reply = await asyncio.wrap_future(engine.submit(lambda: engine.answer(video, req)))
        except Busy as e:
            return refusal(429, str(e), "rate_limit_error")
        except EnvironmentProblem as e:
            return refusal(503, str(e), "server_error")
        except UserError as e:
            return refusal(400, str(e))
        return completion(engine.name, reply.text, reply.finished, reply.prompt_tokens, reply.tokens)

    return app


def _stream(engine: Engine, video: Path, req) -> StreamingResponse | JSONResponse:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    started = [False]

    def on_text(piece: str) -> None:
        if not started[0]:
            piece = piece.lstrip()
            started[0] = bool(piece)
        if piece:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

    try:
        future = engine.submit(lambda: engine.answer(video, req, on_text, cancelled))
    except Busy as e:
        return JSONResponse(error(str(e), "rate_limit_error"), status_code=429)
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(pieces.put_nowait, None))
    cid = f"chatcmpl-{uuid.uuid4().hex}"

    async def events():
        try:
            yield _sse(chunk(cid, engine.name, {"role": "assistant", "content": ""}))
            while True:
                piece = await pieces.get()
                if piece is None:
                    break
                yield _sse(chunk(cid, engine.name, {"content": piece}))
            try:
                reply = future.result()
            except (UserError, Cancelled) as e:
                yield _sse(error(str(e) or "cancelled"))
                return
            except Exception as e:  # a bug: said in the stream, without a traceback
                yield _sse(error(f"internal error: {type(e).__name__}", "server_error"))
                return
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.tokens,
                     "total_tokens": reply.prompt_tokens + reply.tokens}
            yield _sse(chunk(cid, engine.name, {}, "stop" if reply.finished else "length", usage))
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()  # a client gone midway: the answer stops at its next tokens

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _caches(engine: Engine) -> list[dict]:
    from vococli.cache.chunks import read_info

    rows = []
    for folder in sorted(engine.cache_dir.glob("*.voco")):
        status = engine.status.get(folder.name)
        row = {"id": folder.name, "object": "vococli.cache"}
        try:
            info = read_info(folder)
            row.update(video=info.meta.video.get("name"), frames=info.frames, planned=info.meta.planned_frames,
                       finished=info.last.final, bytes=info.bytes)
        except UserError as e:
            row.update(error=str(e))
        if status is not None:
            row["status"] = status.to_dict()
        rows.append(row)
    return rows


def api_key_from(env: str | None) -> str | None:
    """The API key in the environment variable `env` (None: no key is asked for)."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise UserError(f"--api-key-env {env}: the variable is not set or empty")
    return key
