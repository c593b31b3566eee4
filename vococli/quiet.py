"""Silence what libraries vococli uses print when they are imported (no torch needed here)."""

from __future__ import annotations

import logging

# bitsandbytes warns, on CPUs with AVX512-BF16, that an optional kernel package from the model hub
# is missing (its own CPU kernels work without it); torchao, which transformers imports while
# loading any model once it is installed, that native kernels built for other Pythons and GPUs do
# not load; torch, that torchao registers enums the old way. vococli needs none of those.
NOISY_LOGGERS = ("bitsandbytes", "torchao", "torch.utils._pytree")


def quiet_library_imports() -> None:
    """Raise those loggers to ERROR, unless the program has set their levels itself."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


class no_progress_bars:
    """A `with` block in which transformers draws no progress bars (loading and saving weights);
    the setting the program had is restored after it. vococli draws its own bars."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was_disabled = hf_logging.is_progress_bar_enabled() is False
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc) -> None:
        from transformers.utils import logging as hf_logging

        if not self._was_disabled:
            hf_logging.enable_progress_bar()
