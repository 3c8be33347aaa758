"""Small shared utilities."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medsam_peft.utils.cpu_allocator import CPU_ALLOCATORS, configure_cpu_allocator, keep_freed_cpu_memory


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON through a temporary file and a rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)
    return path


__all__ = ["CPU_ALLOCATORS", "configure_cpu_allocator", "keep_freed_cpu_memory", "write_json_atomic"]
