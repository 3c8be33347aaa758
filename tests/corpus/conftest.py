"""The refusal corpus: real entry points (bundle runs, the CLI, the MONAI Label server) fed bad files, bad keys,
faults and hostile requests. Each case asserts the exit code (or HTTP status), one ``error:`` line naming the file or
key, no traceback, and what is left on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_ERROR_LINE = re.compile(r"^(medsam-peft [\w-]+: )?error: ")
TINY = {"backbone": "vit_tiny", "checkpoint": "", "image_size": "128", "overlays": "0"}


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if _ERROR_LINE.match(line)]

    def refused(self, code: int, *fragments: str) -> str:
        """Assert a clean refusal: exit ``code``, exactly one ``error:`` line holding every fragment, no traceback.
        Returns that line."""
        assert self.returncode == code, (self.returncode, self.stderr[-3000:])
        assert "Traceback" not in self.stderr + self.stdout, self.stderr[-3000:]
        assert len(self.errors) == 1, self.stderr[-3000:]
        for fragment in fragments:
            assert fragment in self.errors[0], (fragment, self.errors[0])
        return self.errors[0]


class EntryPoints:
    """``python -m monai.bundle`` / ``medsam-peft`` command lines run in forks of a pre-imported server
    (tests/corpus/fork_server.py), or as real subprocesses with ``real=True``."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_server.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        ready = self.process.stdout.readline()
        assert json.loads(ready)["ready"], ready

    def bundle(self, configs: list[str] | str, overrides: dict[str, str], real: bool = False,
               timeout: int = 600, env: dict[str, str] | None = None) -> Outcome:
        files = configs if isinstance(configs, str) else str([str(REPO / c) for c in configs])
        argv = ["run", "--config_file", files if isinstance(configs, list) else str(REPO / configs)]
        for key, value in overrides.items():
            argv += [f"--{key}", value]
        return self.run("monai.bundle", argv, real=real, timeout=timeout, env=env)

    def cli(self, argv: list[str], real: bool = False) -> Outcome:
        return self.run("medsam_peft.cli", argv, real=real)

    def run(self, module: str, argv: list[str], real: bool = False, timeout: int = 600,
            env: dict[str, str] | None = None) -> Outcome:
        if real:
            full_env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}
            done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=REPO,
                                  env=full_env, timeout=timeout)
            return Outcome(done.returncode, done.stdout, done.stderr)
        request = {"module": module, "argv": argv, "cwd": str(REPO), "env": env or {}, "timeout": timeout,
                   "unset_env": ["MLFLOW_TRACKING_URI"]}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return Outcome(reply["returncode"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="session")
def entry_points():
    runner = EntryPoints()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def colin27_data(tmp_path_factory) -> Path:
    """Real Colin27/AAL slices (every 12th slice: 14 training, 14 validation samples), prepared once."""
    from medsam_peft.data import prepare_colin27_aal
    from tests.conftest import COLIN27_DIR

    root = tmp_path_factory.mktemp("corpus_colin27")
    prepare_colin27_aal(root, source=COLIN27_DIR, slice_step=12)
    return root


def leftovers(folder: Path) -> list[str]:
    """Temporaries an interrupted atomic write would leave (none may remain)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp")) if folder.exists() else []
