"""Resumable, checksum-verified downloads into a cache directory (weights and datasets)."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from medsam_peft.errors import MedsamPeftError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(MedsamPeftError, RuntimeError):
    """A download failed or produced a file that does not match its published checksum."""


def default_cache_dir() -> Path:
    """``$MEDSAM_PEFT_CACHE`` if set, else ``~/.cache/medsam_peft``."""
    return Path(os.environ.get("MEDSAM_PEFT_CACHE", Path.home() / ".cache" / "medsam_peft")).expanduser()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(
    path: str | os.PathLike, sha256: str | None = None, md5: str | None = None, size: int | None = None
) -> None:
    """Raise ``DownloadError`` naming ``path`` when its size or digest differs from the expected one."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise DownloadError(f"{path}: size {path.stat().st_size} bytes, expected {size}; delete it and download again")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                raise DownloadError(
                    f"{path}: {algorithm} {actual} does not match the published {expected}; "
                    "the file is corrupt or not the expected release - delete it and download again"
                )


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; an existing verified file is reused.

    A partial download is kept as ``dest + '.part'`` and continued with an HTTP Range request on the next call.
    The final file appears atomically (rename) only after its checksum matched, so a crash never leaves a
    half-written file under the final name.
    """
    dest = Path(dest)
    if dest.exists():
        verify_file(dest, sha256, md5, size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset > 0 and response.status == 206
            if offset and not resumed:
                logger.info("server ignored the range request for %s; restarting the download", url)
            with open(part, "ab" if resumed else "wb") as out:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"could not download {url} to {dest}: {err}. Check the network, or download the file yourself "
            f"and pass its path explicitly (the partial file {part} is kept and resumed next time)"
        ) from err
    try:
        verify_file(part, sha256, md5, size)
    except DownloadError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloaded {url} to {dest}, but {err}") from None
    os.replace(part, dest)
    return dest
