"""A question straight about a video file: its cache at the default place, made first when needed.

`vococli ask movie.mp4 "q"` answers from `movie.voco`, compressing the video into it first when
the cache is missing or unfinished (the next question reuses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vococli.errors import UserError

if TYPE_CHECKING:
    from vococli.families.base import VocoModel


def cache_for_video(video: Path, model: str | Path, device: str | None = None, dtype: str | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    notice: Callable[[str], None] = print) -> tuple[Path, VocoModel | None]:
    """The cache of `video` (VIDEO.voco), compressed with the checkpoint `model` when it is
    missing or unfinished. Returns the cache folder and the model loaded to compress it (None
    when the cache was already complete), so that answering need not load the weights again."""
    from vococli.cache.chunks import read_info
    from vococli.compress.pipeline import compress_video, default_output

    video = Path(video)
    if not video.is_file():
        raise UserError(f"{video}: file not found")
    cache = default_output(video)
    if cache.is_dir():
        try:
            if read_info(cache).last.final:
                return cache, None
        except UserError:
            pass  # unfinished or damaged: compress_video resumes it, or says what is wrong
    elif cache.exists():
        raise UserError(f"{cache}: exists and is not a cache folder; compress the video with -o elsewhere first")
    from vococli.families.loading import load_model

    full = load_model(model, device=device, dtype=dtype)
    notice(f"compressing {video} into {cache} (the next question reuses it)")
    compress_video(full, video, cache, progress=progress, notice=notice)
    return cache, full
