"""Artifacts are written atomically: a failure never replaces a good file."""

import json
import os
import stat

import pytest
import torch

import crs.io
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


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o027)``), restoring the old one afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_have_the_mode_of_a_plain_write(tmp_path, umask, mask, mode):
    umask(mask)
    assert crs.io.umask() == mask and crs.io.file_mode() == mode
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    crs.io.save_tensor(tmp_path / "t.pt", torch.zeros(2))
    (tmp_path / "plain.json").write_text("{}")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": mode, "t.pt": mode, "plain.json": mode}


def test_a_saved_model_folder_and_checkpoint_are_not_private(tmp_path, umask):
    from crs.models import build_denoiser
    from crs.training import _atomic_torch_save

    umask(0o022)
    build_denoiser((2,)).save_pretrained(tmp_path / "m")  # through mkdtemp, with safetensors' private file
    _atomic_torch_save({"step": 1}, tmp_path / "ckpt" / "checkpoint.pt")
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes["m"] == modes["ckpt"] == 0o755
    files = {name: mode for name, mode in modes.items() if (tmp_path / name).is_file()}
    assert "m/diffusion_pytorch_model.safetensors" in files and set(files.values()) == {0o644}, files


def test_the_umask_without_proc_is_read_and_restored(monkeypatch, umask):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(crs.io, "open", no_proc, raising=False)
    umask(0o027)
    assert crs.io.umask() == 0o027 and crs.io.umask() == 0o027  # the round trip left it as it was
