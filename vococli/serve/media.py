"""Which file a request's video names: only files under the media root, ever.

A request names a video by a `file://` URL or a path relative to the media root. The path is
resolved with every symbolic link followed and must lie inside the resolved media root, so
neither `..` nor a link can reach another file (the names come from clients, not from the
person who set the server up).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from vococli.errors import UserError


def resolve_media(url: str, media_root: Path) -> Path:
    """The video file `url` names under `media_root`; a UserError for anything else."""
    if not isinstance(url, str) or not url.strip():
        raise UserError("video_url: give a file:// URL or a path under the media root")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"video_url {url!r}: only local files are served")
        candidate = Path(unquote(parsed.path))
    elif parsed.scheme in ("", ):
        candidate = media_root / url
    else:
        raise UserError(f"video_url {url!r}: only file:// URLs and paths under the media root are served "
                        "(this server downloads nothing)")
    if "\x00" in str(candidate):
        raise UserError("video_url: the path holds a NUL byte")
    root = media_root.resolve()
    try:
        path = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UserError(f"video_url {url!r}: no such file under the media root") from None
    if not path.is_relative_to(root):
        raise UserError(f"video_url {url!r}: outside the media root; refused")
    if not path.is_file():
        raise UserError(f"video_url {url!r}: not a file")
    return path
