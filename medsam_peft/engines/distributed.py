"""DistributedDataParallel for a tuned SAM and the samplers of a sharded epoch (``configs/multi_gpu_train.json``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import DistributedSampler
from torch.nn.parallel import DistributedDataParallel

from medsam_peft.tuners.base import TunedSam
from medsam_peft.utils.distributed import is_distributed, world_size
from medsam_peft.utils.distributed import rank as this_rank


def needs_unused_parameter_search(network: TunedSam) -> bool:
    """Whether a step can leave trainable parameters without a gradient, which DDP must then look for.

    Conv-LoRA routes each window to one expert, so an expert no window chose gets no gradient in that step; a
    trainable IoU head (SAM-PARSER's whole-decoder setting, full fine-tuning) and the prompt encoder's point and
    mask-input weights under box prompts are never used by the loss. Every other tuner reaches all its parameters,
    and DDP then skips the per-step graph traversal.
    """
    if any(layer.routes_inputs for _, layer in network.tuner_layers()):
        return True
    return any(p.requires_grad and name.startswith(("mask_decoder.iou_prediction_head.", "prompt_encoder."))
               for name, p in network.model.named_parameters())


class AuxLossInGraph(nn.Module):
    """What DDP wraps: the tuned model, whose output carries its auxiliary loss at weight zero.

    Conv-LoRA's gate weights get their gradient only through the load-balancing loss, which ``AuxLossHandler``
    adds after forward. DDP's search for unused parameters starts from forward's outputs: without this tie it would
    mark the gates unused and then see their gradient arrive ("marked ready twice"). The zero weight adds nothing
    to any gradient; the loss still gets the auxiliary term once, from the handler.
    """

    def __init__(self, network: TunedSam) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.network(*args, **kwargs)
        aux = self.network.aux_loss()
        if aux is None:
            return out
        if isinstance(out, dict):
            return {**out, "masks": out["masks"] + 0.0 * aux}
        return out + 0.0 * aux


def ddp_wrap(network: TunedSam, device: str | torch.device) -> torch.nn.Module:
    """``network`` in DistributedDataParallel when a process group is up, else ``network`` itself.

    Only the trainable tensors take part: the frozen trunk (the same checkpoint on every rank) is neither broadcast
    at start nor given gradient hooks, so a ViT-H run synchronises a few MB per step, not 2.5 GB.
    """
    if not is_distributed():
        return network
    step = AuxLossInGraph(network)
    frozen = [name for name, p in step.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in step.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, frozen)
    device = torch.device(device)
    return DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=needs_unused_parameter_search(network))


def distributed_sampler(dataset: Any, shuffle: bool, even_divisible: bool = True) -> DistributedSampler | None:
    """This rank's shard of ``dataset`` (MONAI's sampler; the engines call ``set_epoch`` each epoch), or None.

    Training shards are even (``even_divisible``: every rank runs the same number of steps, a few samples repeat);
    validation shards are not, so every sample is scored exactly once and the gathered metric equals a
    single-process evaluation.
    """
    if not is_distributed():
        return None
    return DistributedSampler(dataset, even_divisible=even_divisible, shuffle=shuffle)


class SameImageBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Training batches that hold the samples of one image together (SAM trains several masks per image
    embedding): each epoch the images are shuffled, each image's samples shuffled and laid one after the other, and
    the sequence cut into batches of ``batch_size``. The simulated annotator then runs the encoder once per distinct
    image of a batch and can click on the other samples' objects as hard negatives.

    In one process the order is drawn from torch's global generator, as ``RandomSampler`` draws it, so a resumed run
    (whose ``RngState`` restores that generator) replays the same batches. Under torchrun every rank must cut the
    same sequence (each rank's generator is seeded apart): it is drawn from ``seed`` + the number of epochs this
    sampler has begun, each rank takes every world-th batch, and the batch list is padded by repeating its first
    batches so that every rank runs the same steps (a resumed distributed run starts that count again).
    """

    def __init__(self, data: Sequence[dict[str, Any]], batch_size: int, key: str = "image", seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.epoch = int(seed), 0
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = this_rank() if rank is None else int(rank)
        groups: dict[str, list[int]] = {}
        for index, entry in enumerate(data):
            groups.setdefault(str(entry[key]), []).append(index)
        self.groups = list(groups.values())
        self.batch_size = int(batch_size)
        self.size = len(data)

    def _all_batches(self) -> list[list[int]]:
        if self.num_replicas > 1:
            seed, self.epoch = self.seed + self.epoch, self.epoch + 1
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        for g in torch.randperm(len(self.groups), generator=generator).tolist():
            group = self.groups[g]
            order.extend(group[i] for i in torch.randperm(len(group), generator=generator).tolist())
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        world = self.num_replicas
        per_rank = math.ceil(len(batches) / world)
        batches = (batches * world)[: per_rank * world] if batches else batches
        return iter(batches[self.rank :: world])

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.size / self.batch_size) / self.num_replicas)


def same_image_batch_sampler(data: Sequence[dict[str, Any]], batch_size: int, enabled: bool,
                             seed: int = 0) -> SameImageBatchSampler | None:
    """``SameImageBatchSampler`` over the training list when ``enabled`` (the bundle setting ``group_by_image``),
    else None (the DataLoader's own shuffling)."""
    return SameImageBatchSampler(data, batch_size, seed=seed) if enabled else None
