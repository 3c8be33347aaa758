"""Runs a bundle (one config file or several layered) as a user does: `python -m monai.bundle run` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_bundle(configs: list[str], overrides: dict[str, str]) -> str:
    """Run ``configs`` (paths relative to the repository) with ``--key value`` overrides; returns stdout + stderr and
    fails the test, showing the output's end, on a nonzero exit."""
    files = str([str(REPO / c) for c in configs])
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr
