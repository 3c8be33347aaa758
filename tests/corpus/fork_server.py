"""Runs command lines of the package's real entry points in forks of one interpreter that has imported them once.

``python -m monai.bundle`` spends ~14 s importing MONAI before it reads a config; the refusal corpus has dozens of
cases. This server (a fresh process: it never runs a torch op, so forking it is safe) imports the entry points' modules
once, then for each request line ``{"argv": [...], "cwd": ..., "env": {...}}`` on stdin forks a child that runs the
entry point exactly as the interpreter's ``-m`` switch does (``runpy.run_module(..., run_name="__main__",
alter_sys=True)``) and reports ``{"returncode", "stdout", "stderr"}`` as one JSON line on stdout. An uncaught
exception in the child goes through ``sys.excepthook`` and exit code 1, as at the top level of ``python -m``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import time

ENTRY_POINTS = {"monai.bundle": "monai.bundle", "medsam_peft.cli": "medsam_peft.cli"}


def _child(request: dict, out_path: str, err_path: str) -> None:
    out = os.open(out_path, os.O_WRONLY)
    err = os.open(err_path, os.O_WRONLY)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    for key in request.get("unset_env", []):
        os.environ.pop(key, None)
    module = request["module"]
    sys.argv = [module, *request["argv"]]
    code = 0
    try:
        if module == "monai.bundle":
            # what importing medsam_peft does in a fresh `python -m monai.bundle` process (it is imported already)
            sys.argv[0] = os.path.join(os.path.dirname(__import__("monai.bundle").bundle.__file__), "__main__.py")
            from medsam_peft.utils import user_errors

            user_errors.install()
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        else:
            code = int(__import__("medsam_peft.cli").cli.main(request["argv"]) or 0)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    import monai.bundle  # noqa: F401  (the slow imports, done once)
    import mlflow  # noqa: F401

    import medsam_peft  # noqa: F401
    import medsam_peft.cli  # noqa: F401
    import medsam_peft.data  # noqa: F401
    import medsam_peft.engines  # noqa: F401
    import medsam_peft.transforms  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            open(out_path, "w").close()
            open(err_path, "w").close()
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            deadline = time.time() + float(request.get("timeout", 600))
            status = None
            while time.time() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, 9)
                _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
            reply = {"returncode": returncode, "stdout": open(out_path).read(), "stderr": open(err_path).read()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
