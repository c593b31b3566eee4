"""Training data: LLaVA-format conversations over images and videos, grouped by media file.

A training file is the JSON list real LLaVA data uses:

    [{"id": ..., "video": "videos/a.mp4" | "image": "img/b.jpg",
      "conversations": [{"from": "human", "value": "<video>\\nquestion"}, {"from": "gpt", "value": "answer"}, ...]}]

Media paths are relative to a media folder. Samples that share a media file are grouped: the
frames of a video are compressed once per step and all its conversations are read after them.
Each conversation becomes token ids (the chat-template text that follows the VoCo block) and
targets (the next token at answer positions, IGNORE elsewhere): only answers are supervised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vococli.answer.prompts import render_prompt
from vococli.errors import UserError
from vococli.families.base import ImageSpec, VocoModel
from vococli.compress.pixels import to_pixels
from vococli.video.reader import VideoReader
from vococli.video.sampling import Sampling, plan_frames
from vococli.train.forward import IGNORE

PLACEHOLDERS = ("<video>", "<image>")


@dataclass
class Conversation:
    ids: list[int]
    targets: list[int]  # targets[i] is the token after ids[i], or IGNORE


@dataclass
class MediaItem:
    path: Path
    is_video: bool
    conversations: list[Conversation] = field(default_factory=list)


def _strip(text: str) -> str:
    for p in PLACEHOLDERS:
        text = text.replace(p, "")
    return text.strip()


def encode_conversation(model: VocoModel, turns: list[dict], where: str) -> Conversation:
    """Token ids and answer targets of one LLaVA conversation, rendered by the chat template.

    The prompt of each turn is tokenized on its own (as `ask` does at inference) and the answer
    follows as " answer</s>", the tokens the model must produce after "ASSISTANT:".
    """
    tok = model.tokenizer
    ids: list[int] = []
    targets: list[int] = []
    messages: list[dict] = []
    pairs = [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
    if not isinstance(turns, list) or not pairs or len(turns) % 2:
        raise UserError(f"{where}: a conversation must alternate human and gpt turns, starting with human")
    for human, gpt in pairs:
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise UserError(f"{where}: turns must alternate 'human' and 'gpt'")
        question, answer = _strip(str(human.get("value", ""))), str(gpt.get("value", "")).strip()
        full = render_prompt(model, messages + [{"role": "user", "content": question}])
        prefix = render_prompt(model, messages, generation_prompt=False) if messages else ""
        prompt_ids = tok(full[len(prefix):], add_special_tokens=False)["input_ids"]
        answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids += prompt_ids + answer_ids
        # position p predicts token p+1: the last prompt token predicts the first answer token
        targets += [IGNORE] * (len(prompt_ids) - 1) + answer_ids + [IGNORE]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Conversation(ids=ids, targets=targets[:len(ids)])


def read_training_file(model: VocoModel, json_path: Path, media_dir: Path | None = None,
                       notice=print) -> list[MediaItem]:
    """Parse a LLaVA-format JSON file into media items with their encoded conversations.

    Text-only samples are skipped (with a count); media paths must stay inside `media_dir`."""
    json_path = Path(json_path)
    if json_path.is_dir():
        json_path = json_path / "train.json"
    if not json_path.is_file():
        raise UserError(f"{json_path}: training file not found")
    media_dir = Path(media_dir) if media_dir is not None else json_path.parent
    try:
        samples = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(samples, list):
        raise UserError(f"{json_path}: expected a JSON list of samples")
    items: dict[str, MediaItem] = {}
    text_only = 0
    for i, s in enumerate(samples):
        where = f"{json_path} sample {i}"
        if not isinstance(s, dict) or "conversations" not in s:
            raise UserError(f"{where}: no 'conversations'")
        media = s.get("video") or s.get("image")
        if not media:
            text_only += 1
            continue
        if not isinstance(media, str):
            raise UserError(f"{where}: 'image'/'video' must be one path (samples with several images are "
                            "not supported)")
        path = (media_dir / media).resolve()
        if not path.is_relative_to(media_dir.resolve()):
            raise UserError(f"{where}: media path {media!r} leaves the media folder")
        item = items.setdefault(str(path), MediaItem(path=path, is_video="video" in s))
        item.conversations.append(encode_conversation(model, s["conversations"], where))
    if text_only:
        notice(f"{json_path}: skipped {text_only} text-only sample(s) (no 'image' or 'video')")
    return list(items.values())


class FrameStore:
    """Pixels of each media item, decoded on first use and kept in memory (rounded to float16
    either way, so a resumed run sees exactly what an uninterrupted one saw)."""

    def __init__(self, spec: ImageSpec, sampling: Sampling, keep: bool = True):
        self.spec, self.sampling, self.keep = spec, sampling, keep
        self._pixels: dict[Path, torch.Tensor] = {}

    def pixels(self, item: MediaItem) -> torch.Tensor:
        """(T, 3, S, S) float32 normalised pixels of the item's sampled frames."""
        if item.path in self._pixels:
            return self._pixels[item.path].float()
        frames = self._read(item)
        pixels = to_pixels(frames, self.spec, torch.device("cpu"), torch.float32).half()
        if self.keep:
            self._pixels[item.path] = pixels
        return pixels.float()  # the same rounding whether decoded now or kept from before

    def _read(self, item: MediaItem) -> np.ndarray:
        if not item.path.exists():
            raise UserError(f"{item.path}: media file not found")
        if not item.is_video:
            from PIL import Image

            try:
                with Image.open(item.path) as im:
                    return np.asarray(im.convert("RGB"))[None]
            except OSError as e:
                raise UserError(f"{item.path}: not a readable image ({e})") from None
        reader = VideoReader(item.path)
        plan = plan_frames(reader.timestamps, self.sampling)
        frames = [b.frames for b in reader.read(plan, batch_size=64)]
        if not frames:
            raise UserError(f"{item.path}: no frame could be decoded")
        return np.concatenate(frames)


