"""vococli: answer questions about long videos from compact VoCo caches.

    from vococli import load_model, compress_video, load_cache, Session

    model = load_model("checkpoint/")
    compress_video(model, "movie.mp4", "movie.voco", Sampling(fps=1))
    answerer = load_model("checkpoint/", vision=False)
    video = load_cache("movie.voco", fingerprint=answerer.fingerprints)
    print(Session(answerer, video).ask("what is the man holding?").text)
"""

from importlib import import_module

from vococli.quiet import quiet_library_imports

quiet_library_imports()  # before any of them is imported

# Names are imported on first use, so `vococli --help` does not pay for torch and transformers.
_EXPORTS = {
    "Answer": "answer.session", "GenerationConfig": "answer.settings", "Session": "answer.session", "ask_questions": "answer.session",
    "open_session": "answer.paths",
    "open_for_answering": "answer.opening", "load_cache": "cache.chunks", "read_info": "cache.chunks", "CompressResult": "compress.pipeline",
    "compress_video": "compress.pipeline", "UserError": "errors", "VocoModel": "families.base", "load_model": "families.loading",
    "Sampling": "video.sampling", "VideoCache": "cache.kv", "fit_to_context": "cache.kv",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vococli' has no attribute {name!r}")
