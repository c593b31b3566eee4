"""vococli: answer questions about long videos from compact VoCo caches.

    from vococli import load_model, compress_video, load_cache, Session

    model = load_model("checkpoint/")
    compress_video(model, "movie.mp4", "movie.voco", Sampling(fps=1))
    answerer = load_model("checkpoint/", vision=False)
    video = load_cache("movie.voco", fingerprint=answerer.fingerprint)
    print(Session(answerer, video).ask("what is the man holding?").text)
"""

from .answer import Answer, GenerationConfig, Session, ask_questions
from .cache_file import load_cache, read_info
from .compress import CompressResult, compress_video
from .errors import UserError
from .model import VocoModel, load_model
from .video import Sampling
from .video_cache import VideoCache, fit_to_context

__all__ = [
    "Answer", "CompressResult", "GenerationConfig", "Sampling", "Session", "UserError", "VideoCache",
    "VocoModel", "ask_questions", "compress_video", "fit_to_context", "load_cache", "load_model", "read_info",
]
__version__ = "0.1.0"
