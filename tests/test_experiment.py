"""The Table 1 experiment: held-out data never shares a seed with training; retention and its
intervals are computed right."""

import math

import numpy as np

from vococli.train.experiment import STAGE_RUNS, Table1Config, base_runs, data_sets
from vococli.train.table1_report import retention, rows_to_score, wilson, write_report


def test_held_out_sets_use_other_seeds_than_training():
    sets = data_sets(Table1Config(workdir="w"))
    train = {s.seed for n, s in sets.items() if n.startswith("train")}
    held = {s.seed for n, s in sets.items() if not n.startswith("train")}
    assert train and held and not train & held
    assert {s.kind for n, s in sets.items() if n.startswith("needle")} == {"needle"}


def _result(bits: str, qtype: str = "color") -> dict:
    k = bits.count("1")
    return {"accuracy": k / len(bits), "correct": k, "total": len(bits), "bits": bits, "types": [qtype] * len(bits),
            "by_type": {qtype: {"accuracy": k / len(bits), "total": len(bits)}}}


def test_report_retention_is_relative_to_upper_and_lower():
    n = 100
    upper = "1" * 90 + "0" * 10
    lower = "1" * 30 + "0" * 70
    results = {"upper/eval_frame": _result(upper), "lower/eval_frame": _result(lower),
               "voco_k1/eval_frame": _result("1" * 75 + "0" * 25), "avgpool_k1/eval_frame": _result(lower)}
    report = write_report(Table1Config(workdir="w", needle_eval=()), results, 12.0, "vococli experiment table1")
    row = next(l for l in report.splitlines() if l.startswith("| VoCo, K=1 |"))
    lo, hi = wilson(75, n)
    assert f"| 75.0 ({100 * lo:.1f}-{100 * hi:.1f}) |" in row and "| 75.0% (" in row  # (0.75 - 0.3) / (0.9 - 0.3)
    row = next(l for l in report.splitlines() if l.startswith("| Avg. pool + linear, K=1"))
    assert "| 0.0% (" in row
    assert "`vococli experiment table1`" in report and "12 min" in report


def test_wilson_and_bootstrap_intervals():
    lo, hi = wilson(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)  # textbook values
    rng = np.random.default_rng(1)
    up = (rng.random(2000) < 0.9).astype(int)
    lo_ = up * (rng.random(2000) < 0.3)
    row = np.maximum(lo_, up * (rng.random(2000) < 0.75))
    bits = lambda a: "".join(map(str, a))  # noqa: E731
    results = {"upper/eval_frame": _result(bits(up)), "lower/eval_frame": _result(bits(lo_)),
               "voco_k1/eval_frame": _result(bits(row))}
    point, low, high = retention(results, "voco_k1", "eval_frame", draws=500)
    assert math.isclose(point, 100 * (row.mean() - lo_.mean()) / (up.mean() - lo_.mean()))
    assert low < point < high and high - low < 8  # 2,000 paired questions: a few points wide


def test_every_variant_has_a_row_and_the_base_is_a_curriculum():
    rows = rows_to_score()
    assert set(STAGE_RUNS) <= set(rows) and rows["lower"] == ("upper", "voco") and rows["upper"] == ("upper", "full")
    assert rows["qformer_k1"] == ("qformer_k1", "qformer") and rows["avgpool_k8"] == ("avgpool_k8", "avgpool")
    runs = base_runs(Table1Config(workdir="w"))
    assert [r[0] for r in runs] == ["base_1", "base_2", "base"] and runs[0][1] == ("train_shape",)
    assert base_runs(Table1Config(workdir="w", base_stages=(10,), base_lrs=(1e-3,)))[0][:1] == ("base",)


def test_unknown_preset_is_refused_before_any_work(tmp_path):
    import pytest

    from vococli.errors import UserError
    from vococli.train.experiment import table1

    with pytest.raises(UserError, match="--preset 'huge'"):
        table1(Table1Config(workdir=str(tmp_path / "w"), preset="huge"), "cmd", notice=lambda s: None)
    assert not (tmp_path / "w").exists()


def test_other_training_data_is_refused_once_models_are_trained(tmp_path):
    """Models trained on one set of clips are never reported as trained on another."""
    import json
    from dataclasses import asdict

    import pytest

    from vococli.errors import UserError
    from vococli.train.experiment import make_data

    first = Table1Config(workdir=str(tmp_path), train_frame=3)
    folder = tmp_path / "data" / "train_frame"
    folder.mkdir(parents=True)
    (folder / "synth_config.json").write_text(json.dumps(asdict(data_sets(first)["train_frame"])))
    state = tmp_path / "runs" / "base" / "trainer" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    with pytest.raises(UserError, match="trained on other train_frame data \\(3 clips there, 4 now\\)"):
        make_data(Table1Config(workdir=str(tmp_path), train_frame=4), notice=lambda s: None)
