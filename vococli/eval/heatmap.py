"""The report of `experiment needle`: accuracy over length x depth (V-NIAH) as JSON, a markdown
table and a heat map PNG, with per-length costs (compress time, cache size, time to first token)
and how often the top evidence frame lies inside the needle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def length_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def _share(rows, key) -> dict:
    n = len(rows)
    k = sum(bool(r[key]) for r in rows)
    return {"questions": n, "correct" if key == "correct" else "hits": k, "percent": round(100 * k / n, 1) if n else None}


def summarise(rows: list[dict]) -> dict:
    needle = [r for r in rows if r["kind"] == "needle"]
    long = [r for r in rows if r["kind"] == "long"]
    lengths = sorted({r["length_s"] for r in rows})
    depths = sorted({r["depth"] for r in needle})
    out: dict = {"lengths_s": lengths, "depths": depths, "cells": {}, "per_length": {}, "long": {}}
    for length in lengths:
        at = [r for r in needle if r["length_s"] == length]
        out["cells"][str(length)] = {str(d): _share([r for r in at if r["depth"] == d], "correct") for d in depths}
        first = {}  # one row per clip for its costs (every question of a clip shares them)
        for r in rows:
            if r["length_s"] == length:
                first.setdefault(r["id"].rsplit("_", 1)[0], r)
        right = [r for r in at if r["correct"]]
        out["per_length"][str(length)] = {
            "needle": _share(at, "correct"),
            "evidence_top1_in_needle": _share(right, "evidence_hit"),
            "compress_s": _mean(r["compress_s"] for r in first.values()),
            "cache_mib": _mean(r["cache_bytes"] / 2**20 for r in first.values()),
            "load_s": _mean(r["load_s"] for r in first.values()),
            "ttft_s": _mean(r["ttft_s"] for r in rows if r["length_s"] == length),
            "frames": _mean(r["frames"] for r in first.values()),
        }
        lat = [r for r in long if r["length_s"] == length]
        if lat:
            types = sorted({r["type"] for r in lat})
            out["long"][str(length)] = {"all": _share(lat, "correct"),
                                        **{t: _share([r for r in lat if r["type"] == t], "correct") for t in types}}
    return out


def _pct(cell: dict) -> str:
    return "-" if cell.get("percent") is None else f"{cell['percent']:.0f}"


def markdown(summary: dict) -> str:
    lengths = summary["lengths_s"]
    head = "| depth | " + " | ".join(length_label(x) for x in lengths) + " |"
    lines = ["Needle accuracy (%) by video length and depth (0% = needle at the start):", "", head,
             "|---" * (len(lengths) + 1) + "|"]
    for d in summary["depths"]:
        cells = [_pct(summary["cells"][str(x)][str(d)]) for x in lengths]
        lines.append(f"| {d * 100:.0f}% | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(f"**{_pct(summary['per_length'][str(x)]['needle'])}**"
                                           for x in lengths) + " |")
    lines += ["", "| length | frames | questions | needle acc. | top-1 evidence in needle (of correct) | compress s "
              "| cache MiB | cache load s | first token s |", "|---|---|---|---|---|---|---|---|---|"]
    for x in lengths:
        p = summary["per_length"][str(x)]
        ev = p["evidence_top1_in_needle"]
        num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {length_label(x)} | {num(p['frames'], '.0f')} | {p['needle']['questions']} | "
                     f"{_pct(p['needle'])}% | {_pct(ev)}% ({ev.get('hits', 0)}/{ev['questions']}) | "
                     f"{num(p['compress_s'], '.1f')} | {num(p['cache_mib'], '.2f')} | {num(p['load_s'], '.2f')} | "
                     f"{num(p['ttft_s'], '.3f')} |")
    if summary["long"]:
        types = sorted({t for v in summary["long"].values() for t in v if t != "all"})
        lines += ["", "Long temporal questions (several events far apart), accuracy %:", "",
                  "| length | all | " + " | ".join(t.removeprefix("long_") for t in types) + " |",
                  "|---" * (len(types) + 2) + "|"]
        for x, v in summary["long"].items():
            lines.append(f"| {length_label(int(x))} | {_pct(v['all'])} ({v['all']['questions']}) | "
                         + " | ".join(_pct(v.get(t, {})) for t in types) + " |")
    return "\n".join(lines) + "\n"


def heat_map(summary: dict, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = summary["lengths_s"], summary["depths"]
    grid = np.array([[summary["cells"][str(x)][str(d)].get("percent") or 0.0 for x in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.3 * len(lengths) + 2.2, 0.6 * len(depths) + 1.6), dpi=120)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i, d in enumerate(depths):
        for j, x in enumerate(lengths):
            ax.text(j, i, _pct(summary["cells"][str(x)][str(d)]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), [length_label(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d * 100:.0f}%" for d in depths])
    ax.set_xlabel("video length (1 frame per second)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy %")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(workdir: Path, rows: list[dict], title: str) -> dict:
    summary = summarise(rows)
    workdir = Path(workdir)
    (workdir / "needle.json").write_text(json.dumps(summary, indent=1) + "\n")
    (workdir / "needle.md").write_text(markdown(summary))
    heat_map(summary, workdir / "needle.png", title)
    return summary
