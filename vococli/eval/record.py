"""run.json: what reproduces an eval run, and the check that a rerun continues the same run."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from vococli.answer.paths import resolve_decode
from vococli.errors import UserError
from vococli.eval.formats import file_sha256
from vococli.families.loading import DTYPE_NAMES

if TYPE_CHECKING:
    from vococli.eval.run import EvalConfig
    from vococli.families.base import VocoModel

RUN_FORMAT = "vococli-eval-run"
RUN_VERSION = 1
# run.json fields that must match for a rerun to continue the same predictions file
SAME_RUN_KEYS = ("dataset", "annotations", "model_fingerprint", "k", "dtype", "sampling", "cache_dtype",
                 "answer_weights", "prompt", "generation")


def versions(weights: str = "full") -> dict:
    """What the answers depend on, with the library of the 4-bit weights when there are any."""
    from importlib.metadata import version

    import numpy
    import torch
    import transformers

    from vococli import __version__

    out = {"vococli": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": numpy.__version__}
    library = {"nf4": "bitsandbytes", "int4": "torchao"}.get(weights)
    if library:
        out[library] = version(library)
    return out


def run_record(model: VocoModel, cfg: EvalConfig, annotations: list[Path], fmt: str,
               answerer: VocoModel | None = None) -> dict:
    import torch

    template = model.tokenizer.chat_template or ""
    return {
        "format": RUN_FORMAT, "format_version": RUN_VERSION, "dataset": cfg.dataset, "annotation_format": fmt,
        "annotations": [{"file": str(p), "sha256": file_sha256(p)} for p in annotations],
        "model_path": str(model.path), "model_fingerprint": model.fingerprint,
        "earlier_model_fingerprints": list(model.earlier_fingerprints), "k": model.layout.k,
        "dtype": DTYPE_NAMES[model.dtype], "device": str(model.device),
        "sampling": cfg.sampling.to_dict(), "cache_dtype": cfg.cache_dtype,
        "answer_weights": (answerer or model).weights, "family": model.family.name, "compressor": model.compressor,
        "decode": resolve_decode(answerer or model, cfg.decode),  # recorded; paths agree up to rounding
        "prompt": {"suffix": cfg.suffix, "chat_template": template,
                   "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()},
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": 0.0, "decoding": "greedy"},
        "versions": versions((answerer or model).weights), "videos": str(cfg.videos), "cache_dir": str(cfg.caches),
        "threads": cfg.threads if cfg.threads is not None else torch.get_num_threads(),
    }


def check_same_run(run_file: Path, record: dict) -> None:
    """Refuse to append to a predictions file made with other settings."""
    try:
        old = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run_file}: unreadable run record ({e}); choose a new --out") from None
    if isinstance(old, dict) and old.get("model_fingerprint") in record.get("earlier_model_fingerprints", ()):
        old["model_fingerprint"] = record["model_fingerprint"]  # the same checkpoint, named as vococli 0.1 did
    changed = [k for k in SAME_RUN_KEYS if comparable(old.get(k), k) != comparable(record.get(k), k)]
    if changed:
        def what(k):  # "answer_weights (nf4 there, int4 now)", "sampling max_frames (None there, 8 now)"
            a, b = comparable(old.get(k), k), comparable(record.get(k), k)
            if isinstance(a, dict) and isinstance(b, dict):
                fields = [f for f in {**a, **b} if f not in a or f not in b or a[f] != b[f]]
                return f"{k} " + ", ".join(_difference(f, a.get(f), b.get(f)) for f in fields)
            return _difference(k, a, b)

        raise UserError(f"{run_file.parent}: holds a run with different {', '.join(map(what, changed))}; "
                        "choose a new --out to keep both")


def _difference(name: str, there, now) -> str:
    """`name (A there, B now)` when both values are short enough to print, else just `name`."""
    short = all(v is None or (isinstance(v, (str, int, float)) and 0 < len(str(v)) <= 24) for v in (there, now))
    return f"{name} ({there} there, {now} now)" if short else name


def comparable(value, key: str):
    if key == "annotations" and isinstance(value, list):
        return sorted(a.get("sha256") for a in value)  # the same files moved elsewhere are the same run
    if key == "cache_dtype" and value is None:
        return "auto"  # run records written before the option existed
    if key == "answer_weights" and value is None:
        return "full"
    return value
