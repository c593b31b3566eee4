"""The OpenAI chat-completions protocol as far as vococli serves it: requests, replies, errors.

A request's messages are text (a string, or `text` parts) with one video: a `video_url` part
(`{"type": "video_url", "video_url": {"url": ...}}`), or an `image_url` part for a one-frame
cache. vococli's own settings go in `vococli` (fps, max_frames).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from vococli.errors import UserError

MAX_MESSAGES = 256
MAX_TEXT = 100_000  # characters of text in one request


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]  # {"role", "content": str}: the conversation, the video left out
    video: str  # the URL or path the request names
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    fps: float
    max_frames: int | None


def _text_of(content, where: str) -> tuple[str, list[str]]:
    """(the text of a message, the video URLs it names)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise UserError(f"{where}.content: a string or a list of parts")
    texts, videos = [], []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise UserError(f"{where}.content[{i}]: a part is an object with a type")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise UserError(f"{where}.content[{i}].text: text")
            texts.append(part["text"])
        elif kind in ("video_url", "image_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise UserError(f"{where}.content[{i}].{kind}: an object with a url")
            videos.append(url)
        else:
            raise UserError(f"{where}.content[{i}]: part type {kind!r} is not served (text, video_url, image_url)")
    return "\n".join(texts), videos


def _number(body: dict, name: str, default, kind, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind) or (low is not None and value < low) \
            or (high is not None and value > high):
        raise UserError(f"{name}: {value!r} is not allowed")
    return value


def parse_request(body) -> ChatRequest:
    """A ChatRequest from a request body, or a UserError naming the field at fault."""
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError("messages: a non-empty list")
    if len(messages) > MAX_MESSAGES:
        raise UserError(f"messages: at most {MAX_MESSAGES}")
    conversation, videos, size = [], [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise UserError(f"messages[{i}]: an object with role system, user or assistant")
        text, urls = _text_of(m.get("content"), f"messages[{i}]")
        size += len(text)
        videos += urls
        conversation.append({"role": m["role"], "content": text})
    if size > MAX_TEXT:
        raise UserError(f"messages: more than {MAX_TEXT} characters of text")
    if conversation[-1]["role"] != "user" or not conversation[-1]["content"].strip():
        raise UserError("messages: the last message must be the user's question")
    if len(set(videos)) != 1:
        raise UserError("messages: name exactly one video (a video_url or image_url part)")
    extra = body.get("vococli") or {}
    if not isinstance(extra, dict):
        raise UserError("vococli: an object (fps, max_frames)")
    return ChatRequest(
        messages=conversation, video=videos[0],
        max_tokens=_number(body, "max_tokens", 128, int, 1, 4096) if "max_completion_tokens" not in body
        else _number(body, "max_completion_tokens", 128, int, 1, 4096),
        temperature=float(_number(body, "temperature", 0.0, (int, float), 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, (int, float), 1e-6, 1.0)),
        seed=_number(body, "seed", 0, int, 0, 2**63 - 1),
        stream=bool(body.get("stream", False)),
        fps=float(_number(extra, "fps", 1.0, (int, float), 1e-3, 60.0)),
        max_frames=_number(extra, "max_frames", None, int, 1, 1_000_000),
    )


def completion(model: str, text: str, finished: bool, prompt_tokens: int, tokens: int) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop" if finished else "length"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                      "total_tokens": prompt_tokens + tokens}}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def error(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
