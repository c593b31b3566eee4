"""The model behind the server: one worker thread runs every job (compressing, answering) in turn.

Jobs are queued (a full queue refuses at once: the server answers 429); requests wait on their
job without blocking the event loop. A video is compressed once into the cache folder (named like
eval's caches, so the CLI and eval share them); a second request for a video being compressed
waits for that job, then answers from the cache. The caches stay on disk across restarts.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vococli.errors import EnvironmentProblem
from vococli.serve.protocol import ChatRequest

LOADED = 2  # caches kept in memory between requests
SESSIONS = 4  # conversations whose key/value state is kept for a follow-up


class Busy(EnvironmentProblem):
    """The job queue is full."""


class Cancelled(Exception):
    """The client went away: the answer in progress is dropped."""


@dataclass
class Reply:
    text: str
    finished: bool
    prompt_tokens: int
    tokens: int


@dataclass
class CacheStatus:
    state: str  # compressing, done, failed
    done: int = 0
    total: int = 0
    error: str = ""

    def to_dict(self) -> dict:
        return {"state": self.state, "frames_done": self.done, "frames_planned": self.total,
                **({"error": self.error} if self.error else {})}


@dataclass
class Engine:
    model_path: str
    cache_dir: Path
    device: str | None = None
    dtype: str | None = None
    queue_size: int = 16
    status: dict = field(default_factory=dict)  # cache folder name -> CacheStatus

    def __post_init__(self):
        from vococli.families.loading import answering_model, load_model

        self.model = load_model(self.model_path, device=self.device, dtype=self.dtype)
        self.answerer = answering_model(self.model)
        self.name = Path(self.model.path).name
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._jobs: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._loaded: OrderedDict = OrderedDict()
        self._sessions: list = []  # (cache, Session) of recent conversations, oldest first
        self._thread = threading.Thread(target=self._work, daemon=True, name="vococli-engine")
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> Future:
        future: Future = Future()
        try:
            self._jobs.put_nowait((job, future))
        except queue.Full:
            raise Busy(f"the server is busy ({self.queue_size} requests waiting); try again later") from None
        return future

    def _work(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as e:  # handed to the request that submitted the job
                future.set_exception(e)

    # what jobs do (on the worker thread)

    def cache_for(self, video: Path, req: ChatRequest) -> Path:
        """The video's cache folder, compressed first when it is missing or unfinished."""
        from vococli.eval.caches import cache_path, compressed_cache, finished_cache
        from vococli.video.sampling import Sampling

        sampling = Sampling(fps=req.fps, max_frames=req.max_frames)
        done = finished_cache(self.model, video, self.cache_dir, sampling)
        if done is not None:
            return done
        status = self.status[cache_path(self.model, video, self.cache_dir, sampling).name] = CacheStatus("compressing")

        def progress(done: int, total: int) -> None:
            status.done, status.total = done, total

        try:
            cache, _ = compressed_cache(self.model, video, self.cache_dir, sampling, progress=progress)
        except BaseException as e:
            status.state, status.error = "failed", str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise
        status.state = "done"
        return cache

    def answer(self, video: Path, req: ChatRequest, on_text: Callable[[str], None] | None = None,
               cancelled: threading.Event | None = None) -> Reply:
        """Answer the request's last message. A conversation that continues one this engine
        answered (the same video, the same messages before the new question) goes on in that
        conversation's key/value state: only the new turn's tokens are computed."""
        from vococli.answer.opening import open_for_answering
        from vococli.answer.prompts import render_prompt
        from vococli.answer.settings import GenerationConfig

        cache = self.cache_for(video, req)
        session = self._conversation(cache, req.messages[:-1])
        if session is not None:
            ids = session.prompt_ids(req.messages[-1]["content"])
        else:
            tok = self.answerer.tokenizer
            ids = tok(render_prompt(self.answerer, req.messages), add_special_tokens=False)["input_ids"]
            session = open_for_answering(self._cache(cache), self.answerer, reserve=len(ids) + req.max_tokens,
                                         subsample=True, notice=lambda s: None)
        gen = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                               seed=req.seed)

        def piece(text: str) -> None:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            if text and on_text is not None:
                on_text(text)

        ans = session.answer(ids, gen, piece)
        session.messages = [*req.messages, {"role": "assistant", "content": ans.text}]
        self._keep(cache, session)
        return Reply(ans.text, ans.finished, ans.prompt_tokens, len(ans.token_ids))

    def _conversation(self, cache: Path, history: list[dict]):
        """A kept session over `cache` whose conversation is exactly `history` (taken out: a
        conversation goes on in one request at a time), or None."""
        if not any(m["role"] == "assistant" for m in history):
            return None
        for i, (where, session) in enumerate(self._sessions):
            if where == cache and session.messages == history:
                del self._sessions[i]
                return session
        return None

    def _keep(self, cache: Path, session) -> None:
        self._sessions.append((cache, session))
        del self._sessions[:-SESSIONS]

    def _cache(self, cache: Path):
        from vococli.cache.chunks import load_cache

        key = str(cache)
        if key not in self._loaded:
            self._loaded[key] = load_cache(cache, fingerprint=self.answerer.fingerprints)
            while len(self._loaded) > LOADED:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    def forget(self, cache: Path) -> None:
        self._loaded.pop(str(cache), None)
        self._sessions = [(c, s) for c, s in self._sessions if c != cache]
