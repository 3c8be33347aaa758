"""Tracking must never kill a run: an unreachable MLflow server gives one warning and training continues."""

from __future__ import annotations

import logging
import socket

import torch
from monai.engines import SupervisedTrainer

from medsam_peft.engines import SafeMLFlowHandler


def test_unreachable_tracking_server_warns_once_and_training_finishes(monkeypatch, caplog) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:  # a free loopback port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    net = torch.nn.Linear(3, 1)
    data = [{"image": torch.randn(4, 3), "label": torch.randn(4, 1)} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
        train_handlers=[SafeMLFlowHandler(tracking_uri=f"http://127.0.0.1:{port}", experiment_name="x")],
    )
    weight_before = net.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.iteration == 6
    assert not torch.equal(net.weight, weight_before)
    warnings = [r for r in caplog.records if "MLflow tracking" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()
