"""Our metrics in a sharded evaluation: 2 gloo processes, each scoring its share, report the single-process value."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medsam_peft.engines import BalancedErrorRate, SemanticSegmentationMetric, SodMetric


def _data():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 1, 24, 24, generator=g)  # 5 images: shards of 3 and 2, as the validation sampler cuts
    labels = (torch.rand(5, 1, 24, 24, generator=g) > 0.6).float()
    classes = torch.randint(0, 3, (5, 24, 24), generator=g)
    truth = torch.randint(0, 3, (5, 24, 24), generator=g)
    return probs, labels, classes, truth


def _metrics():
    return {**{f"sod_{kind}": SodMetric(kind) for kind in ("sm", "em", "wfm", "mae")},
            "ber_image": BalancedErrorRate(per_image=True), "ber_dataset": BalancedErrorRate(per_image=False),
            "miou": SemanticSegmentationMetric(3, "miou")}


def _score(indices) -> dict[str, float]:
    probs, labels, classes, truth = _data()
    scores = {}
    for name, metric in _metrics().items():
        metric.reset()
        for i in indices:
            if name == "miou":
                metric.update((classes[i][None], truth[i][None]))
            else:
                metric.update((probs[i][None], labels[i][None]))
        scores[name] = metric.compute()
    return scores


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        queue.put((rank, _score(range(rank, 5, 2))))  # DistributedSampler(even_divisible=False, shuffle=False)
    finally:
        dist.destroy_process_group()


def test_gathered_metrics_equal_one_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(rank, port, queue)) for rank in (0, 1)]
    for w in workers:
        w.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    single = _score(range(5))
    local = _score(range(0, 5, 2))  # what rank 0 alone would report: the check can fail
    for name, value in single.items():
        assert results[0][name] == pytest.approx(value, abs=1e-9), name
        assert results[1][name] == pytest.approx(value, abs=1e-9), name
    assert any(not np.isclose(local[n], single[n]) for n in single)
