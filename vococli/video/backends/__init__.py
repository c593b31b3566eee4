"""The video backends by name, and the order in which "auto" tries them.

A new backend is one module here defining a `@register`ed `VideoBackend` subclass, plus its
import line below; add its name to `PREFERENCE` if "auto" should try it. Importing this package
imports none of the decoder packages.
"""

from __future__ import annotations

from vococli.errors import UserError
from vococli.video.backends.base import BACKENDS, CannotOpen, FrameBatch, StreamFailed, VideoBackend, register

# one line per backend: importing its module registers it
import vococli.video.backends.decord_backend  # noqa: F401
import vococli.video.backends.pyav_backend  # noqa: F401

# decord first: faster, and it applies display rotation itself; PyAV reads what decord cannot
PREFERENCE: tuple[str, ...] = ("decord", "pyav")

__all__ = ["BACKENDS", "PREFERENCE", "CannotOpen", "FrameBatch", "StreamFailed", "VideoBackend",
           "backend_names", "get_backend", "register"]


def backend_names() -> list[str]:
    """The registered backends' names, in order of registration."""
    return list(BACKENDS)


def get_backend(name: str) -> type[VideoBackend]:
    """The backend class called `name`."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown video backend {name!r}; the known ones are {', '.join(BACKENDS)} "
                        f"(or auto, which tries {', '.join(PREFERENCE)} in turn)") from None
