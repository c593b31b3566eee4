"""`vococli train`: VoCo instruction tuning of a Llava checkpoint (or of a named tiny preset).

The loop is plain PyTorch built from functions (model, optimizer, data), so it can be wrapped by
accelerate for many GPUs later. A run writes into one output folder:

    <out>/config.json, model.safetensors, tokenizer*, preprocessor_config.json   the checkpoint
    <out>/voco_avgpool.safetensors          the pooling baseline's linear layer (avgpool only)
    <out>/trainer/optimizer.safetensors     AdamW state (safetensors, no pickle)
    <out>/trainer/state.json                step, data cursor, settings, loss history
    <out>/loss.csv, loss.png                the loss curve

`--resume` continues from the saved step with the run's saved settings (same data order and
schedule); only the length (`--steps`/`--epochs`), `--save-every`, `--threads` and `--device` may
change. A save is staged in `<out>/.saving` and moved into place only once complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from vococli.errors import UserError
from vococli.layout import MODES
from vococli.families.base import ImageSpec, VocoModel, read_layout
from vococli.train.data import FrameStore, MediaItem, epoch_batches, make_batch, read_training_file
from vococli.train.resume import check_resume_settings, resumed_from_command
from vococli.video.reader import Sampling
from vococli.train.forward import AvgPoolCompressor, answer_loss, encode_frames

COMPRESSOR_FILE = "voco_avgpool.safetensors"
TRAINER_DIR = "trainer"


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # LLaVA JSON files or folders holding train.json
    out: str
    media: str | None = None  # folder the media paths are relative to (default: each JSON's folder)
    init: str | None = None  # a preset name (tiny, synth-small): start from random weights
    checkpoint: str | None = None  # or start from this checkpoint folder
    mask: str = "voco"  # voco | causal (no VoCo mask: the upper bound / first curriculum stage)
    compressor: str = "voco"  # voco | avgpool
    voco_tokens: int | None = None  # default: the checkpoint's, else 2
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    batch_size: int = 64  # conversations per micro-batch
    grad_accum: int = 1
    steps: int | None = None
    epochs: float = 1.0
    freeze_vision: bool = False
    fps: float = 1.0
    max_frames: int = 64
    keep_frames: bool = True  # keep decoded pixels in memory (fp16) after their first use
    save_every: int = 200
    seed: int = 0
    threads: int | None = None
    device: str | None = None
    bf16: bool | None = None  # default: on for CUDA

    @property
    def mode(self) -> str:
        return "avgpool" if self.compressor == "avgpool" else self.mask


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    cursor: int = 0  # micro-batches of `epoch` done
    samples: int = 0  # conversations seen
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, device: torch.device) -> tuple[VocoModel, AvgPoolCompressor | None, dict]:
    """The model to train: a fresh preset or a checkpoint, with `<voco>` registered by name."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from vococli.families.tiny import PRESETS, build_tiny_model, image_processor_config

    if (cfg.init is None) == (cfg.checkpoint is None):
        raise UserError("give exactly one of --init PRESET or --from CHECKPOINT")
    if cfg.init is not None:
        if cfg.init not in PRESETS:
            raise UserError(f"--init {cfg.init!r}: choose one of {', '.join(PRESETS)}")
        preset = replace(PRESETS[cfg.init], voco_tokens=cfg.voco_tokens or PRESETS[cfg.init].voco_tokens,
                         seed=cfg.seed)
        llava, tok = build_tiny_model(preset, attn="sdpa")
        proc = image_processor_config(preset.image_size)
    else:
        src = Path(cfg.checkpoint)
        if not (src / "config.json").is_file():
            raise UserError(f"{src}: not a checkpoint folder (no config.json)")
        llava = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src)
        proc_file = src / "preprocessor_config.json"
        proc = json.loads(proc_file.read_text()) if proc_file.exists() else image_processor_config(
            llava.config.vision_config.image_size)
        _register_voco(llava, tok)
    config = llava.config
    config.voco_num_tokens = cfg.voco_tokens or getattr(config, "voco_num_tokens", None) or 2
    if not hasattr(config, "voco_separator"):
        config.voco_separator = "\n"
    config.voco_compressor = cfg.compressor
    llava.to(device).train()
    layout = read_layout(config, tok)
    spec = ImageSpec(size=int(config.vision_config.image_size), mean=tuple(proc["image_mean"]),
                     std=tuple(proc["image_std"]))
    model = VocoModel(lm=llava, llava=llava, tokenizer=tok, layout=layout, image=spec, fingerprint="",
                      path=cfg.out, device=device, dtype=torch.float32)
    compressor = None
    if cfg.compressor == "avgpool":
        compressor = AvgPoolCompressor(int(model.text_config.hidden_size), layout.k).to(device)
        saved = Path(cfg.checkpoint or "") / COMPRESSOR_FILE
        if cfg.checkpoint and saved.exists():
            compressor.load_state_dict(load_file(saved))
    if cfg.freeze_vision:
        llava.model.vision_tower.requires_grad_(False)
    return model, compressor, proc


