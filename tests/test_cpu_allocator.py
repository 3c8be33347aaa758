"""The "reuse" CPU allocator really keeps freed memory: a repeated large temporary stops page-faulting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsam_peft.utils.cpu_allocator import configure_cpu_allocator

# Minor page faults per step of a 64 MiB temporary, before and after ``configure_cpu_allocator(argv[1])``; in a
# subprocess because the switch is for the whole process and cannot be undone.
FAULTS_SCRIPT = """
import resource, sys, torch
from medsam_peft.utils.cpu_allocator import configure_cpu_allocator

def faults_per_step():
    def step():
        return torch.ones(16 * 2**20).sum()  # 64 MiB written, then freed
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4

system = faults_per_step()
applied = configure_cpu_allocator(sys.argv[1], sys.argv[2])
print(system, faults_per_step(), applied)
"""


def _faults(mode: str, device: str = "cpu") -> tuple[float, float, bool]:
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode, device], capture_output=True, text=True,
                          check=True)
    system, after, applied = done.stdout.split()
    return float(system), float(after), applied == "True"


def test_reuse_stops_the_page_faults_of_a_repeated_large_temporary() -> None:
    system, reuse, applied = _faults("reuse")
    pages = 64 * 2**20 // 4096
    assert applied
    assert system > pages / 2  # glibc's default: a fresh mmap, faulted page by page, every time
    assert reuse < pages / 100


@pytest.mark.parametrize("mode, device", [("system", "cpu"), ("reuse", "cuda")])
def test_system_allocator_or_a_gpu_run_leave_malloc_alone(mode: str, device: str) -> None:
    system, after, applied = _faults(mode, device)
    assert not applied
    assert after > 64 * 2**20 // 4096 / 2


def test_unknown_allocator_names_the_key_and_the_choices() -> None:
    with pytest.raises(ValueError, match="cpu_allocator must be one of \\('reuse', 'system'\\), got 'fast'"):
        configure_cpu_allocator("fast")


# Left at glibc's defaults, configs/evaluate.json ran 0.88 images/s against 2.16 with freed memory kept (LiteMedSAM +
# Conv-LoRA, batch 4, benchmarks/eval_throughput.py): every workflow that runs the model sets the allocator.
@pytest.mark.parametrize("config", ["train.json", "evaluate.json", "inference.json", "evaluate_volumes.json",
                                    "exported inference.json", "exported evaluate.json"])
def test_every_workflow_that_runs_the_model_sets_the_cpu_allocator(config) -> None:
    import json
    from pathlib import Path

    from medsam_peft.export import evaluate_config, inference_config

    run = {"backbone": "lite_medsam", "prompt": "box", "image_size": 256}
    if config.startswith("exported"):
        content = (inference_config if "inference" in config else evaluate_config)(run, 256)
        assert content["cpu_allocator"] == "reuse"
    else:
        content = json.loads((Path(__file__).resolve().parents[1] / "configs" / config).read_text())
    assert "$medsam_peft.utils.configure_cpu_allocator(@cpu_allocator, @device)" in content["initialize"]
