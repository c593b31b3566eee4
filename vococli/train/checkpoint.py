"""Checkpoints of a training run: building the model to train, and saving model, optimizer and
state together so that a killed run never leaves a half-written or mixed checkpoint.

Each save is a folder of its own, `<out>/save-NNNNNNN` (the step), written under a temporary name
and renamed when complete; `<out>/LATEST` names the current one and is switched by one atomic
rename, after which older saves are removed. Whoever reads `<out>` (load_model, a resume) goes
through LATEST, so it sees one whole save: the one before the switch or the one after.
Run folders written before versioned saves (the checkpoint files in `<out>` itself) still load
and resume; their first new save switches them to this layout.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vococli.compressors import get_compressor
from vococli.errors import EnvironmentProblem, UserError, write_failure
from vococli.families.base import ImageSpec, VocoModel, read_layout
from vococli.families.loading import LATEST, checkpoint_folder
from vococli.quiet import no_progress_bars
from vococli.train.config import TrainConfig, TrainState

TRAINER_DIR = "trainer"


def build_model(cfg: TrainConfig, device: torch.device) -> tuple[VocoModel, torch.nn.Module | None, dict]:
    """The model to train (a fresh preset or a checkpoint, with `<voco>` registered by name), the
    compressor's own layer when it has one, and the image-processor config to save with it."""
    from transformers import AutoConfig, AutoTokenizer

    from vococli.families import family_for_config
    from vococli.families.tiny import PRESETS, build_tiny_model, image_processor_config

    if (cfg.init is None) == (cfg.checkpoint is None):
        raise UserError("give exactly one of --init PRESET or --from CHECKPOINT")
    if cfg.init is not None:
        if cfg.init not in PRESETS:
            raise UserError(f"--init {cfg.init!r}: choose one of {', '.join(PRESETS)}")
        preset = replace(PRESETS[cfg.init], voco_tokens=cfg.voco_tokens or PRESETS[cfg.init].voco_tokens,
                         seed=cfg.seed)
        llava, tok = build_tiny_model(preset, attn="sdpa")
        family = family_for_config(llava.config, f"--init {cfg.init}")
        proc = image_processor_config(preset.image_size)
    else:
        src = checkpoint_folder(Path(cfg.checkpoint))
        if not (src / "config.json").is_file():
            raise UserError(f"{src}: not a checkpoint folder (no config.json)")
        config = AutoConfig.from_pretrained(src)
        family = family_for_config(config, src)
        llava, _ = family.load(src, config, torch.device("cpu"), torch.float32, vision=True, weights="full", attn=None)
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
                      path=cfg.out, device=device, dtype=torch.float32, family=family)
    compressor = get_compressor(cfg.compressor_name)
    module = compressor.build_module(int(model.text_config.hidden_size), layout.k)
    if module is not None:
        module = module.to(device)
        saved = checkpoint_folder(Path(cfg.checkpoint or ".")) / compressor.module_file
        if cfg.checkpoint and saved.exists():
            module.load_state_dict(load_file(saved))
    if cfg.freeze_vision:
        model.family.vision_tower(model).requires_grad_(False)
    return model, module, proc


def _register_voco(llava, tok) -> None:
    """Add `<voco>` (and `<image>`) to a tokenizer that lacks them and grow the embeddings."""
    from vococli.families.base import IMAGE_TOKEN, VOCO_TOKEN

    new = [t for t in (IMAGE_TOKEN, VOCO_TOKEN) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new})
        llava.resize_token_embeddings(len(tok))


SAVE_PREFIX = "save-"
LEGACY_STAGING = ".saving"  # where run folders of the flat layout staged a save
LEGACY_COMPLETE = "COMPLETE"
# the files of a checkpoint in the flat layout, removed once a run has switched to versioned saves
LEGACY_FILES = ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def stage_model(model: VocoModel, module, proc: dict, tmp: Path) -> None:
    """Write the checkpoint files into the folder `tmp` (and the compressor's own layer)."""
    with no_progress_bars():
        model.llava.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    if module is not None:
        name = get_compressor(getattr(model.llava.config, "voco_compressor", "voco")).module_file
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / name)


def current_save(out: Path) -> Path:
    """The folder of a run's current save (`out` itself in the flat layout)."""
    return checkpoint_folder(Path(out))


