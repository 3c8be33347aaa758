"""Training-step and inference timing of tuned SAM models, with ratios against a baseline measured in the same run.

Each configuration (backbone, tuner, input size, dtype, batch size, mode) runs in its own subprocess so that its
peak memory (RSS on CPU, ``max_memory_allocated`` on GPU) is its own. A training step is forward + loss + backward +
optimiser step on random images and box prompts; inference is a no-grad forward. Random weights: timing does not
depend on them.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

BASELINE_TUNER = "lora"


@dataclass(frozen=True)
class BenchCase:
    backbone: str
    tuner: str
    size: int
    dtype: str = "auto"
    batch: int = 1
    mode: str = "train"  # "train", "infer", "infer_merged" or "epochs"
    device: str = "cpu"
    warmup: int = 1
    repeats: int = 3
    # Fast paths, each measurable on its own (see ``build_tuned_sam``).
    attention: str = "auto"
    checkpointing: bool = False
    trunk_cache: str = "off"
    images: int = 4  # distinct images per epoch in "epochs" mode
    cpu_allocator: str = "reuse"  # as the training workflow's default (see utils/cpu_allocator.py)
    conv_experts: str = "fast"  # Conv-LoRA experts: "fast" (matrix products on the CPU) or "plain"
    compile: bool = False  # torch.compile the model (compiled during the warm-up steps)

    @property
    def label(self) -> str:
        """Tuner name plus the fast paths switched on, e.g. ``lora+sdpa+ckpt``."""
        tags = [self.tuner]
        tags += [self.attention] if self.attention != "auto" else []
        tags += ["ckpt"] if self.checkpointing else []
        tags += [f"cache:{self.trunk_cache}"] if self.trunk_cache != "off" else []
        tags += [f"malloc:{self.cpu_allocator}"] if self.cpu_allocator != "reuse" else []
        tags += [f"experts:{self.conv_experts}"] if self.conv_experts != "fast" else []
        tags += ["compile"] if self.compile else []
        return "+".join(tags)


def _measure(case: BenchCase) -> dict[str, Any]:
    import torch

    from medsam_peft.engines import AutocastInferer
    from medsam_peft.tuners import build_tuned_sam
    from medsam_peft.tuners.conv_lora import set_expert_fast_path
    from medsam_peft.utils.cpu_allocator import configure_cpu_allocator

    torch.manual_seed(0)
    device = torch.device(case.device)
    configure_cpu_allocator(case.cpu_allocator, device)
    tuner = "decoder_only" if case.tuner == "base" else case.tuner
    model = build_tuned_sam(case.backbone, None, tuner, image_size=case.size, device=device,
                            trunk_cache=case.trunk_cache, activation_checkpointing=case.checkpointing,
                            attention=case.attention)
    set_expert_fast_path(model, case.conv_experts == "fast")
    if case.tuner == "base":  # SAM itself: nothing trainable, no adapter
        for p in model.parameters():
            p.requires_grad_(False)
    if case.mode == "infer_merged":
        model.merge_adapter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if case.compile:
        model = torch.compile(model)  # same parameters; the first (warm-up) call compiles
    training = case.mode in ("train", "epochs")
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable and training else None
    inferer = AutocastInferer(case.dtype)
    n_images = case.images if case.mode == "epochs" else 1
    dataset = [torch.rand(case.batch, 3, case.size, case.size, device=device) for _ in range(n_images)]
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.7]], device=device).repeat(case.batch, 1) * case.size
    target = (torch.rand(case.batch, 1, case.size, case.size, device=device) > 0.5).float()

    def train_step(images: torch.Tensor) -> None:
        logits = inferer(images, model, boxes=boxes)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + model.aux_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    result = {**asdict(case), "label": case.label, "trainable": sum(p.numel() for p in trainable),
              "dtype": str(inferer.dtype_for(device)).replace("torch.", "")}  # what "auto" ran as
    if case.mode == "epochs":
        # Epoch 1 over ``case.images`` distinct images, then ``case.repeats`` more epochs; per-image step times.
        model.train()

        def epoch() -> float:
            start = time.perf_counter()
            for images in dataset:
                train_step(images)
            synchronize()
            return (time.perf_counter() - start) / len(dataset)

        first = epoch()
        later = [epoch() for _ in range(case.repeats)]
        median = statistics.median(later)
        cache = model.model.trunk_cache
        return {**result, "median_s": median, "first_epoch_s": first, "images_per_s": case.batch / median,
                "peak_gib": _peak_gib(device), "times_s": later, "cache": None if cache is None else cache.stats()}

    images = dataset[0]

    def step() -> None:
        if training:
            model.train()
            train_step(images)
        else:
            model.eval()
            with torch.no_grad():
                inferer(images, model, boxes=boxes)
        synchronize()

    for _ in range(case.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(case.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {**result, "median_s": median, "images_per_s": case.batch / median, "peak_gib": _peak_gib(device),
            "times_s": times}


def _peak_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def run_case(case: BenchCase) -> dict[str, Any]:
    """Measure one case in a fresh interpreter (own peak memory, no allocator state carried over)."""
    code = ("import json, sys; from medsam_peft.benchmark import BenchCase, _measure; "
            "print('RESULT' + json.dumps(_measure(BenchCase(**json.loads(sys.argv[1])))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(case))], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"benchmark case {case} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case measured in several rounds (``run_case`` each time, cases interleaved so that no case always runs
    first or last): the median over every timed step of every round, the highest peak memory."""
    merged = dict(rounds[0])
    merged["times_s"] = [t for r in rounds for t in r["times_s"]]
    merged["median_s"] = statistics.median(merged["times_s"])
    merged["images_per_s"] = merged["batch"] / merged["median_s"]
    merged["peak_gib"] = max(r["peak_gib"] for r in rounds)
    if "first_epoch_s" in merged:
        merged["first_epoch_s"] = statistics.median(r["first_epoch_s"] for r in rounds)
    merged["rounds"] = len(rounds)
    return merged


