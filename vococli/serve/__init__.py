"""`vococli serve`: an OpenAI-compatible server answering from per-video caches on disk."""
