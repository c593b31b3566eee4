"""Compress a video and ask it several questions from Python, with the same code the CLI uses.

    python examples/ask_video.py VIDEO "question 1" "question 2" ... [--model CHECKPOINT]

Without --model it uses $VOCOCLI_MODEL, else the bundled default model (which knows only the
synthetic world of `vococli synth`; try it on video/shapes_demo.mp4).
"""

import sys
from pathlib import Path

from vococli import GenerationConfig, Sampling, Session, compress_video, load_cache, load_model


def main(video: str, *questions: str, checkpoint: str | None = None) -> None:
    encoder = load_model(checkpoint)  # vision tower + language model, for stage 1
    result = compress_video(encoder, video, Path(video).with_suffix(".voco"), Sampling(fps=1))
    print(f"{result.frames} frames in {result.seconds:.1f} s -> {result.path}")
    del encoder

    answerer = load_model(checkpoint, vision=False)  # stage 2 needs only the language model
    session = Session(answerer, load_cache(result.path, fingerprint=answerer.fingerprints))
    for q in questions:
        session.reset()  # independent questions; drop this line for a follow-up conversation
        ans = session.ask(q, GenerationConfig(max_new_tokens=64))
        print(f"Q: {q}\nA: {ans.text}  ({ans.time_to_first_token_s * 1000:.0f} ms to first token)")


if __name__ == "__main__":
    args = sys.argv[1:]
    model = None
    if "--model" in args:
        at = args.index("--model")
        if at + 1 >= len(args):
            sys.exit("--model needs a checkpoint folder")
        model = args[at + 1]
        del args[at:at + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    main(*args, checkpoint=model)