def _register_voco(llava, tok) -> None:
    """Add `<voco>` (and `<image>`) to a tokenizer that lacks them and grow the embeddings."""
    from vococli.families.base import IMAGE_TOKEN, VOCO_TOKEN

    new = [t for t in (IMAGE_TOKEN, VOCO_TOKEN) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new})
        llava.resize_token_embeddings(len(tok))


STAGING = ".saving"
COMPLETE = "COMPLETE"  # written last into the staging folder: everything before it is on disk


def stage_model(model: VocoModel, compressor, proc: dict, tmp: Path) -> None:
    """Write the checkpoint files into the staging folder `tmp`."""
    model.llava.save_pretrained(tmp)
    model.tokenizer.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    if compressor is not None:
        save_file({k: v.contiguous() for k, v in compressor.state_dict().items()}, tmp / COMPRESSOR_FILE)


def commit_staged(out: Path) -> None:
    """Move a complete staged save into place (trainer state last), or drop an incomplete one.

    Called after every save and before every start, so an interrupted save is either finished
    (all its files were written) or forgotten (the previous checkpoint is untouched)."""
    tmp = out / STAGING
    if not tmp.exists():
        return
    if not (tmp / COMPLETE).exists():
        shutil.rmtree(tmp)
        return
    staged_trainer = tmp / TRAINER_DIR
    for f in tmp.iterdir():
        if f.is_file() and f.name != COMPLETE:
            os.replace(f, out / f.name)
    if staged_trainer.exists():
        (out / TRAINER_DIR).mkdir(exist_ok=True)
        for name in ("optimizer.safetensors", "state.json"):  # state.json last: it names the step
            if (staged_trainer / name).exists():
                os.replace(staged_trainer / name, out / TRAINER_DIR / name)
    shutil.rmtree(tmp)


def load_compressor(path: Path, model: VocoModel) -> AvgPoolCompressor | None:
    """The pooling baseline's linear layer of a checkpoint, or None for a VoCo checkpoint."""
    f = Path(path) / COMPRESSOR_FILE
    if not f.exists():
        return None
    comp = AvgPoolCompressor(int(model.text_config.hidden_size), model.layout.k)
    comp.load_state_dict(load_file(f))
    return comp.to(model.device).eval()


