"""Where the model comes from when `--model` is not given."""

from __future__ import annotations

import os
from importlib import resources

from .errors import UserError

ENV_MODEL = "VOCOCLI_MODEL"


def bundled_model_dir():
    """The folder of the model shipped with the package (`models/default` in the source tree)."""
    try:
        return resources.files("vococli.bundled") / "default"
    except ModuleNotFoundError:
        return None


def default_model_path() -> str:
    """$VOCOCLI_MODEL, else the bundled default model."""
    if os.environ.get(ENV_MODEL):
        return os.environ[ENV_MODEL]
    bundled = bundled_model_dir()
    if bundled is not None and (bundled / "config.json").is_file():
        return os.fspath(bundled)
    raise UserError("no model given and no bundled default model is installed: pass --model DIR "
                    f"or set {ENV_MODEL} (`vococli tiny-model DIR` makes a random test model)")