def add_ratios(results: list[dict[str, Any]], baseline: str = BASELINE_TUNER) -> list[dict[str, Any]]:
    """``ratio`` = median time / the baseline tuner's at the same backbone, size, dtype, batch and mode (inference
    modes compare with SAM itself, tuner ``base``, when it was measured); ``mem_ratio`` likewise for peak memory.

    A case with fast paths switched on (label ``lora+sdpa``…) compares with the same tuner without them, so each fast
    path is measured on its own; an "epochs" case compares its later epochs with its own first epoch.
    """
    def key(r: dict[str, Any], mode: str) -> tuple:
        return (r["backbone"], r["size"], r["dtype"], r["batch"], mode, r["device"])

    by_key = {}
    for r in results:
        by_key[key(r, r["mode"]) + (r.get("label", r["tuner"]),)] = r
    for r in results:
        if r["mode"] == "epochs":
            r["baseline"], r["ratio"], r["mem_ratio"] = "epoch 1", r["median_s"] / r["first_epoch_s"], None
            continue
        ref = None
        if r.get("label", r["tuner"]) != r["tuner"]:
            ref = by_key.get(key(r, r["mode"]) + (r["tuner"],))
        elif r["mode"] != "train":
            ref = by_key.get(key(r, "infer") + ("base",))
        ref = ref or by_key.get(key(r, r["mode"]) + (baseline,))
        r["baseline"] = None if ref is None else f"{ref.get('label', ref['tuner'])}/{ref['mode']}"
        r["ratio"] = None if ref is None else r["median_s"] / ref["median_s"]
        r["mem_ratio"] = None if ref is None else r["peak_gib"] / ref["peak_gib"]
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    header = ("backbone", "tuner", "mode", "size", "dtype", "batch", "median s", "img/s", "peak GiB", "trainable",
              "× time", "× mem", "vs")
    rows = [header]
    for r in results:
        rows.append((r["backbone"], r.get("label", r["tuner"]), r["mode"], str(r["size"]), r["dtype"], str(r["batch"]),
                     f"{r['median_s']:.3f}", f"{r['images_per_s']:.2f}", f"{r['peak_gib']:.2f}",
                     f"{r['trainable']:,}", "—" if r["ratio"] is None else f"{r['ratio']:.2f}",
                     "—" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}", r["baseline"] or "—"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
