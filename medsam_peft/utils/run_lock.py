"""One training run per output folder at a time.

Two runs writing one folder would interleave checkpoints and crash in MLflow's sqlite migration. The first run takes
an exclusive ``flock`` on ``<output_dir>/.medsam_peft.lock`` and writes its pid and command into it; the kernel
releases the lock when the process ends, however it ends (a SIGKILL included), so a stale lock file never blocks
a rerun. A second run stops at once, naming the process that holds the folder.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from medsam_peft.errors import OutputDirError

LOCK_NAME = ".medsam_peft.lock"
_HELD: dict[str, int] = {}  # folder -> open file descriptor holding its lock, for this process's lifetime


def lock_output_dir(output_dir: str | os.PathLike) -> Path:
    """Take the output folder's lock (idempotent within a process) and return the lock file's path.

    Raises:
        OutputDirError: another process holds the folder, or the folder cannot be created or written.
    """
    folder = Path(output_dir).resolve()
    key = str(folder)
    lock_file = folder / LOCK_NAME
    if key in _HELD:
        return lock_file
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputDirError(f"output folder {folder} cannot be used ({err.strerror or err}); check its permissions "
                             "or choose another --output_dir") from None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one run per folder is then the user's care
        _HELD[key] = fd
        return lock_file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputDirError(f"output folder {folder} is in use by {holder}; wait for that run to finish, or give "
                             "this run another --output_dir") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    program = sys.argv[0] if sys.argv else "python"
    program = "python -m monai.bundle" if program.replace("\\", "/").endswith("monai/bundle/__main__.py") else program
    command = " ".join([os.path.basename(program) if "/" in program else program, *sys.argv[1:]])[:300]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} (started {started}: {command})\n".encode(), 0)
    _HELD[key] = fd
    return lock_file


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Release this process's lock on the folder (the end of a process releases it anyway)."""
    fd = _HELD.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


__all__ = ["LOCK_NAME", "lock_output_dir", "release_output_dir"]
