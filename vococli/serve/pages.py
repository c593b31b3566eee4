"""The web page of `vococli serve` and what it needs beyond chat completions: the videos under
the media root, uploads into it, and a strip of thumbnails of a video."""

from __future__ import annotations

import asyncio
import io
import os
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from vococli.errors import UserError
from vococli.serve.media import resolve_media
from vococli.serve.protocol import error

STATIC = Path(__file__).parent / "static"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".png", ".jpg", ".jpeg")  # images: one frame
UPLOAD_MAX = 512 << 20  # bytes of one uploaded video
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")
STRIP_FRAMES, STRIP_HEIGHT = 8, 72


def add_pages(app: FastAPI, media_root: Path) -> None:
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/app.js")
    async def script():
        return FileResponse(STATIC / "app.js", media_type="text/javascript")

    @app.get("/v1/vococli/media")
    async def media():
        root = media_root.resolve()
        files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                 and p.resolve().is_relative_to(root)]
        return {"object": "list", "data": [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size}
                                           for p in files]}

    @app.put("/v1/vococli/media/{name}")
    async def upload(name: str, request: Request):
        if not SAFE_NAME.fullmatch(name) or Path(name).suffix.lower() not in VIDEO_SUFFIXES:
            return JSONResponse(error(f"upload name {name!r}: a plain file name ending in "
                                      f"{', '.join(VIDEO_SUFFIXES)}"), status_code=400)
        target = media_root / name
        if target.exists():
            return JSONResponse(error(f"{name} exists in the media root; choose another name"), status_code=409)
        tmp = media_root / f".{name}.upload"
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for block in request.stream():
                    size += len(block)
                    if size > UPLOAD_MAX:
                        return JSONResponse(error(f"an upload is at most {UPLOAD_MAX >> 20} MiB"), status_code=413)
                    f.write(block)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return {"path": name, "bytes": size}

    @app.get("/v1/vococli/thumbnails")
    async def thumbnails(video: str):
        try:
            path = resolve_media(video, media_root)
            png = await asyncio.to_thread(frame_strip, path)
        except UserError as e:
            return JSONResponse(error(str(e)), status_code=400)
        return Response(png, media_type="image/png")


def frame_strip(path: Path) -> bytes:
    """A PNG of STRIP_FRAMES evenly spaced frames of the video, side by side."""
    import numpy as np
    from PIL import Image

    from vococli.video.reader import VideoReader

    reader = VideoReader(path, fit=STRIP_HEIGHT)
    picks = np.unique(np.linspace(0, len(reader.timestamps) - 1, STRIP_FRAMES).round().astype(int))
    frames = [f for batch in reader.read(picks, STRIP_FRAMES) for f in batch.frames]
    if not frames:
        raise UserError(f"{path.name}: no frame could be decoded")
    thumbs = []
    for f in frames:
        img = Image.fromarray(f)
        thumbs.append(img.resize((max(1, round(img.width * STRIP_HEIGHT / img.height)), STRIP_HEIGHT)))
    strip = Image.new("RGB", (sum(t.width for t in thumbs) + 4 * (len(thumbs) - 1), STRIP_HEIGHT), "white")
    x = 0
    for t in thumbs:
        strip.paste(t, (x, 0))
        x += t.width + 4
    out = io.BytesIO()
    strip.save(out, format="PNG")
    return out.getvalue()
