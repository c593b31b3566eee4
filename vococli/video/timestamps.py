"""True frame timestamps of a video file, from the stream's packets (PyAV demux, no decoding).

Every backend is given these, so a sampling plan means the same frames whichever backend
decodes them; decord's own timestamps are garbage on some files (see DESIGN.md section 8).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vococli.errors import UserError


def open_container(path: Path):
    """An open PyAV container for `path`, which must hold a video stream."""
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* for anything FFmpeg cannot parse
        raise UserError(f"{path}: not a readable video ({short_error(e)})") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: has no video stream")
    return container


def short_error(e: Exception) -> str:
    """The first line of an error's message, without FFmpeg's "[Errno N]" prefix."""
    text = getattr(e, "strerror", None) or str(e)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(text).strip())
    return text.splitlines()[0][:200] if text else type(e).__name__


def stream_timestamps(path: Path) -> np.ndarray:
    """Presentation time (seconds) of every video frame, in display order, from the packets."""
    container = open_container(path)
    with container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
    if not pts:
        raise UserError(f"{path}: the video stream has no timestamped frames")
    return np.unique(np.asarray(pts, dtype=np.int64)) * tb


def frame_size(path: Path) -> tuple[int, int]:
    """(width, height) of the video stream's coded frames, from its header (no decoding)."""
    container = open_container(path)
    with container:
        ctx = container.streams.video[0].codec_context
        return int(ctx.width or 0), int(ctx.height or 0)
