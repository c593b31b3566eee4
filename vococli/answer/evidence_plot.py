"""`--evidence-plot FILE.png`: an answer's evidence weight over the video's time line, with the
top frames' thumbnails when the video is still on disk (found beside its cache, or given)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vococli.answer.evidence import TOP, Evidence, clock
from vococli.errors import UserError


def find_video(cache: Path, meta, given: Path | None = None) -> Path | None:
    """The video a cache was made from, when it is still on disk and unchanged: `given`, else the
    file of the recorded name beside the cache."""
    from vococli.cache.meta import same_video, video_identity

    if meta is None or not meta.video:
        return None
    for candidate in ([given] if given else []) + [Path(cache).parent / meta.video.get("name", "")]:
        try:
            if candidate.is_file() and same_video(video_identity(candidate), meta.video):
                return candidate
        except OSError:
            continue
    return None


def thumbnails(video: Path, seconds: list[float]) -> list[np.ndarray | None]:
    """The frames on screen at the given times (None where one cannot be decoded)."""
    from vococli.video.reader import VideoReader

    try:
        reader = VideoReader(video)
        stamps = np.asarray(reader.timestamps)
        want = [int(max(0, np.searchsorted(stamps, s + 1e-6, side="right") - 1)) for s in seconds]
        got = {}
        for batch in reader.read(np.unique(want), batch_size=8):
            for i, frame in zip(batch.indices, batch.frames):
                got[int(np.unique(want)[i])] = frame
        return [got.get(w) for w in want]
    except (UserError, OSError):
        return [None] * len(seconds)


def plot_evidence(evidence: Evidence, out: Path, question: str, answer: str, video: Path | None = None,
                  top: int = TOP) -> Path:
    """Write the PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = evidence.top(top)
    frames = thumbnails(video, [f["seconds"] for f in best]) if video is not None else [None] * len(best)
    shown = [(f, img) for f, img in zip(best, frames) if img is not None]
    fig = plt.figure(figsize=(10, 4.8 if shown else 3.2), dpi=110)
    grid = fig.add_gridspec(2 if shown else 1, max(1, len(shown)), height_ratios=[1.0, 0.9] if shown else [1.0])
    ax = fig.add_subplot(grid[0, :])
    t = evidence.timestamps
    ax.fill_between(t, evidence.weights, step="mid", alpha=0.35, color="tab:blue")
    ax.plot(t, evidence.weights, drawstyle="steps-mid", color="tab:blue", linewidth=0.8)
    for rank, f in enumerate(best):
        ax.axvline(f["seconds"], color="tab:red", alpha=0.5, linewidth=0.8)
        ax.annotate(str(rank + 1), (f["seconds"], f["weight"]), textcoords="offset points", xytext=(2, 2),
                    fontsize=8, color="tab:red")
    ticks = np.linspace(float(t[0]), float(t[-1]), 6) if len(t) > 1 else t
    ax.set_xticks(ticks, [clock(x) for x in ticks], fontsize=8)
    ax.set_ylabel("evidence weight")
    ax.set_xlim(float(t[0]), float(t[-1]) if len(t) > 1 else float(t[0]) + 1)
    ax.set_title(f"Q: {question}   A: {answer}", fontsize=9, loc="left")
    for col, (f, img) in enumerate(shown):
        tax = fig.add_subplot(grid[1, col])
        tax.imshow(img)
        tax.set_axis_off()
        tax.set_title(f"{best.index(f) + 1}. {f['time']} ({f['weight']:.2f})", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    try:
        fig.savefig(out)
    except OSError as e:
        raise UserError(f"{out}: cannot write the evidence plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out
