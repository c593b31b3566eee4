"""Compressors by name: what a frame keeps for answering (compressors/base.py).

`voco` is the method; `full` (every frame token kept: the upper bound), `avgpool` and `qformer`
are the baselines training compares it with; `pool` and `full` also make caches from checkpoints
that were never VoCo-trained (compressors/pool.py). Adding one is one module with a `Compressor` subclass and
one line in `COMPRESSORS` (docs/architecture.md). A checkpoint records the compressor it was
trained with (`voco_compressor` in its config), a cache the one that made it.
"""

from __future__ import annotations

from vococli.compressors.avgpool import AvgPool
from vococli.compressors.base import Compressor
from vococli.compressors.full import Full
from vococli.compressors.pool import Pool
from vococli.compressors.qformer import QFormer
from vococli.compressors.voco import Voco
from vococli.choices import one_of

COMPRESSORS: dict[str, Compressor] = {c.name: c for c in (Voco(), Full(), AvgPool(), QFormer(), Pool())}
DEFAULT_COMPRESSOR = "voco"  # what compress and ask use (stage 1's fast path is its)


def compressor_names() -> list[str]:
    return list(COMPRESSORS)


def get_compressor(name: str | Compressor) -> Compressor:
    """The compressor called `name` (a Compressor is returned as it is)."""
    if isinstance(name, Compressor):
        return name
    return COMPRESSORS[one_of(name, COMPRESSORS, "compressor")]


def register_compressor(compressor: Compressor) -> Compressor:
    """Make `compressor` known by its name (what a new compressor module's registry line does)."""
    COMPRESSORS[compressor.name] = compressor
    return compressor


def stock_compressors() -> list[str]:
    """The compressors a checkpoint that never learned VoCo can compress with."""
    return [name for name, c in COMPRESSORS.items() if c.stock]
