"""Stage 2: answering questions from a VideoCache, one conversation per Session.

The prompt text (rendered by the checkpoint's chat template) follows the cached VoCo tokens.
A Session owns the conversation (messages, positions) and delegates the keys/values to a buffer
(answer/buffers.py), which is what a decode path chooses. `generate` is the decode loop: the
sampled token stays on the device and is fed straight back; the host reads tokens in batches
(every token on the CPU, `READ_BATCH` at a time on a GPU) and takes back what was fed after the
end-of-sequence token.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from vococli.answer.buffers import DynamicBuffer, KVBuffer
from vococli.answer.evidence import Evidence, recording
from vococli.answer.paths import EVIDENCE_PATHS
from vococli.answer.prompts import render_prompt
from vococli.answer.sampling import Sampler
from vococli.answer.settings import GenerationConfig
from vococli.cache.kv import VideoCache, positions_needed
from vococli.errors import UserError
from vococli.families.base import VocoModel
from vococli.layout import text_start


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    time_to_first_token_s: float
    total_s: float
    finished: bool  # ended on the end-of-sequence token rather than the token limit
    evidence: Evidence | None = None  # the frames it drew on (answer/evidence.py), when asked for

    @property
    def decode_tokens_per_s(self) -> float:
        n, dt = len(self.token_ids) - 1, self.total_s - self.time_to_first_token_s
        return n / dt if n > 0 and dt > 0 else 0.0

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "tokens": len(self.token_ids),
                "prompt_tokens": self.prompt_tokens, "finished": self.finished,
                "time_to_first_token_s": round(self.time_to_first_token_s, 4),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2) if len(self.token_ids) > 1 else None,
                "total_s": round(self.total_s, 4),
                **({"evidence": self.evidence.to_dict()} if self.evidence is not None else {})}


class Session:
    """A conversation over one video cache; earlier turns stay in the key/value buffer.

    `buffer`: where the keys/values live (default: a DynamicBuffer; `open_session` picks one by
    decode path).
    """

    def __init__(self, model: VocoModel, video: VideoCache, system: str | None = None,
                 buffer: KVBuffer | None = None):
        self.model, self.video, self.system = model, video, system
        self.buffer = DynamicBuffer(model, video) if buffer is None else buffer
        self.first_pos = text_start(model.layout, video.n_frames)
        self.reset()

    @property
    def used(self) -> int:
        """Tokens in the key/value state after the video."""
        return self.buffer.used

    @property
    def next_pos(self) -> int:
        return self.first_pos + self.used

    def reset(self) -> None:
        """Forget earlier turns (keep only the video)."""
        self.buffer.crop(self.used)
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.pending: list[int] = []  # generated tokens not yet fed back into the state

    # the steps

    def prompt_ids(self, question: str) -> list[int]:
        """The tokens the next turn feeds: the previous answer's unfed tokens, then the question
        as the chat template writes it after the conversation so far."""
        new = self.messages + [{"role": "user", "content": question}]
        text = render_prompt(self.model, new, True)
        if any(m["role"] == "assistant" for m in self.messages):
            done = render_prompt(self.model, self.messages, False)
            text = text[len(done):] if text.startswith(done) else text
        ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.pending + ids

    def prefill(self, ids: list[int], room: int = 0) -> torch.Tensor:
        """Feed prompt tokens; `room` more tokens will follow them. Next-token logits (1, V)."""
        return self.buffer.prefill(torch.tensor([ids], device=self.model.device), self.next_pos, room)

    def decode_step(self, token: int | torch.Tensor) -> torch.Tensor:
        """Feed one token (an id, or a (1, 1) tensor on the device). Next-token logits (1, V)."""
        if not isinstance(token, torch.Tensor):
            token = torch.tensor([[token]], device=self.model.device)
        return self.buffer.decode(token.view(1, 1), self.next_pos)

    def check_room(self, ids: list[int], max_new_tokens: int) -> None:
        need = positions_needed(self.model, self.video.n_frames, self.used + len(ids) + max_new_tokens)
        if need > self.model.max_positions:
            raise UserError(f"this turn needs {need} positions, the model has {self.model.max_positions}: "
                            "shorten the question, lower --max-new-tokens, start a new conversation, or use fewer "
                            "frames")

    def generate(self, ids: list[int], gen: GenerationConfig) -> Iterator[list[int]]:
        """The answer to prompt `ids`, as lists of token ids in the order the host reads them
        (the last list ends with end-of-sequence when the answer finished). Closing the iterator
        early takes the whole turn back out of the state."""
        self.check_room(ids, gen.max_new_tokens)
        start, pending = self.used, self.pending
        eos = self.model.tokenizer.eos_token_id
        sample = Sampler(gen.temperature, gen.top_p, gen.seed, gen.max_new_tokens, self.model.device)
        every = self.buffer.read_every
        done = False
        try:
            logits = self.prefill(ids, gen.max_new_tokens)
            unread: list[torch.Tensor] = []
            made = read = fed = 0  # tokens sampled, read by the host, fed back
            while True:
                token = sample(logits)
                made += 1
                unread.append(token)
                last = made >= gen.max_new_tokens
                if last or made == 1 or len(unread) >= every:
                    got = torch.cat(unread).view(-1).tolist()
                    unread = []
                    if eos in got:
                        got = got[: got.index(eos) + 1]
                        self.buffer.crop(fed - (read + len(got) - 1))  # keep what came before eos
                        last = True
                    read += len(got)
                    if last:
                        self.pending = [got[-1]] + ([] if got[-1] == eos else [eos])
                        done = True
                    yield got
                    if last:
                        return
                logits = self.decode_step(token)
                fed += 1
        finally:
            if not done:  # interrupted: the turn never happened
                self.buffer.crop(self.used - start)
                self.pending = pending

    def ask(self, question: str, gen: GenerationConfig = GenerationConfig(),
            on_text: Callable[[str], None] | None = None, evidence: bool = False) -> Answer:
        """Answer one question; `on_text` receives the answer text piece by piece as it is decoded;
        `evidence`: also say which frames the answer drew on (Answer.evidence)."""
        if not isinstance(question, str):
            raise UserError(f"a question is text, got {type(question).__name__}")
        t0 = time.perf_counter()
        ans = self.answer(self.prompt_ids(question), gen, on_text, question=question, t0=t0, evidence=evidence)
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": ans.text}]
        return ans

    def answer(self, ids: list[int], gen: GenerationConfig, on_text: Callable[[str], None] | None = None,
               question: str = "", t0: float | None = None, evidence: bool = False) -> Answer:
        """The answer to prompt `ids` (the conversation's messages are left to the caller);
        `on_text` receives the text piece by piece. An exception from `on_text` (Ctrl-C, a client
        gone) stops the answer and takes the turn back at once. `evidence` records the frames it
        drew on (on the decode paths of answer.paths.EVIDENCE_PATHS)."""
        tok = self.model.tokenizer
        t0 = time.perf_counter() if t0 is None else t0
        if evidence and not self.buffer.records_evidence:
            raise UserError(f"evidence needs a decode path that runs attention step by step "
                            f"({', '.join(EVIDENCE_PATHS)}); this session decodes with a captured or compiled step",
                            option="decode")
        per_frame = int(self.video.keys.shape[3])
        out: list[int] = []
        shown, ttft = "", None
        with (recording(self.model.lm, self.video.n_frames * per_frame) if evidence else nullcontext()) as rec:
            stream = self.generate(ids, gen)
            try:
                for got in stream:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    out += got
                    if on_text is not None:
                        text = tok.decode(out, skip_special_tokens=True)
                        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                            on_text(text[len(shown):])
                            shown = text
            finally:
                stream.close()
        text = tok.decode(out, skip_special_tokens=True)
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        found = rec.evidence(len(out), per_frame, self.video.timestamps) if evidence else None
        return Answer(question=question, text=text.strip(), token_ids=out, prompt_tokens=len(ids),
                      time_to_first_token_s=ttft, total_s=time.perf_counter() - t0, finished=out[-1] == tok.eos_token_id,
                      evidence=found)


def ask_questions(model: VocoModel, video: VideoCache, questions: list[str],
                  gen: GenerationConfig = GenerationConfig(), on_text=None) -> list[Answer]:
    """Answer independent questions over one loaded cache (each starts from the video alone)."""
    session = Session(model, video)
    answers = []
    for q in questions:
        session.reset()
        answers.append(session.ask(q, gen, on_text))
    return answers
