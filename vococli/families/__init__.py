"""Model families by name: each knows how to load, run and answer with one architecture.

Adding a family is one new module with a `ModelFamily` subclass and one line in `FAMILIES`
(docs/architecture.md). A checkpoint's family is found from its config (`family_for_config`).
"""

from __future__ import annotations

from vococli.choices import one_of
from vococli.errors import UserError
from vococli.families.base import ModelFamily
from vococli.families.llava_llama import LlavaLlama

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (LlavaLlama(),)}


def family_names() -> list[str]:
    return list(FAMILIES)


def get_family(name: str) -> ModelFamily:
    return FAMILIES[one_of(name, FAMILIES, "model family")]


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` known by its name (what a new family module's registry line does)."""
    FAMILIES[family.name] = family
    return family


def family_for_config(config, path) -> ModelFamily:
    """The family whose checkpoints look like `config`; refused when none does."""
    for family in FAMILIES.values():
        if family.matches(config):
            return family
    text = getattr(getattr(config, "text_config", None), "model_type", None)
    kind = f"{config.model_type!r}" + (f" with a {text!r} language model" if text else "")
    raise UserError(f"{path}: model type {kind} is not a supported family (supported: {', '.join(FAMILIES)})")
