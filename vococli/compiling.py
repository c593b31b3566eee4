"""The torch.compile setting the compiled paths share."""

from __future__ import annotations


def allow_recompiles(n: int) -> None:
    """Let dynamo compile one function for up to `n` input shapes. Past its limit (8 by default)
    it runs the function uncompiled, silently."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(cfg, name, max(getattr(cfg, name), n))
