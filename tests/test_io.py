"""Artifacts are written atomically: a failure never replaces a good file."""

import json

import pytest

from crs.io import atomic_write_json, read_json


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    with pytest.raises(ValueError, match="non-finite number at y\\[1\\]"):
        atomic_write_json(path, {"y": [1.0, float("nan")]})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No schedule file"):
        read_json(tmp_path / "nope.json", "schedule file")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
