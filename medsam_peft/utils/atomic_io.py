"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Each writer goes through a temporary file in the target's folder (``<name>.<random>.tmp``), flushed to disk, then
renamed over the target. A process killed mid-write leaves only such a temporary; ``remove_stale_temporaries``
clears them once the caller knows no other writer is active (the run holds its output folder's lock).
A full disk is reported as ``OutputDirError("no space left on <folder> ...")`` instead of the C++ stream error
``torch.save`` gives.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from medsam_peft.errors import OutputDirError

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
TEMP_SUFFIX = ".tmp"


def _no_space_message(path: Path, size: int) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
        detail = f"{free / 2**20:.1f} MiB free, {size / 2**20:.1f} MiB needed"
    except OSError:
        detail = f"{size / 2**20:.1f} MiB needed"
    return (f"no space left on {path.parent} while writing {path.name} ({detail}); free some space or choose "
            "another output folder (--output_dir)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 honours the umask (mkstemp would make every checkpoint private to its owner)
        tmp = str(path.parent / f"{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise OutputDirError(_no_space_message(path, len(data))) from err
        raise OutputDirError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise OutputDirError(_no_space_message(path, len(data))) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into memory, then ``atomic_write_bytes``: the file is whole or absent, and a full disk is an
    ``OutputDirError`` naming the folder (checkpoints here are adapters and optimiser states, a few to ~100 MB)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON atomically (non-JSON values through ``str``)."""
    return atomic_write_bytes(path, json.dumps(obj, indent=indent, default=str).encode())


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer of ``path`` left behind (``<name>.*.tmp`` beside it).

    Only call this while no other process may be writing ``path`` (e.g. holding the output folder's lock).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for candidate in path.parent.glob(f"{path.name}.*{TEMP_SUFFIX}"):
        try:
            candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:
            pass
    return removed


__all__ = ["atomic_torch_save", "atomic_write_bytes", "remove_stale_temporaries", "write_json_atomic"]
