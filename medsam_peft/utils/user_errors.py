"""One line instead of a traceback chain for errors the user can fix, on the command line.

``python -m monai.bundle run`` reports an exception raised while building a config item as three chained
tracebacks (the component's, "Failed to instantiate ...", the resolver's), with this package's message buried in
the middle; a DataLoader worker re-raises it as a bare ``RuntimeError`` whose text holds the original traceback.
``install`` (done on import of ``medsam_peft`` in a ``monai.bundle`` process) sets a ``sys.excepthook`` that finds
the ``MedsamPeftError`` in the chain and prints ``error: <its message>``, exiting with its ``exit_code`` (1 for
data/output problems, 2 for settings). Anything else, and everything with ``--debug True`` or
``MEDSAM_PEFT_DEBUG=1``, keeps Python's full traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from types import TracebackType

from medsam_peft.errors import MedsamPeftError

# How a DataLoader worker's exception text names the original error: "medsam_peft.x.y.SomeError: message".
_WORKER_ERROR_LINE = re.compile(r"^(medsam_peft(?:\.\w+)+)\.(\w+): (.+)$", re.MULTILINE)


def _chain(error: BaseException):
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _from_worker_text(error: BaseException) -> tuple[str, int] | None:
    text = str(error)
    if "Original Traceback" not in text:
        return None
    matches = _WORKER_ERROR_LINE.findall(text)
    if not matches:
        return None
    module, name, message = matches[-1]  # the outermost of the package's errors in the printed chain
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if isinstance(cls, type) and issubclass(cls, MedsamPeftError):
        return message, cls.exit_code
    return None


def user_error(error: BaseException) -> tuple[str, int] | None:
    """(message, exit code) of the first ``MedsamPeftError`` in ``error``'s cause/context chain, or None."""
    for item in _chain(error):
        if isinstance(item, MedsamPeftError):
            return str(item), item.exit_code
        found = _from_worker_text(item)
        if found is not None:
            return found
    return None


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    if os.environ.get("MEDSAM_PEFT_DEBUG", "").lower() in ("1", "true", "yes"):
        return True
    for index, token in enumerate(argv):
        if token == "--debug" or token.startswith("--debug="):
            value = token.partition("=")[2] or (argv[index + 1] if index + 1 < len(argv) else "True")
            return value.lower() not in ("false", "0", "no")
        if "_mode_" in token and "debug" in token:
            return True
    return False


def _close_progress_bars() -> bool:
    """Close tqdm bars still open (the training and validation bars of the failed run); True if there were any."""
    try:
        from tqdm import tqdm
    except ImportError:
        return False
    bars = list(getattr(tqdm, "_instances", ()))
    for bar in bars:
        try:
            bar.close()
        except Exception:  # a half-torn-down bar must not hide the message
            pass
    return bool(bars)


def _hook(previous):
    def excepthook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        found = None if debug_requested() else user_error(error)
        if found is None:
            previous(kind, error, traceback)
            return
        message, code = found
        fresh_line = "\n" if _close_progress_bars() else ""  # a bar leaves the cursor mid-line
        sys.stderr.write(f"{fresh_line}error: {message}\n")
        sys.stderr.flush()
        if code != 1:  # Python exits with 1 after an uncaught exception; another code needs an explicit exit
            sys.stdout.flush()
            os._exit(code)

    excepthook.medsam_peft = True  # type: ignore[attr-defined]
    return excepthook


_IGNITE_TERMINATION = ("Engine run is terminating due to exception", "Current run is terminating due to exception")


class _EngineTerminationFilter(logging.Filter):
    """Drops ignite's "... is terminating due to exception: ..." lines (one per running engine, with a DataLoader
    worker's whole traceback in them): the hook prints the error once, or Python its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("ignite.") and str(record.msg).startswith(_IGNITE_TERMINATION))


def install() -> None:
    """Install the hook once (idempotent)."""
    if not getattr(sys.excepthook, "medsam_peft", False):
        sys.excepthook = _hook(sys.excepthook)


def quiet_engine_logger(engine) -> None:
    """Under the command-line hook (and not debugging), drop ``engine``'s own "terminating due to exception" log
    lines: the hook reports the error. Called by the handlers that own an engine's console output."""
    if getattr(sys.excepthook, "medsam_peft", False) and not debug_requested():
        logger = getattr(engine, "logger", None)
        if logger is not None and not any(isinstance(f, _EngineTerminationFilter) for f in logger.filters):
            logger.addFilter(_EngineTerminationFilter())


def in_bundle_command() -> bool:
    """True in a ``python -m monai.bundle ...`` process."""
    return bool(sys.argv) and str(sys.argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py")


__all__ = ["debug_requested", "in_bundle_command", "install", "quiet_engine_logger", "user_error"]
