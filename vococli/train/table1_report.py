"""Scoring and the report of `experiment table1`: accuracy and retention with 95% confidence
intervals, accuracy by question type, and retention against K beside the paper's numbers.

Accuracy intervals are Wilson score intervals. Retention = (row - lower) / (upper - lower) is a
ratio of paired results on the same questions, so its interval is a paired bootstrap: the
questions are resampled (2,000 times, fixed seed) and the three accuracies recomputed together.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vococli.train.experiment import EVAL_SETS, SEEDS, STAGE_RUNS, Table1Config, data_sets, _as_json

# the paper's Table 1/2 retention (LLaVA-1.5-7B): VoCo by K, and the external compressors at K=1
PAPER = {"voco": {1: 83.7, 8: 91.3, 128: 97.7}, "avgpool_k1": 64.1, "qformer_k1": 57.2}
LABELS = {"upper": "Upper bound (text sees all image tokens)", "voco_k1": "VoCo, K=1", "voco_k2": "VoCo, K=2",
          "voco_k4": "VoCo, K=4", "voco_k8": "VoCo, K=8", "voco_k9": "VoCo, K=9 (every image token)",
          "avgpool_k1": "Avg. pool + linear, K=1", "avgpool_k8": "Avg. pool + linear, K=8",
          "qformer_k1": "Q-Former (1 block), K=1", "lower": "Lower bound (upper-bound model, VoCo tokens only)"}
SET_NAMES = {"eval_frame": "single-frame", "eval_temporal": "temporal", "eval_detail": "detail"}


def rows_to_score() -> dict[str, tuple[str, str]]:
    """Report row -> (run folder, compressor it is asked through)."""
    rows = {"upper": ("upper", "full"), "lower": ("upper", "voco")}
    for name, flags in STAGE_RUNS.items():
        if name != "upper":
            rows[name] = (name, flags[flags.index("--compressor") + 1] if "--compressor" in flags else "voco")
    return rows


def evaluate(cfg: Table1Config, notice: Callable[[str], None], only: set[str] | None = None) -> dict:
    """Accuracy of every row on the held-out sets, with each question's result; cached in eval.json
    (a row is scored again only when its weights or the questions changed)."""
    import warnings

    from vococli.cache.kv import max_frames_that_fit
    from vococli.families.loading import load_model
    from vococli.train.checkpoint import load_compressor
    from vococli.train.qa_score import score_qa

    warnings.filterwarnings("ignore", category=FutureWarning)
    root = Path(cfg.workdir)
    cache_file = root / "eval.json"
    results = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    sets = list(EVAL_SETS) + [f"needle_{s}" for s, _ in cfg.needle_eval]
    specs = {name: _as_json(sc) for name, sc in data_sets(cfg).items()}
    for row, (run, compressor) in rows_to_score().items():
        if only is not None and row not in only:
            continue
        m = load_model(root / "runs" / run, device="cpu", dtype="float32", allow_baseline=True)
        module = load_compressor(root / "runs" / run, m)
        for s in sets:
            key = f"{row}/{s}"
            if (results.get(key, {}).get("model_fingerprint"), results.get(key, {}).get("data")) == \
                    (m.fingerprint, specs[s]):
                continue  # scored before, on these very weights and questions
            seconds = int(s.split("_")[1]) if s.startswith("needle") else 0
            fits = max_frames_that_fit(m, 64)
            cap = fits if seconds and seconds >= fits else None
            t0 = time.perf_counter()
            sc = score_qa(m, root / "data" / s, compressor=compressor, module=module, max_frames=cap,
                          videos_per_batch=1 if seconds > 100 else 16)
            bits = "".join("1" if p["correct"] else "0" for p in sc.predictions)
            types = [p.get("type") or "" for p in sc.predictions]
            results[key] = {**sc.to_dict(), "frames_cap": cap, "seconds": round(time.perf_counter() - t0, 1),
                            "model_fingerprint": m.fingerprint, "data": specs[s], "bits": bits,
                            "ids": [p["id"] for p in sc.predictions], "types": types}
            notice(f"{key}: {sc.accuracy:.3f} ({sc.total} questions)")
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(results) + "\n")
            os.replace(tmp, cache_file)
    return results


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bits(results: dict, row: str, s: str, mask: np.ndarray | None = None) -> np.ndarray | None:
    r = results.get(f"{row}/{s}")
    if not r or "bits" not in r:
        return None
    b = np.frombuffer(r["bits"].encode(), dtype=np.uint8) - ord("0")
    return b if mask is None else b[mask]


def retention(results: dict, row: str, s: str, qtype: str | None = None,
              draws: int = 2000) -> tuple[float, float, float] | None:
    """(retention, low, high) in percent, paired bootstrap over the questions (of `qtype` only)."""
    mask = None
    if qtype is not None and f"upper/{s}" in results:
        mask = np.array([t == qtype for t in results[f"upper/{s}"].get("types", [])])
    up, lo, x = (_bits(results, r, s, mask) for r in ("upper", "lower", row))
    if up is None or lo is None or x is None or not (len(up) == len(lo) == len(x)) or len(up) == 0:
        return None

    def ratio(u, l_, v):
        gap = u.mean() - l_.mean()
        return 100 * (v.mean() - l_.mean()) / gap if gap > 0 else math.nan

    point = ratio(up, lo, x)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(up), size=(draws, len(up)))
    boot = np.array([ratio(up[i], lo[i], x[i]) for i in idx])
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return None
    return point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _acc_cell(results: dict, row: str, s: str) -> str:
    r = results.get(f"{row}/{s}")
    if r is None:
        return "-"
    lo, hi = wilson(r["correct"], r["total"])
    return f"{100 * r['accuracy']:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def _ret_cell(results: dict, row: str, s: str, qtype: str | None = None) -> str:
    if row in ("upper", "lower"):
        return "100%" if row == "upper" else "0%"
    r = retention(results, row, s, qtype)
    return "-" if r is None else f"{r[0]:.1f}% ({r[1]:.1f}-{r[2]:.1f})"


def write_report(cfg: Table1Config, results: dict, minutes: float, command: str) -> str:
    import torch

    sets = [s for s in EVAL_SETS if f"upper/{s}" in results] or list(EVAL_SETS)
    head = ["model"] + [f"{SET_NAMES[s]} acc" for s in sets] + [f"retention ({SET_NAMES[s]})" for s in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in LABELS:
        if not any(f"{row}/{s}" in results for s in sets):
            continue
        cells = [LABELS[row]] + [_acc_cell(results, row, s) for s in sets] + [_ret_cell(results, row, s) for s in sets]
        lines.append("| " + " | ".join(cells) + " |")
    types = [(s, t) for s in sets for t in sorted(results.get(f"upper/{s}", {}).get("by_type", {}))]
    by_type = ["| model | " + " | ".join(t for _, t in types) + " |", "|---|" + "---|" * len(types)]
    for row in LABELS:
        if f"{row}/{sets[0]}" not in results:
            continue
        cells = [results.get(f"{row}/{s}", {}).get("by_type", {}).get(t, {}).get("accuracy") for s, t in types]
        by_type.append(f"| {LABELS[row]} | " + " | ".join("-" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    detail_types = sorted(results.get("upper/eval_detail", {}).get("by_type", {}))
    detail = ["| model | " + " | ".join(f"retention ({t})" for t in detail_types) + " |",
              "|---|" + "---|" * len(detail_types)]
    for row in LABELS:
        if row not in ("upper", "lower") and f"{row}/eval_detail" in results:
            detail.append(f"| {LABELS[row]} | " + " | ".join(_ret_cell(results, row, "eval_detail", t)
                                                             for t in detail_types) + " |")
    counts = ", ".join(f"{results.get(f'upper/{s}', {}).get('total', '?')} {SET_NAMES[s]}" for s in sets)
    seeds = ", ".join(str(SEEDS[s]) for s in sets)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name())
    base = " + ".join(f"{n} ({lr:g})" for n, lr in zip(cfg.base_stages, cfg.base_lrs))
    return "\n".join([
        "| | |", "|---|---|",
        f"| command | `{command}` |",
        f"| machine | {machine} |",
        f"| wall time | {minutes:.0f} min from the first start to the report (data, training, scoring) |",
        f"| budget | base: {base} causal steps (peak rate); then {cfg.stage_steps} steps per variant at "
        f"{cfg.stage_lr:g}, batch {cfg.batch_size} |",
        f"| held-out | {counts} questions (seeds {seeds}) |",
        "", *lines, "",
        "Accuracy is greedy exact match in percent, with its 95% Wilson interval. Retention = (result - lower) / "
        "(upper - lower), with its 95% paired-bootstrap interval.",
        "", "Retention on each detail question type:", "", *detail,
        "", "Accuracy by question type:", "", *by_type,
    ]) + "\n"


def plot_retention(results: dict, out: Path) -> Path | None:
    """Retention against K (log scale) for VoCo, the baselines as points, the paper's beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in EVAL_SETS if f"upper/{s}" in results]
    if not sets:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for s, colour in zip(sets, ("tab:blue", "tab:green", "tab:purple")):
        ks = sorted(int(r.split("_k")[1]) for r in LABELS if r.startswith("voco_k") and f"{r}/{s}" in results)
        pts = [(k, retention(results, f"voco_k{k}", s)) for k in ks]
        pts = [(k, r) for k, r in pts if r is not None]
        if pts:
            k, r = zip(*pts)
            ax.errorbar(k, [x[0] for x in r], yerr=[[x[0] - x[1] for x in r], [x[2] - x[0] for x in r]],
                        marker="o", capsize=3, color=colour, label=f"VoCo, {SET_NAMES[s]} (ours)")
        for base, marker in (("avgpool_k1", "s"), ("avgpool_k8", "s"), ("qformer_k1", "^")):
            r = retention(results, base, s)
            if r is not None:
                ax.plot(int(base.split("_k")[1]), r[0], marker=marker, color=colour, linestyle="none", alpha=0.6)
    paper = PAPER["voco"]
    ax.plot(list(paper), list(paper.values()), "k--", marker="x", label="VoCo, paper (LLaVA-1.5-7B)")
    ax.plot([1], [PAPER["avgpool_k1"]], "ks", fillstyle="none", label="avg. pool K=1, paper (squares: ours)")
    ax.plot([1], [PAPER["qformer_k1"]], "k^", fillstyle="none", label="Q-Former, paper (triangles: ours)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (tokens per frame)")
    ax.set_ylabel("retention %")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