# ----------------------------------------------------------------------------- optimizer state


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """AdamW state as safetensors tensors plus the param groups as JSON metadata."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    save_file(tensors, path, metadata={"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        for g in groups:
            g.update({k: tuple(v) for k, v in g.items() if k == "betas"})  # JSON made the tuple a list
        state: dict[int, dict] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    opt.load_state_dict({"state": state, "param_groups": groups})


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps  # warmup_steps > 0 here
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


# ----------------------------------------------------------------------------- loop


def load_data(cfg: TrainConfig, model: VocoModel, notice=print) -> list[MediaItem]:
    items: list[MediaItem] = []
    for d in cfg.data:
        items += read_training_file(model, Path(d), Path(cfg.media) if cfg.media else None, notice)
    if not items:
        raise UserError("the training data holds no samples")
    return items


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
    None (library callers): `cfg`'s resumable settings are used, the others are the run's."""
    from vococli.families.base import resolve_device

    if cfg.mask not in MODES[:2] or cfg.compressor not in ("voco", "avgpool"):
        raise UserError("--mask is voco or causal; --compressor is voco or avgpool")
    if cfg.compressor == "avgpool" and cfg.mask != "voco":
        raise UserError("--compressor avgpool replaces the VoCo tokens; it cannot be combined with --mask causal")
    if min(cfg.batch_size, cfg.grad_accum, cfg.save_every, cfg.max_frames) < 1 or cfg.lr <= 0:
        raise UserError("--batch-size, --grad-accum, --save-every and --max-frames must be at least 1 "
                        "and --lr positive")
    if cfg.voco_tokens is not None and cfg.voco_tokens < 1:
        raise UserError("--voco-tokens must be at least 1")
    if cfg.warmup_steps < 0 or (cfg.steps is not None and cfg.steps < 1) or cfg.epochs <= 0:
        raise UserError("--steps must be at least 1, --epochs positive and --warmup-steps at least 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    state_file = out / TRAINER_DIR / "state.json"
    if out.is_dir():
        commit_staged(out)  # finish or forget a save that was interrupted
    if resume:
        if not state_file.exists():
            raise UserError(f"{out}: nothing to resume (no {TRAINER_DIR}/state.json)")
        saved = json.loads(state_file.read_text())
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
        if state_file.exists() or (out / "config.json").exists():
            raise UserError(f"{out}: already holds a checkpoint; pass --resume to continue it or choose a new --out")
        st = TrainState()
    torch.manual_seed(cfg.seed)
    start = replace(cfg, init=None, checkpoint=str(out)) if resume else cfg  # a resume starts from its last save
    model, compressor, proc = build_model(start, device)
    items = load_data(cfg, model, notice)
    total = total_steps(cfg, items)
    params = [p for p in model.llava.parameters() if p.requires_grad]
    if compressor is not None:
        params += list(compressor.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    if resume and (out / TRAINER_DIR / "optimizer.safetensors").exists():
        load_optimizer(opt, out / TRAINER_DIR / "optimizer.safetensors")
    store = FrameStore(model.image, Sampling(fps=cfg.fps, max_frames=cfg.max_frames), keep=cfg.keep_frames)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id
    batches = epoch_batches(items, cfg.batch_size, cfg.seed, st.epoch)
    out.mkdir(parents=True, exist_ok=True)
    t_last, seen_last = time.perf_counter(), 0
    while st.step < total:
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            if st.cursor >= len(batches):
                st.epoch, st.cursor = st.epoch + 1, 0
                batches = epoch_batches(items, cfg.batch_size, cfg.seed, st.epoch)
            batch = make_batch([items[i] for i in batches[st.cursor]], store, pad).to(device, torch.float32)
            st.cursor += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                frames = encode_frames(model, batch.pixels, batch.n_frames, cfg.mode, compressor)
                loss = answer_loss(model, frames, batch.ids, batch.lengths, batch.video, batch.targets)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
            st.samples += batch.conversations
            seen_last += batch.conversations
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
            save_all(cfg, model, compressor, proc, opt, st, out)
    return st


def save_all(cfg: TrainConfig, model, compressor, proc, opt, st: TrainState, out: Path) -> None:
    """Stage model, optimizer and state together, mark the stage complete, then move it into place."""
    tmp = out / STAGING
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TRAINER_DIR).mkdir(parents=True)
    stage_model(model, compressor, proc, tmp)
    save_optimizer(opt, tmp / TRAINER_DIR / "optimizer.safetensors")
    record = {"config": asdict(cfg), "state": asdict(st)}
    (tmp / TRAINER_DIR / "state.json").write_text(json.dumps(record) + "\n")
    (tmp / COMPLETE).write_text(f"{st.step}\n")
    commit_staged(out)
    write_loss_curve(st.losses, out)


def write_loss_curve(losses: list[tuple[int, float]], out: Path) -> None:
    """loss.csv and loss.png (raw loss and a running mean) next to the checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "loss.csv").write_text("step,loss\n" + "".join(f"{s},{l}\n" for s, l in losses))
    if not losses:
        return
    steps = [s for s, _ in losses]
    vals = [l for _, l in losses]
    w = max(1, len(vals) // 50)
    smooth = [sum(vals[max(0, i - w + 1):i + 1]) / len(vals[max(0, i - w + 1):i + 1]) for i in range(len(vals))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, vals, lw=0.6, alpha=0.4, label="loss")
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)
