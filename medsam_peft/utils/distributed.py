"""The process group of a ``torchrun`` launch, as the training workflow uses it.

``configs/multi_gpu_train.json`` sets ``distributed: true`` and a per-process ``device``; ``init_distributed`` then
joins the group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs). Everything else asks
``world_size()`` / ``is_main_process()``, which answer 1 / True in a plain single-process run, so the workflow is
one code path for both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from medsam_peft.errors import ConfigError

T = TypeVar("T")
_LAUNCH = "torchrun --nproc_per_node N -m monai.bundle run --config_file \"['bundles/<bundle>.json','configs/multi_gpu_train.json']\""


def launched_processes() -> int:
    """How many processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True in the one process that writes checkpoints, reports, overlays and MLflow (rank 0)."""
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` where there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def init_distributed(enabled: bool, device: str | torch.device) -> int:
    """Join torchrun's process group when ``enabled`` (NCCL for CUDA devices, gloo otherwise); return the world size.

    Raises:
        ConfigError: ``enabled`` without torchrun's environment, or a torchrun launch of several processes without
            ``configs/multi_gpu_train.json`` (each process would train alone and write the same files).
    """
    processes = launched_processes()
    if not enabled:
        if processes > 1:
            raise ConfigError(f"this run was started by torchrun with {processes} processes but without "
                              f"configs/multi_gpu_train.json: each would train alone and write the same files; run "
                              f"{_LAUNCH}")
        return 1
    if is_distributed():
        return world_size()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise ConfigError(f"configs/multi_gpu_train.json needs the environment torchrun sets (RANK, WORLD_SIZE, "
                          f"MASTER_ADDR); start the run with {_LAUNCH}")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return world_size()


def close_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_process_first(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function`` on rank 0, then on the other ranks (e.g. preparing a dataset that they then find ready)."""
    if is_main_process():
        result = function(*args, **kwargs)
        barrier()
        return result
    barrier()
    return function(*args, **kwargs)


def seed_this_rank(seed: int) -> None:
    """Give each rank of a distributed run its own random streams (augmentation, gate noise): ``seed + rank``.

    Called after the model is built, so every rank builds the same initial weights; a single process keeps the
    stream ``set_determinism(seed)`` started.
    """
    if is_distributed():
        from monai.utils import set_determinism

        set_determinism(seed=int(seed) + rank())


def global_batch_sum(local: torch.Tensor) -> torch.Tensor:
    """The sum of a per-rank batch statistic over all ranks, differentiable in this rank's share.

    Value: the global sum. Gradient with respect to ``local``: ``world_size`` (not 1), which DDP's averaging of
    parameter gradients turns into exactly the gradient a single process would get on the global batch. The
    collective runs in forward (ranks run the same layers in the same order), never inside backward, where it could
    interleave with DDP's own gradient reductions. Without a process group: ``local`` itself.
    """
    if not is_distributed():
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return total + world_size() * (local - local.detach())


def gather_rows(rows: Any) -> Any:
    """Concatenate every rank's rows (first dimension may differ per rank) as a float64 NumPy array, in rank order."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    if not is_distributed():
        return rows
    from monai.utils import evenly_divisible_all_gather

    # gloo and NCCL reduce tensors on the process's own device
    device = local_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = evenly_divisible_all_gather(torch.as_tensor(rows, device=device), concat=True)
    return gathered.cpu().numpy()
