"""`vococli train`: VoCo instruction tuning of a Llava checkpoint (or of a named tiny preset).

The loop is plain PyTorch built from functions (model, optimizer, data), so it can be wrapped by
accelerate for many GPUs later. A run writes into one output folder:

    <out>/save-NNNNNNN/                     the checkpoint at step NNNNNNN: config.json,
                                            model.safetensors, tokenizer*, preprocessor_config.json
    <out>/save-NNNNNNN/voco_avgpool.safetensors   the pooling baseline's linear layer (avgpool only)
    <out>/save-NNNNNNN/trainer/optimizer.safetensors   AdamW state (safetensors, no pickle)
    <out>/save-NNNNNNN/trainer/state.json   step, data cursor, settings, loss history
    <out>/LATEST                            the name of the current save
    <out>/loss.csv, loss.png                the loss curve

`<out>` itself is what `--model` takes: loading follows LATEST. `--resume` continues from the
saved step with the run's saved settings (same data order and schedule); only the length
(`--steps`/`--epochs`), `--save-every`, `--threads` and `--device` may change. A save is written
as a new folder and LATEST is switched to it in one atomic rename (train/checkpoint.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from vococli.choices import TrainMask, check
from vococli.errors import UserError
from vococli.threads import check_threads, use_threads
from vococli.families.base import VocoModel
from vococli.train.data import FrameStore, MediaItem, epoch_batches, make_batch, pad_token, read_training_file
from vococli.train.resume import check_resume_settings, resumed_from_command
from vococli.video.sampling import Sampling
from vococli.train.checkpoint import (TRAINER_DIR, build_model, current_save, load_optimizer, save_all, state_file,
                                      tidy_run_folder)
from vococli.train.config import TrainConfig, TrainState
from vococli.train.forward import answer_loss, encode_frames


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps  # warmup_steps > 0 here
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def check_long(cfg: TrainConfig) -> None:
    from vococli.train.long import LONG_KINDS

    if not 18 <= cfg.long_min <= cfg.long_max:
        raise UserError(f"--long-frames {cfg.long_min}:{cfg.long_max}: expected MIN:MAX with 18 <= MIN <= MAX")
    if cfg.long_scenes < 1 or cfg.long_ramp < 0:
        raise UserError("--long-scenes must be at least 1 and --long-ramp at least 0")
    kinds = cfg.long_kinds.split(",")
    if not kinds or set(kinds) - set(LONG_KINDS):
        raise UserError(f"--long-kinds {cfg.long_kinds!r}: choose from {', '.join(LONG_KINDS)}")


def load_data(cfg: TrainConfig, model: VocoModel, notice=print) -> list[MediaItem]:
    items: list[MediaItem] = []
    for d in cfg.data:
        items += read_training_file(model, Path(d), Path(cfg.media) if cfg.media else None, notice)
    if not items:
        raise UserError("the training data holds no samples")
    return items


class LongContext:
    """The assembled hour-long scenes of a run (train/long.py): the grey-frame bank, recomputed
    from the current weights every `refresh` steps (a divisor of --save-every, so a resumed run
    recomputes it where an uninterrupted one did), and each micro-batch's scenes."""

    def __init__(self, cfg: TrainConfig, model: VocoModel, module, device: torch.device):
        from vococli.train.long import GreyBank

        self.cfg, self.model, self.module, self.device = cfg, model, module, device
        self.settings = cfg.long_settings()
        self.bank = GreyBank(model, codec=self.settings.codec)
        self.every = math.gcd(self.settings.refresh, cfg.save_every)

    def refresh(self, step: int) -> None:
        if self.bank.keys is None or step % self.every == 0:
            self.bank.refresh(self.model, self.cfg.compressor_name, self.module, self.device)

    def batch(self, step: int, micro: int):
        from vococli.train.long import long_batch

        return long_batch(self.model, self.bank, self.settings, self.cfg.seed, step, micro, self.cfg.compressor_name,
                          self.module, self.device)


def total_steps(cfg: TrainConfig, items: list[MediaItem]) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = len(epoch_batches(items, cfg.batch_size, cfg.seed, 0))
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def train(cfg: TrainConfig, resume: bool = False,
          on_step: Callable[[TrainState, int, float, float], None] | None = None,
          notice: Callable[[str], None] = print, given: frozenset[str] | None = None) -> TrainState:
    """Run (or resume) training; returns the final state. `on_step(state, total, loss, samples_per_s)`.

    `given` names the TrainConfig fields the user set (the command line passes them): a resume
    refuses those that differ from the run's and takes from `cfg` only the given ones of the
    settings a resume may change (train_resume.RESUMABLE), keeping the run's own for the rest.
    None (library callers): `cfg`'s resumable settings are used, the others are the run's.
    The run computes with `cfg.threads` CPU threads (default: vococli.threads) and gives torch's
    thread count back as it was when it ends."""
    previous = torch.get_num_threads()
    try:
        return _train(cfg, resume, on_step, notice, given)
    finally:
        torch.set_num_threads(previous)


