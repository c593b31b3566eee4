"""compress-many and --ray mistakes are one line, with or without Ray installed."""

import importlib.util

import pytest

from helpers import run
from vococli.errors import UserError


def test_a_missing_ray_names_the_extra(monkeypatch):
    from vococli.cli.eval import check_ray

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'vococli\[ray\]'"):
        check_ray(2)


def test_compress_many_refuses_bad_inputs_in_one_line(tmp_path):
    r = run("compress-many", tmp_path / "none", "-o", tmp_path / "c")
    assert r.returncode == 1 and "no such folder or file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("compress-many", tmp_path / "empty", "-o", tmp_path / "c")
    assert r.returncode == 1 and "no video files" in r.stderr
    qa = tmp_path / "qa.json"
    qa.write_text("[]")
    r = run("compress-many", qa, "-o", tmp_path / "c")
    assert r.returncode == 1 and "needs --dataset and --videos" in r.stderr
    r = run("compress-many", tmp_path / "empty", "-o", tmp_path / "c", "--ray", "local", "--workers", "0")
    assert r.returncode == 1 and "--workers must be at least 1" in r.stderr
