"""SameImageBatchSampler (bundle setting group_by_image): every sample once per epoch, samples of one image in the
same batches, the order replayed from torch's generator, and ranks that share out one sequence."""

from __future__ import annotations

import torch

from medsam_peft.engines import SameImageBatchSampler, same_image_batch_sampler

# 5 images holding 3, 1, 4, 2, 1 objects (as the Colin27 demo's (slice, structure) samples)
DATA = [{"image": f"img{i}.png", "label": f"img{i}_obj{k}.png"} for i, n in enumerate((3, 1, 4, 2, 1)) for k in range(n)]


def _image(index: int) -> str:
    return DATA[index]["image"]


def test_every_sample_once_an_epoch_with_the_samples_of_one_image_side_by_side() -> None:
    sampler = SameImageBatchSampler(DATA, batch_size=2)
    torch.manual_seed(3)
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 6
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(DATA)))
        # the sequence visits each image's samples in one run: the image changes exactly (images - 1) times
        changes = sum(_image(a) != _image(b) for a, b in zip(flat, flat[1:]))
        assert changes == 4
        # so the pairs that can share an image do: 3 + 1 + 4 + 2 + 1 objects give at least 3 same-image pairs
        assert sum(len(b) == 2 and _image(b[0]) == _image(b[1]) for b in batches) >= 3
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_the_order_is_replayed_from_torchs_generator_as_a_resumed_run_restores_it() -> None:
    sampler = SameImageBatchSampler(DATA, batch_size=3)
    torch.manual_seed(11)
    list(sampler)
    state = torch.get_rng_state()
    second = list(sampler)
    torch.set_rng_state(state)  # what RngState does on resume, at the epoch boundary
    assert list(SameImageBatchSampler(DATA, batch_size=3)) == second


def test_two_ranks_share_out_one_sequence_and_run_the_same_number_of_steps() -> None:
    for batch_size in (2, 4):
        torch.manual_seed(0)
        ranks = [SameImageBatchSampler(DATA, batch_size, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
        torch.manual_seed(1)  # each rank's own generator differs under torchrun; the order must not depend on it
        for epoch in range(2):
            zero = list(ranks[0])
            torch.manual_seed(100 + epoch)
            one = list(ranks[1])
            assert len(zero) == len(one) == len(ranks[0])
            covered = sorted({i for batch in zero + one for i in batch})
            assert covered == list(range(len(DATA)))  # padding repeats batches, never drops a sample
            batches = -(-len(DATA) // batch_size)  # 6 for batch 2 (3 a rank), 3 for batch 4 (padded to 4)
            interleaved = [b for pair in zip(zero, one) for b in pair]
            assert interleaved[batches:] == interleaved[: len(interleaved) - batches]  # only the padding repeats
            assert sorted(i for b in interleaved[:batches] for i in b) == list(range(len(DATA)))


def test_the_setting_switches_it() -> None:
    assert same_image_batch_sampler(DATA, 2, False) is None
    assert isinstance(same_image_batch_sampler(DATA, 2, True, seed=1), SameImageBatchSampler)
