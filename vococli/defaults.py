"""Where the model comes from when `--model` is not given."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from vococli.errors import UserError

ENV_MODEL = "VOCOCLI_MODEL"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name": a model on the hub


def bundled_model_dir():
    """The folder of the model shipped with the package: installed as `vococli.bundled`, or
    `models/default` beside the package when it runs from a source checkout."""
    try:
        installed = resources.files("vococli.bundled") / "default"
        if (installed / "config.json").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    source = Path(__file__).resolve().parent.parent / "models" / "default"
    return source if (source / "config.json").is_file() else None


def default_model_path() -> str:
    """$VOCOCLI_MODEL, else the bundled default model."""
    if os.environ.get(ENV_MODEL):
        path = os.environ[ENV_MODEL]
        if not Path(path).exists() and not HUB_ID.fullmatch(path):  # hub ids are resolved when loaded
            raise UserError(f"{path} (from ${ENV_MODEL}): model folder not found")
        return path
    bundled = bundled_model_dir()
    if bundled is not None and (bundled / "config.json").is_file():
        return os.fspath(bundled)
    raise UserError("no model given and no bundled default model is installed: pass --model DIR "
                    f"or set {ENV_MODEL} (`vococli tiny-model DIR` makes a random test model)")
