"""How many CPU threads the computing commands use.

The default is the number of CPUs this process may run on (its affinity mask, which `taskset`,
containers and batch schedulers set), not the machine's core count: more threads than CPUs makes
every operation wait for the others (an eval ran 5x slower on a shared machine that way).
"""

from __future__ import annotations

import os

from vococli.errors import UserError


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # platforms without affinity masks
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    """`threads`, or the default when None; refuses fewer than 1."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}", option="threads")
    return threads


def use_threads(threads: int | None) -> int:
    """Make torch compute with `threads` CPU threads (default: default_threads()); returns the count."""
    import torch

    n = check_threads(threads)
    torch.set_num_threads(n)
    return n
