"""The Table 1 experiment: held-out data never shares a seed with training; retention is computed right."""

from vococli.train.experiment import Table1Config, data_sets, write_report


def test_held_out_sets_use_other_seeds_than_training():
    sets = data_sets(Table1Config(workdir="w"))
    train = {s.seed for n, s in sets.items() if n.startswith("train")}
    held = {s.seed for n, s in sets.items() if not n.startswith("train")}
    assert train and held and not train & held
    assert {s.kind for n, s in sets.items() if n.startswith("needle")} == {"needle"}


def test_report_retention_is_relative_to_upper_and_lower():
    def r(acc):
        return {"accuracy": acc, "total": 100, "by_type": {"color": {"accuracy": acc, "total": 100}}}

    results = {"upper/eval_frame": r(0.9), "lower/eval_frame": r(0.3), "voco_k1/eval_frame": r(0.75),
               "avgpool_k1/eval_frame": r(0.3)}
    report = write_report(Table1Config(workdir="w", needle_eval=()), results, 12.0, "vococli experiment table1")
    row = next(l for l in report.splitlines() if l.startswith("| VoCo, K=1 |"))
    assert "| 75.0 |" in row and "| 75.0% |" in row  # (0.75 - 0.3) / (0.9 - 0.3)
    row = next(l for l in report.splitlines() if l.startswith("| Avg. pool"))
    assert "| 0.0% |" in row
    assert "`vococli experiment table1`" in report and "12 min" in report


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
