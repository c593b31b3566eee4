"""Decode paths by name: which key/value buffer a Session answers with (`--decode`).

`auto` is graph on CUDA, dynamic elsewhere. Every path gives the same answers up to rounding; they
differ in speed. Adding one is one buffer strategy (answer/buffers.py shows the interface) and one
line in `DECODE_PATHS` (docs/architecture.md). Buffers are imported when a session is opened, so
checking a name stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from vococli.choices import one_of
from vococli.errors import UserError

if TYPE_CHECKING:
    from vococli.answer.buffers import KVBuffer
    from vococli.answer.session import Session
    from vococli.cache.kv import VideoCache
    from vococli.families.base import VocoModel

AUTO = "auto"


@dataclass(frozen=True)
class DecodePath:
    name: str
    make: Callable[..., KVBuffer]  # (model, video, room) -> the buffer
    needs_cuda: bool = False


def _dynamic(model, video, room):
    from vococli.answer.buffers import DynamicBuffer
    return DynamicBuffer(model, video)


def _static(model, video, room):
    from vococli.answer.buffers import StaticBuffer
    return StaticBuffer(model, video, room)


def _graph(model, video, room):
    from vococli.answer.graph import GraphBuffer
    return GraphBuffer(model, video, room)


def _compiled(model, video, room):
    """The static buffer with a torch.compile'd decode step, captured as a CUDA graph on CUDA."""
    if model.device.type == "cuda":
        from vococli.answer.graph import GraphBuffer
        return GraphBuffer(model, video, room, compile=True)
    from vococli.answer.buffers import StaticBuffer
    return StaticBuffer(model, video, room, compile=True)


DECODE_PATHS: dict[str, DecodePath] = {p.name: p for p in (
    DecodePath("dynamic", _dynamic), DecodePath("static", _static),
    DecodePath("graph", _graph, needs_cuda=True), DecodePath("compiled", _compiled))}


EVIDENCE_PATHS = ("dynamic", "static")  # run attention in Python each step: answer/evidence.py can record it


def evidence_decode(decode: str) -> str:
    """The decode path to record evidence on: `auto` becomes dynamic; graph and compiled are refused."""
    if decode == AUTO:
        return "dynamic"
    check_decode(decode)
    if decode not in EVIDENCE_PATHS:
        raise UserError(f"--evidence needs --decode {' or '.join(EVIDENCE_PATHS)}: the {decode} path replays a "
                        "captured or compiled step, whose attention cannot be recorded", option="decode")
    return decode


def decode_names() -> list[str]:
    """What `--decode` accepts: auto, then the registered paths."""
    return [AUTO, *DECODE_PATHS]


def register_decode_path(path: DecodePath) -> DecodePath:
    DECODE_PATHS[path.name] = path
    return path


def check_decode(decode: str) -> str:
    return one_of(decode, decode_names(), "decode", option="decode")


def check_decode_device(decode: str, device_type: str) -> str:
    """`decode` when its path runs on a device of `device_type`, else a UserError."""
    check_decode(decode)
    if decode != AUTO and DECODE_PATHS[decode].needs_cuda and device_type != "cuda":
        raise UserError(f"decode {decode} needs a CUDA GPU (this run is on {device_type}); use static or compiled",
                        option="decode")
    return decode


def resolve_decode(model: VocoModel, decode: str) -> str:
    """The path `decode` names on this model's device (auto: graph on CUDA, dynamic elsewhere)."""
    check_decode_device(decode, model.device.type)
    if decode == AUTO:
        return "graph" if model.device.type == "cuda" else "dynamic"
    return decode


def open_session(model: VocoModel, video: VideoCache, decode: str = AUTO, system: str | None = None,
                 room: int | None = None) -> Session:
    """A Session over `video` on the decode path `decode`; `room`: the tokens of prompt and answer
    a pre-allocated buffer holds at first (it grows when a turn needs more)."""
    from vococli.answer.buffers import MIN_ROOM
    from vococli.answer.session import Session

    path = DECODE_PATHS[resolve_decode(model, decode)]
    return Session(model, video, system, buffer=path.make(model, video, MIN_ROOM if room is None else room))
