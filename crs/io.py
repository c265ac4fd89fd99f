"""Atomic artifact writing: a crash never leaves a half-written file in place of a good one.

Temporary files and folders (``tempfile.mkstemp``, ``mkdtemp``) are created private (0600, 0700); what is moved
into place gets the mode a plain ``open(path, "w")`` or ``mkdir`` would have given it (0644 and 0755 under the
usual umask 022), through :func:`file_mode` and :func:`dir_mode`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "dir_mode",
    "file_mode",
    "plain_modes",
    "read_json",
    "save_tensor",
    "umask",
]

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and restoring it
    (``os.umask`` is process-wide), under a lock so that two writers of this module never interleave;
    a thread creating a file by other means in that instant could still see the umask 0o077 set meanwhile.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a file created by ``open(path, "w")``: ``0o666 & ~umask`` (0o644 under umask 0o022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode of a folder created by ``mkdir``: ``0o777 & ~umask`` (0o755 under umask 0o022)."""
    return 0o777 & ~umask()


def plain_modes(folder: str | os.PathLike) -> Path:
    """Give ``folder`` and everything under it the modes a plain ``mkdir`` / ``open(path, "w")`` would give.

    For folders written through a temporary folder (``mkdtemp``: 0700) or by libraries that write private files
    (safetensors' ``save_file`` makes 0600 files): the folder gets :func:`dir_mode`, every file :func:`file_mode`.
    Symbolic links are left alone.
    """
    folder = Path(folder)
    files, dirs = file_mode(), dir_mode()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dirs if path.is_dir() else files)
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the mode ``open(path, "w")`` would give it (:func:`file_mode`), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, file_mode())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _check_finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"Refusing to write a non-finite number at {where or 'top level'}: {obj}.")
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_finite(value, f"{where}[{i}]")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` to JSON (strict: NaN and inf are refused) and write it atomically."""
    _check_finite(obj)
    text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No {what} at {str(path)!r}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"The {what} {str(path)!r} is not valid JSON: {exc}.") from exc


def save_tensor(path: str | os.PathLike, x) -> Path:
    """``torch.save`` of a (contiguous) tensor to ``path``, atomically."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(x.contiguous(), buf)
    return atomic_write_bytes(path, buf.getvalue())
