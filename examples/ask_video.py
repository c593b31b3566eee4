"""Compress a video and ask it several questions from Python, with the same code the CLI uses.

    python examples/ask_video.py CHECKPOINT VIDEO "question 1" "question 2" ...
"""

import sys
from pathlib import Path

from vococli import GenerationConfig, Sampling, Session, compress_video, load_cache, load_model


def main(checkpoint: str, video: str, *questions: str) -> None:
    encoder = load_model(checkpoint)  # vision tower + language model, for stage 1
    result = compress_video(encoder, video, Path(video).with_suffix(".voco"), Sampling(fps=1))
    print(f"{result.frames} frames in {result.seconds:.1f} s -> {result.path}")
    del encoder

    answerer = load_model(checkpoint, vision=False)  # stage 2 needs only the language model
    session = Session(answerer, load_cache(result.path, fingerprint=answerer.fingerprint))
    for q in questions:
        session.reset()  # independent questions; drop this line for a follow-up conversation
        ans = session.ask(q, GenerationConfig(max_new_tokens=64))
        print(f"Q: {q}\nA: {ans.text}  ({ans.time_to_first_token_s * 1000:.0f} ms to first token)")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
