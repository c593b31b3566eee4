"""What a resumed training run keeps from its saved settings and what the new command may change."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from vococli.errors import UserError

if TYPE_CHECKING:
    from vococli.train.config import TrainConfig

RESUMABLE = ("steps", "epochs", "save_every", "threads", "device", "keep_frames")  # may change on --resume
FLAGS = {"checkpoint": "--from"}  # TrainConfig fields whose flag is not --field-name
PATH_FIELDS = ("checkpoint", "media")


def resumed_from_command(given: frozenset[str] | None) -> tuple[str, ...]:
    """The RESUMABLE fields a resume takes from the new command; the run keeps its own for the
    others. The length is one setting: --steps or --epochs given replaces both."""
    if given is None:
        return RESUMABLE
    names = [k for k in RESUMABLE if k in given]
    if {"steps", "epochs"} & given:
        names += [k for k in ("steps", "epochs") if k not in names]
    return tuple(names)


def _same_path(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or Path(a).resolve() == Path(b).resolve())


def check_resume_settings(cfg: TrainConfig, run_cfg: TrainConfig, given: frozenset[str]) -> None:
    """Refuse a resume whose settings in `given` differ from the saved run's `run_cfg`."""
    fixed = given - set(RESUMABLE) - {"out"}
    if _same_path(run_cfg.checkpoint, cfg.out):
        fixed -= {"init", "checkpoint"}  # saved before runs kept their starting point: it is not known

    def same(k):
        a, b = getattr(cfg, k), getattr(run_cfg, k)
        if k == "data":  # the same files, however the paths are spelled
            return len(a) == len(b) and all(map(_same_path, a, b))
        return _same_path(a, b) if k in PATH_FIELDS else a == b

    changed = [f.name for f in fields(cfg) if f.name in fixed and not same(f.name)]
    if changed:
        def what(k):
            flag = FLAGS.get(k, "--" + k.replace("_", "-"))
            return f"{flag} is {_shown(getattr(run_cfg, k))} in the run, {_shown(getattr(cfg, k))} now"

        raise UserError(f"{cfg.out}: --resume keeps the run's settings ({'; '.join(map(what, changed))}); "
                        "only --steps/--epochs, --save-every, --threads, --device and --keep-frames may change")


def _shown(value) -> str:
    if value is None:
        return "not set"
    return ",".join(value) if isinstance(value, tuple) else str(value)
