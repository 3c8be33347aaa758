"""Whether a tracer is recording the forward pass: code with data-dependent Python control flow takes a
shape-static path then, so that the recorded graph holds for every input."""

from __future__ import annotations

import torch


def graph_capture() -> bool:
    """True while ``torch.jit.trace``, an ONNX export or ``torch.export`` / ``torch.compile`` records the forward."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def exporting() -> bool:
    """True while a graph is recorded for export (``torch.jit.trace``, ONNX, ``torch.export``), not for
    ``torch.compile``: training state a module keeps between calls (a balance loss) has no place in an export."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


__all__ = ["exporting", "graph_capture"]