def state_file(out: Path) -> Path:
    """The trainer state of a run's current save (it may not exist yet)."""
    return current_save(out) / TRAINER_DIR / "state.json"


def tidy_run_folder(out: Path) -> None:
    """Remove what an interrupted save left (a temporary save folder, saves LATEST no longer
    names); finish or forget a save staged by the flat layout. Called before every start."""
    out = Path(out)
    current = current_save(out)
    for f in [*out.glob(f"{SAVE_PREFIX}*"), *out.glob(f".{SAVE_PREFIX}*.tmp")]:
        if f.is_dir() and f != current:
            shutil.rmtree(f)
    _finish_legacy_stage(out)


def _finish_legacy_stage(out: Path) -> None:
    tmp = out / LEGACY_STAGING
    if not tmp.exists():
        return
    if not (tmp / LEGACY_COMPLETE).exists() or (out / LATEST).exists():
        shutil.rmtree(tmp)
        return
    for f in tmp.iterdir():
        if f.is_file() and f.name != LEGACY_COMPLETE:
            os.replace(f, out / f.name)
    if (tmp / TRAINER_DIR).exists():
        (out / TRAINER_DIR).mkdir(exist_ok=True)
        for name in ("optimizer.safetensors", "state.json"):  # state.json last: it names the step
            if (tmp / TRAINER_DIR / name).exists():
                os.replace(tmp / TRAINER_DIR / name, out / TRAINER_DIR / name)
    shutil.rmtree(tmp)


def load_compressor(path: Path, model: VocoModel) -> torch.nn.Module | None:
    """The compressor's own layer saved in a checkpoint (the pooling baseline's linear layer), or
    None for a compressor without one."""
    compressor = get_compressor(getattr(model.llava.config, "voco_compressor", "voco"))
    module = compressor.build_module(int(model.text_config.hidden_size), model.layout.k)
    path = checkpoint_folder(Path(path))
    if module is None or not (path / compressor.module_file).exists():
        return None
    module.load_state_dict(load_file(path / compressor.module_file))
    return module.to(model.device).eval()


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


def save_all(cfg: TrainConfig, model, module, proc, opt, st: TrainState, out: Path) -> None:
    """Write model, optimizer and state as one new save, then switch LATEST to it."""
    name, n = f"{SAVE_PREFIX}{st.step:07d}", 1
    while (out / name).exists():  # the same step saved again (a finished run resumed): a new name
        n += 1
        name = f"{SAVE_PREFIX}{st.step:07d}.{n}"
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / TRAINER_DIR).mkdir(parents=True)
        stage_model(model, module, proc, tmp)
        save_optimizer(opt, tmp / TRAINER_DIR / "optimizer.safetensors")
        record = {"config": asdict(cfg), "state": asdict(st)}
        (tmp / TRAINER_DIR / "state.json").write_text(json.dumps(record) + "\n")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(e)
        if reason is not None:
            kept = f"the save of step {_saved_step(out)} is kept" if (out / LATEST).exists() else "nothing was saved"
            raise EnvironmentProblem(f"{out}: the checkpoint of step {st.step} cannot be written ({reason}); {kept}: "
                            "make room and run the same command with --resume") from None
        raise
    os.replace(tmp, out / name)
    pointer = out / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, out / LATEST)  # the switch: readers see the old save or this one, whole
    for f in out.glob(f"{SAVE_PREFIX}*"):
        if f.is_dir() and f.name != name:
            shutil.rmtree(f)
    _remove_flat_checkpoint(out)
    write_loss_curve(st.losses, out)


def _saved_step(out: Path) -> int | str:
    try:
        return json.loads(state_file(out).read_text())["state"]["step"]
    except (OSError, ValueError, KeyError, UserError):
        return "?"


def _remove_flat_checkpoint(out: Path) -> None:
    """The checkpoint files a run folder of the flat layout held in itself (superseded by LATEST)."""
    from vococli.compressors import COMPRESSORS

    if (out / TRAINER_DIR).is_dir():
        shutil.rmtree(out / TRAINER_DIR)
    modules = [c.module_file for c in COMPRESSORS.values() if c.module_file]
    for n in (*LEGACY_FILES, *modules):
        (out / n).unlink(missing_ok=True)


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
