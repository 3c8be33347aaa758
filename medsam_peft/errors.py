"""Errors a user can act on. The lowest layer of the package: it imports nothing from it.

Every error the package raises for a bad file, a bad setting or a failing resource derives from ``MedsamPeftError``
and says in one line which file or key is wrong and what to do. The command-line entry points
(``python -m monai.bundle run``, ``medsam-peft``) print that line without a traceback and exit with
``exit_code`` (see ``medsam_peft.utils.user_errors``); library callers catch them like any exception.
"""

from __future__ import annotations


class MedsamPeftError(Exception):
    """An error the user can fix; ``str(err)`` is the whole message (file or key, what is wrong, what to do)."""

    exit_code = 1


class ConfigError(MedsamPeftError, ValueError):
    """A bundle setting, override or command-line argument is wrong (a usage error: exit code 2)."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """An unknown backbone, tuner or dataset name (also a ``KeyError``, for callers that look names up)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingFileError(MedsamPeftError, FileNotFoundError):
    """A file or folder the user named (checkpoint, datalist, adapter) does not exist."""

    def __str__(self) -> str:  # FileNotFoundError(msg) prints as msg already; keep it so with errno-less args
        return str(self.args[0]) if self.args else ""


class DataError(MedsamPeftError, ValueError):
    """A datalist, image, mask or volume cannot be used as given."""


class OutputDirError(MedsamPeftError, RuntimeError):
    """The run's output folder cannot be used: held by another run, not writable, or its disk is full."""


__all__ = ["ConfigError", "DataError", "MedsamPeftError", "MissingFileError", "OutputDirError", "UnknownNameError"]
