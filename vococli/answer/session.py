"""Stage 2: answer questions from a VideoCache.

The prompt text (rendered by the checkpoint's chat template) follows the cached VoCo tokens.
Every forward gets explicit position ids and an explicit 4D mask; nothing is inferred by a
generation helper. Prefill and decode are separate functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from vococli.errors import UserError
from vococli.layout import decode_mask, text_start
from vococli.families.base import VocoModel
from vococli.cache.kv import VideoCache, positions_needed


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings: greedy when temperature is 0."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise UserError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"--temperature must be a number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:  # also refuses nan
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    time_to_first_token_s: float
    total_s: float
    finished: bool  # ended on the end-of-sequence token rather than the token limit

    @property
    def decode_tokens_per_s(self) -> float:
        n, dt = len(self.token_ids) - 1, self.total_s - self.time_to_first_token_s
        return n / dt if n > 0 and dt > 0 else 0.0

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "tokens": len(self.token_ids),
                "prompt_tokens": self.prompt_tokens, "finished": self.finished,
                "time_to_first_token_s": round(self.time_to_first_token_s, 4),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2) if len(self.token_ids) > 1 else None, "total_s": round(self.total_s, 4)}


@torch.inference_mode()
def forward_tokens(model: VocoModel, ids: torch.Tensor, cache, start_pos: int, all_logits: bool = False) -> torch.Tensor:
    """Feed token ids (1, N) after `cache` at positions start_pos..; returns the last logits (1, V),
    or every position's (1, N, V) with `all_logits`."""
    n = ids.shape[1]
    past = cache.get_seq_length()
    positions = torch.arange(start_pos, start_pos + n, device=model.device).view(1, n)
    mask = decode_mask(past, n, model.dtype).to(model.device)
    out = model.lm(input_ids=ids.to(model.device), position_ids=positions, attention_mask=mask,
                   cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
    return out.logits.float() if all_logits else out.logits[:, -1].float()


prefill = forward_tokens  # the prompt: many tokens at once


def decode_step(model: VocoModel, token: int, cache, pos: int) -> torch.Tensor:
    """One generated token in, next-token logits out."""
    return forward_tokens(model, torch.tensor([[token]]), cache, pos)


def sample(logits: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None) -> int:
    """Greedy argmax, or temperature + nucleus (top-p) sampling with a seeded generator."""
    if gen.temperature <= 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits[0] / gen.temperature, dim=-1).cpu()
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < gen.top_p  # smallest set with mass >= top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=rng)
    return int(order[choice])


def render_prompt(model: VocoModel, messages: list[dict], generation_prompt: bool = True) -> str:
    """The text that follows the VoCo block, from the checkpoint's chat template."""
    tok = model.tokenizer
    if not tok.chat_template:
        raise UserError(f"{model.path}: the tokenizer has no chat template")
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if messages and messages[-1]["content"] and messages[-1]["content"] not in text:
        # templates such as llava-hf's render only typed content parts
        typed = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        text = tok.apply_chat_template(typed, tokenize=False, add_generation_prompt=generation_prompt)
        if messages[-1]["content"] not in text:
            raise UserError(f"{model.path}: the chat template does not render the message text")
    return text


def prompt_length(model: VocoModel, question: str) -> int:
    """Tokens of a single-turn prompt for `question`."""
    text = render_prompt(model, [{"role": "user", "content": question}])
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"])


class Session:
    """A conversation over one video cache; earlier turns stay in the key/value state."""

    def __init__(self, model: VocoModel, video: VideoCache, system: str | None = None):
        self.model, self.video = model, video
        self.first_pos = text_start(model.layout, video.n_frames)
        self.system = system
        self.used = 0  # tokens in the key/value state after the video
        self.cache = self._video_cache()
        self.reset()

    def _video_cache(self):
        """The key/value state holding the video, before any turn."""
        return self.video.past_key_values(self.model)

    def reset(self) -> None:
        """Forget earlier turns (keep only the video)."""
        if self.used > 0:
            self.cache.crop(-self.used)
            self.used = 0
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.pending: list[int] = []  # generated tokens not yet fed back into the state

    @property
    def next_pos(self) -> int:
        return self.first_pos + self.used

    def _prefill(self, ids: list[int], room: int) -> torch.Tensor:
        """Feed the prompt; `room` more tokens will follow it. Returns the next-token logits (1, V)."""
        logits = prefill(self.model, torch.tensor([ids]), self.cache, self.next_pos)
        self.used += len(ids)
        return logits

    def _decode(self, token: int) -> torch.Tensor:
        logits = decode_step(self.model, token, self.cache, self.next_pos)
        self.used += 1
        return logits

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return render_prompt(self.model, messages, generation_prompt)

    def _prompt_ids(self, question: str) -> list[int]:
        new = self.messages + [{"role": "user", "content": question}]
        text = self._render(new, True)
        if any(m["role"] == "assistant" for m in self.messages):
            done = self._render(self.messages, False)
            text = text[len(done):] if text.startswith(done) else text
        ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.pending + ids

    def ask(self, question: str, gen: GenerationConfig = GenerationConfig(),
            on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer one question; `on_text` receives the answer text piece by piece as it is decoded."""
        if not isinstance(question, str):
            raise UserError(f"a question is text, got {type(question).__name__}")
        tok = self.model.tokenizer
        t0 = time.perf_counter()
        ids = self._prompt_ids(question)
        need = positions_needed(self.model, self.video.n_frames, self.used + len(ids) + gen.max_new_tokens)
        if need > self.model.max_positions:
            raise UserError(f"this turn needs {need} positions, the model has {self.model.max_positions}: "
                            "shorten the question, lower --max-new-tokens, start a new conversation, or use fewer "
                            "frames")
        rng = torch.Generator().manual_seed(gen.seed) if gen.temperature > 0 else None
        logits = self._prefill(ids, gen.max_new_tokens)
        out: list[int] = []
        shown, ttft = "", None
        eos = tok.eos_token_id
        while True:
            token = sample(logits, gen, rng)
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            out.append(token)
            if token == eos or len(out) >= gen.max_new_tokens:
                break
            if on_text is not None:
                text = tok.decode(out, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    on_text(text[len(shown):])
                    shown = text
            logits = self._decode(token)
        text = tok.decode(out, skip_special_tokens=True)
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        finished = out[-1] == eos
        self.pending = [out[-1]] + ([] if finished else [eos])
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": text.strip()}]
        return Answer(question=question, text=text.strip(), token_ids=out, prompt_tokens=len(ids),
                      time_to_first_token_s=ttft, total_s=time.perf_counter() - t0, finished=finished)


def ask_questions(model: VocoModel, video: VideoCache, questions: list[str],
                  gen: GenerationConfig = GenerationConfig(), on_text=None) -> list[Answer]:
    """Answer independent questions over one loaded cache (each starts from the video alone)."""
    session = Session(model, video)
    answers = []
    for q in questions:
        session.reset()
        answers.append(session.ask(q, gen, on_text))
    return answers