def _train(cfg: TrainConfig, resume: bool, on_step, notice, given) -> TrainState:
    from vococli.families.loading import resolve_device

    from vococli.compressors import DEFAULT_COMPRESSOR, get_compressor

    check(cfg.mask, TrainMask, "mask")
    if get_compressor(cfg.compressor).stock and cfg.compressor != "full":  # refuses a name no compressor has
        raise UserError(f"--compressor {cfg.compressor} makes caches from checkpoints as they are "
                        "(`vococli compress --compressor`); it has nothing to train")
    if cfg.mask == "causal" and cfg.compressor not in (DEFAULT_COMPRESSOR, "full"):
        raise UserError(f"--mask causal trains the full compressor (every frame token kept); it cannot be combined "
                        f"with --compressor {cfg.compressor}")
    if min(cfg.batch_size, cfg.grad_accum, cfg.save_every, cfg.max_frames) < 1:
        raise UserError("--batch-size, --grad-accum, --save-every and --max-frames must be at least 1")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0) or not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"--lr must be a positive number and --weight-decay 0 or more, got {cfg.lr} and "
                        f"{cfg.weight_decay}")
    Sampling(fps=cfg.fps, max_frames=cfg.max_frames)  # refuses a bad --fps before anything is loaded
    check_threads(cfg.threads)
    if cfg.long_max:
        check_long(cfg)
    if cfg.voco_tokens is not None and cfg.voco_tokens < 1:
        raise UserError("--voco-tokens must be at least 1")
    if cfg.warmup_steps < 0 or (cfg.steps is not None and cfg.steps < 1) or cfg.epochs <= 0:
        raise UserError("--steps must be at least 1, --epochs positive and --warmup-steps at least 0")
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if out.is_dir():
        tidy_run_folder(out)  # forget what an interrupted save left
    saved_state = state_file(out)
    if resume:
        if not saved_state.exists():
            raise UserError(f"{out}: nothing to resume (no {TRAINER_DIR}/state.json)")
        saved = json.loads(saved_state.read_text())
        # a resumed run keeps its settings (data order, schedule, mask, K); only these may change
        keep = {k: v for k, v in saved["config"].items() if k in TrainConfig.__dataclass_fields__}
        keep["data"] = tuple(keep["data"])
        run_cfg = TrainConfig(**keep)
        if given is not None:
            check_resume_settings(cfg, run_cfg, given)
        cfg = replace(run_cfg, **{k: getattr(cfg, k) for k in resumed_from_command(given)})
        st = TrainState(**{k: v for k, v in saved["state"].items()})
        st.losses = [tuple(x) for x in st.losses]
    else:
        if saved_state.exists() or (current_save(out) / "config.json").exists():
            raise UserError(f"{out}: already holds a checkpoint; pass --resume to continue it or choose a new --out")
        st = TrainState()
    use_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = replace(cfg, init=None, checkpoint=str(out)) if resume else cfg  # a resume starts from its last save
    model, module, proc = build_model(start, device)
    items = load_data(cfg, model, notice)
    total = total_steps(cfg, items)
    params = [p for p in model.llava.parameters() if p.requires_grad]
    if module is not None:
        params += list(module.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    if resume and (current_save(out) / TRAINER_DIR / "optimizer.safetensors").exists():
        load_optimizer(opt, current_save(out) / TRAINER_DIR / "optimizer.safetensors")
    store = FrameStore(model.image, Sampling(fps=cfg.fps, max_frames=cfg.max_frames), keep=cfg.keep_frames)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    pad = pad_token(model)
    batches = epoch_batches(items, cfg.batch_size, cfg.seed, st.epoch)
    long = LongContext(cfg, model, module, device) if cfg.long_max else None
    out.mkdir(parents=True, exist_ok=True)
    t_last, seen_last = time.perf_counter(), 0
    while st.step < total:
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        if long is not None:
            long.refresh(st.step)
        for micro in range(cfg.grad_accum):
            if st.cursor >= len(batches):
                st.epoch, st.cursor = st.epoch + 1, 0
                batches = epoch_batches(items, cfg.batch_size, cfg.seed, st.epoch)
            batch = make_batch([items[i] for i in batches[st.cursor]], store, pad).to(device, torch.float32)
            st.cursor += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                frames = encode_frames(model, batch.pixels, batch.n_frames, cfg.compressor_name, module)
                loss = answer_loss(model, frames, batch.ids, batch.lengths, batch.video, batch.targets)
                seen = batch.conversations
                if long is not None:  # weighted by conversations: one mean over both kinds
                    lb = long.batch(st.step, micro)
                    long_loss = answer_loss(model, lb.state, lb.ids, lb.lengths, lb.video, lb.targets)
                    loss = (loss * seen + long_loss * lb.conversations) / (seen + lb.conversations)
                    seen += lb.conversations
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
            st.samples += seen
            seen_last += seen
        for g in opt.param_groups:
            g["lr"] = lr_at(st.step, cfg, total)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        st.step += 1
        now = time.perf_counter()
        st.seconds += now - t_last
        rate = seen_last / max(now - t_last, 1e-9)
        t_last, seen_last = now, 0
        st.losses.append((st.step, round(loss_sum, 5)))
        if on_step:
            on_step(st, total, loss_sum, rate)
        if st.step % cfg.save_every == 0 or st.step == total:
            save_all(cfg, model, module, proc, opt, st, out)
    return st