def epoch_batches(items: list[MediaItem], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Item indices per step for one epoch: items in a seeded shuffled order, taken until the
    step holds at least `batch_size` conversations."""
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    batches, cur, n = [], [], 0
    for i in order.tolist():
        cur.append(i)
        n += len(items[i].conversations)
        if n >= batch_size:
            batches.append(cur)
            cur, n = [], 0
    if cur:
        batches.append(cur)
    return batches


@dataclass
class Batch:
    pixels: torch.Tensor  # (F, 3, S, S) frames of all items, item by item
    n_frames: list[int]  # frames per item
    ids: torch.Tensor  # (B, N) conversations, right-padded
    lengths: torch.Tensor  # (B,)
    video: torch.Tensor  # (B,) item of each conversation
    targets: torch.Tensor  # (B, N)

    @property
    def conversations(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> "Batch":
        return Batch(self.pixels.to(device, dtype), self.n_frames, self.ids.to(device), self.lengths.to(device),
                     self.video.to(device), self.targets.to(device))


def pad_token(model: VocoModel) -> int:
    """The id texts are right-padded with: the tokenizer's pad token, else end-of-sequence."""
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def pad_conversations(convs: list[tuple[int, Conversation]], pad_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video index, conversation) pairs -> ids and targets (B, N) right-padded, lengths (B,), video (B,)."""
    n = max(len(c.ids) for _, c in convs)
    ids = torch.full((len(convs), n), pad_id, dtype=torch.long)
    targets = torch.full((len(convs), n), IGNORE, dtype=torch.long)
    for row, (_, c) in enumerate(convs):
        ids[row, :len(c.ids)] = torch.tensor(c.ids)
        targets[row, :len(c.targets)] = torch.tensor(c.targets)
    return ids, targets, torch.tensor([len(c.ids) for _, c in convs]), torch.tensor([v for v, _ in convs])


def make_batch(items: list[MediaItem], store: FrameStore, pad_id: int) -> Batch:
    pixels = [store.pixels(it) for it in items]
    ids, targets, lengths, video = pad_conversations(
        [(i, c) for i, it in enumerate(items) for c in it.conversations], pad_id)
    return Batch(pixels=torch.cat(pixels), n_frames=[p.shape[0] for p in pixels], ids=ids, lengths=lengths,
                 video=video, targets=targets)
