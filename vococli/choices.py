"""The closed sets of names a setting can take, typed once and checked in one place.

Each is a `Literal` type (what the library's signatures say) whose values are read back by
`options`, so a choice is spelled in one place. `check` raises a UserError phrased for a library
caller ("weights 'int3': choose one of ..."); the command line shows the same error with its flag
("--weights 'int3': ..."), because the error names the setting (`UserError.option`).

Open sets, which grow by registration, are registries instead: model families
(vococli.families), compressors (vococli.compressors), video backends (vococli.video.backends)
and decode paths (vococli.answer).
"""

from __future__ import annotations

from typing import Literal, get_args

from vococli.errors import UserError

Weights = Literal["full", "nf4", "int4"]  # the answering decoder's Linear weights
Storage = Literal["auto", "int8"]  # cached keys/values: the model's dtype, or 8 bits
JudgeName = Literal["exact", "contains", "llm"]  # how `score` judges an answer
TrainMask = Literal["voco", "causal"]  # training: the VoCo attention mask, or none (every frame token seen)


def options(choice) -> tuple[str, ...]:
    """The values of a Literal type, in order."""
    return get_args(choice)


def one_of(value, allowed, what: str, option: str | None = None):
    """`value` when it is among `allowed` (names, or a registry's keys), else a UserError
    "WHAT 'VALUE': choose one of ..." (`option`: the setting it names, for the command line)."""
    if value not in allowed:
        raise UserError(f"{what} {value!r}: choose one of {', '.join(allowed)}", option=option)
    return value


def check(value, choice, setting: str):
    """`value` when it is one of `choice`'s values, else a UserError naming `setting`."""
    return one_of(value, options(choice), setting, option=setting)
