"""Opening a cache for answering: the one way every caller gets from a .voco folder to a Session.

`ask`, `chat`, `eval`, the bench and the tests all come through `open_for_answering`: check the
cache before any model is loaded, load the answering model (or take the one given), load the
cache refusing one made by another model, fit its frames to the model's context, and open the
session of the chosen decode path (a pre-allocated buffer is sized for `reserve` at first).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from vococli.answer.session import Session
    from vococli.cache.kv import VideoCache
    from vococli.families.base import VocoModel


def open_for_answering(cache: str | Path | VideoCache, model: str | Path | VocoModel,
                       reserve: int | Callable[[VocoModel], int], decode: str = "auto", subsample: bool = False,
                       device: str | None = None, dtype: str | None = None, weights: str = "full",
                       system: str | None = None, notice: Callable[[str], None] = print) -> Session:
    """A Session over `cache` (a .voco folder, or a VideoCache already in memory).

    `model` is a loaded answering model, or a checkpoint folder that is then loaded without its
    vision tower (with `device`, `dtype`, `weights`, and the cache's K). `reserve` is the number
    of positions the prompt and the answer need after the frames (or a function of the model
    giving it). When the frames do not fit the context: with `subsample`, evenly spaced frames
    (and a notice), else a UserError saying what to do.
    """
    from vococli.answer.paths import open_session
    from vococli.cache.chunks import load_cache, read_info
    from vococli.cache.kv import fit_to_context
    from vococli.errors import UserError
    from vococli.families.loading import load_model

    meta = read_info(cache).meta if isinstance(cache, (str, Path)) else None  # the cache is checked first
    if isinstance(model, (str, Path)):
        model = load_model(model, device=device, dtype=dtype, vision=False, weights=weights,
                           voco_tokens=meta.k if meta else None, compressor=meta.compressor if meta else None)
    elif meta is not None and (meta.compressor, meta.k) != (model.compressor, model.layout.k):
        raise UserError(f"{cache}: made with the {meta.compressor} compressor keeping {meta.k} tokens per frame; "
                        f"the loaded model uses {model.compressor} with {model.layout.k}")
    video = load_cache(cache, fingerprint=model.fingerprints) if isinstance(cache, (str, Path)) else cache
    room = reserve(model) if callable(reserve) else reserve
    video = fit_to_context(model, video, room, subsample, notice=notice)
    return open_session(model, video, decode, system, room=room)
