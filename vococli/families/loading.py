"""Loading a VoCo checkpoint folder: its family, tokenizer, VoCo layout, device and fingerprint.

A checkpoint is a transformers model folder whose config carries `voco_num_tokens` (K) and
`voco_separator`, and whose tokenizer has `<voco>` registered by name. Which classes load it is
the family's business (vococli.families).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from vococli.defaults import HUB_ID
from vococli.errors import UserError
from vococli.families.base import VocoModel, image_grid, is_voco_checkpoint, read_layout, stock_layout
from vococli.families.quantize import check_int4_target, check_weights
from vococli.quiet import no_progress_bars

FINGERPRINT_SAMPLE = 1 << 20  # bytes hashed at each sampled place of a weight file
FULLY_HASHED = 64 << 20  # weight data up to this size are hashed whole
SAMPLED_PLACES = 32  # beyond it, this many evenly spaced samples
# config fields that say how the checkpoint was saved, not what it computes
BOOKKEEPING = frozenset({"dtype", "torch_dtype", "transformers_version", "_name_or_path", "_commit_hash"})


def fingerprint_checkpoint(path: Path) -> str:
    """Hash of what determines a checkpoint's outputs: its config without the fields that only
    record how it was saved (BOOKKEEPING), and its weights: every tensor's name, dtype and shape,
    and the data (whole up to FULLY_HASHED bytes per file, else SAMPLED_PLACES evenly spaced MiB).
    Saving the same weights again (a resumed training run, another transformers version) keeps it."""
    path = Path(path)
    h = hashlib.sha256()
    h.update(json.dumps(_without_bookkeeping(_read_json(path / "config.json")), sort_keys=True).encode())
    for f in sorted(path.glob("*.safetensors")):
        header, start = _safetensors_header(f)
        h.update(json.dumps({k: v for k, v in header.items() if k != "__metadata__"}, sort_keys=True).encode())
        size = f.stat().st_size - start
        with open(f, "rb") as fh:
            if size <= FULLY_HASHED:
                fh.seek(start)
                h.update(fh.read())
            else:
                for i in range(SAMPLED_PLACES):
                    fh.seek(start + i * (size - FINGERPRINT_SAMPLE) // (SAMPLED_PLACES - 1))
                    h.update(fh.read(FINGERPRINT_SAMPLE))
    for f in sorted(path.glob("*.bin")):
        _hash_file_ends(h, f)
    return h.hexdigest()[:16]


def earlier_fingerprint(path: Path) -> str:
    """The fingerprint vococli 0.1 gave a checkpoint (the config file's bytes and each weight
    file's name, size, first and last MiB): caches made with it still load."""
    path = Path(path)
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        _hash_file_ends(h, f)
    return h.hexdigest()[:16]


def _hash_file_ends(h, f: Path) -> None:
    size = f.stat().st_size
    h.update(f"{f.name}:{size}".encode())
    with open(f, "rb") as fh:
        h.update(fh.read(FINGERPRINT_SAMPLE))
        fh.seek(max(0, size - FINGERPRINT_SAMPLE))
        h.update(fh.read(FINGERPRINT_SAMPLE))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable config ({e})") from None


def _without_bookkeeping(value):
    if isinstance(value, dict):
        return {k: _without_bookkeeping(v) for k, v in value.items() if k not in BOOKKEEPING}
    if isinstance(value, list):
        return [_without_bookkeeping(v) for v in value]
    return value


def _safetensors_header(f: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and where its data start."""
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= f.stat().st_size - 8:
                raise ValueError(f"header length {n}")
            return json.loads(fh.read(n)), 8 + n
    except (OSError, ValueError) as e:
        raise UserError(f"{f}: not a readable safetensors file ({e}); the checkpoint is damaged") from None


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"--device {device}: not usable with this torch build ({str(e).splitlines()[0][:100]})") from None
    return dev


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, float32 on CPU, unless the user says otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]




LATEST = "LATEST"  # in a training run's folder: the name of its current save


def checkpoint_folder(path: Path) -> Path:
    """The folder holding a checkpoint's files: `path` itself, or, for a training run's folder,
    the save its LATEST file names (switched in one atomic rename when a save is complete)."""
    pointer = Path(path) / LATEST
    if not pointer.is_file():
        return Path(path)
    name = pointer.read_text().strip()
    if not name or "/" in name or name.startswith(".") or not (Path(path) / name).is_dir():
        raise UserError(f"{pointer}: names {name!r}, which is not a save in {path}; the run folder is damaged")
    return Path(path) / name


def check_folder(path: str | Path) -> Path:
    """A local checkpoint folder; a hub id ("org/name") is downloaded only when no such folder exists."""
    if not Path(path).exists() and HUB_ID.fullmatch(str(path)):
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(str(path))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: no such folder, and fetching it from the hub failed ({reason})") from None
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model folder not found")
    path = checkpoint_folder(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a checkpoint folder (no config.json)")
    return path


def load_model(path: str | Path | None = None, device: str | None = None, dtype: str | None = None,
               vision: bool = True, weights: str = "full", voco_tokens: int | None = None,
               attn: str | None = None, allow_baseline: bool = False, compressor: str | None = None,
               pool: int | None = None, notice: Callable[[str], None] | None = None) -> VocoModel:
    """Load a checkpoint folder (default: $VOCOCLI_MODEL, else the bundled default model).

    With `vision=False` only the language model and its head are loaded (all that answering
    needs); `weights` "nf4" or "int4" makes that language model's decoder 4-bit (quantize.py).
    `compressor` is what compress keeps per frame: `voco` (the default for VoCo checkpoints),
    `pool` (`pool` = G: G x G averaged image tokens; the default, with a notice, for checkpoints
    that never learned VoCo) or `full`; for pool, `voco_tokens` may give K = G x G instead.
    Baseline checkpoints of `vococli experiment` (avg-pool) load only with `allow_baseline`.
    """
    from transformers import AutoConfig, AutoTokenizer

    from vococli.families import family_for_config

    if path is None:
        from vococli.defaults import default_model_path

        path = default_model_path()
    path = check_folder(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    check_weights(weights)
    if weights != "full" and vision:
        raise UserError(f"--weights {weights} is for answering only; compress with the full-precision model")
    if weights == "int4":
        check_int4_target(dev, dt)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # whatever the file holds is the user's data: one line, never a traceback
        raise UserError(f"{path}/config.json: not a usable model config ({_first_line(e)})") from None
    family = family_for_config(config, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    compressor, layout = _choose_layout(path, config, tokenizer, compressor, pool, voco_tokens, allow_baseline, notice)
    fingerprint = fingerprint_checkpoint(path)  # also refuses a weight file whose header is damaged
    try:
        with no_progress_bars():
            lm, full = family.load(path, config, dev, dt, vision=vision, weights=weights, attn=attn)
    except Exception as e:  # a truncated or mismatched weight file, a config field of the wrong type
        if isinstance(e, (OSError, ValueError, TypeError, KeyError, EOFError)) or type(e).__name__ == "SafetensorError":
            raise UserError(f"{path}: the weights cannot be loaded ({_first_line(e)}); the checkpoint is damaged "
                            "or its config does not match its weights") from None
        raise
    return VocoModel(lm=lm, llava=full, tokenizer=tokenizer, layout=layout, image=family.image_spec(path, config),
                     fingerprint=fingerprint, earlier_fingerprints=(earlier_fingerprint(path),),
                     path=os.fspath(path), device=dev, dtype=dt,
                     weights=weights, family=family, compressor=compressor)


DEFAULT_POOL = 4  # G of `--compressor pool` when not given (clamped to the frame's grid)


def _choose_layout(path, config, tokenizer, compressor, pool, voco_tokens, allow_baseline, notice):
    """(compressor name, layout) for loading `path` (load_model's rules)."""
    from vococli.compressors import stock_compressors

    voco = is_voco_checkpoint(config, tokenizer)
    told = compressor is None and not voco and voco_tokens is None and pool is None  # say so instead of refusing
    if compressor is None and (pool is not None or not voco):  # --pool G alone means --compressor pool
        compressor = "pool"
    if compressor in (None, "voco"):
        if compressor == "voco" and not voco:
            raise UserError(f"{path}: not a VoCo checkpoint (no <voco> token or voco_num_tokens), so it cannot "
                            f"compress with --compressor voco; use --compressor pool or full")
        if getattr(config, "voco_compressor", "voco") != "voco" and not allow_baseline:
            raise UserError(f"{path}: a {config.voco_compressor!r} baseline made for `vococli experiment`, "
                            "not a VoCo model; compress and ask need a VoCo checkpoint")
        if pool is not None:
            raise UserError("--pool is for --compressor pool")
        return "voco", read_layout(config, tokenizer, voco_tokens)
    if compressor not in stock_compressors():
        raise UserError(f"--compressor {compressor!r}: choose voco, {' or '.join(stock_compressors())}")
    side = image_grid(config)
    if compressor == "full":
        if pool is not None or voco_tokens not in (None, side * side):
            raise UserError(f"--compressor full keeps all {side * side} image tokens of a frame; "
                            f"{'--pool is for --compressor pool' if pool is not None else f'not {voco_tokens}'}")
        return "full", stock_layout(config, tokenizer, side * side)
    if pool is None and voco_tokens is not None:
        pool = math.isqrt(voco_tokens)
        if pool * pool != voco_tokens:
            raise UserError(f"the pool compressor keeps G x G tokens per frame, not {voco_tokens}")
    g = min(DEFAULT_POOL, side) if pool is None else pool
    if type(g) is not int or not 1 <= g <= side:
        raise UserError(f"--pool must be between 1 and {side} (the frame's grid of image tokens is {side}x{side}), "
                        f"got {pool}")
    if told:
        (notice or _stderr)(f"note: {path} is not a VoCo checkpoint: each frame keeps its image tokens averaged "
                            f"to {g}x{g} (--compressor pool --pool {g}; --compressor full keeps all {side * side})")
    return "pool", stock_layout(config, tokenizer, g * g)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def answering_model(model: VocoModel, weights: str = "full") -> VocoModel:
    """The language-model-only view of a loaded model that answering uses (its weights shared);
    with `weights` "nf4" or "int4", a copy whose decoder Linear weights are 4-bit, as
    `load_model(..., vision=False, weights=...)` gives."""
    return model.family.answering_model(model, weights)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)
