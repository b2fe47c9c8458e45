"""The torchvision paths of the federated simulation (MNIST, CIFAR-10) on files written here."""

from __future__ import annotations

import pytest
import torch

from llvq.federated.data import load_federated_data
from llvq.runner import run
from tests.data.test_torchvision_data import write_cifar10, write_mnist


def test_mnist_reads_idx_files(tmp_path) -> None:
    write_mnist(tmp_path, "MNIST", n_train=40, n_test=12)
    x, y, x_test, _ = load_federated_data("mnist", str(tmp_path))
    assert x.shape == (40, 1, 28, 28) and x_test.shape == (12, 1, 28, 28)
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == [i % 10 for i in range(40)] and y.dtype == torch.int64


def test_cifar10_reads_python_batches(tmp_path, monkeypatch) -> None:
    write_cifar10(tmp_path, monkeypatch, per_batch=6)
    x, _, x_test, y_test = load_federated_data("cifar10", str(tmp_path))
    assert x.shape == (30, 3, 32, 32) and x_test.shape == (6, 3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y_test.tolist() == [i % 10 for i in range(6)]


def test_missing_data_names_the_settings(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.download"):
        load_federated_data("mnist", str(tmp_path))


@pytest.mark.parametrize("dataset, model", [("mnist", "cnn"), ("cifar10", "mlp")])
def test_a_federated_round_on_torchvision_data(tmp_path, monkeypatch, compose_cfg, dataset: str,
                                               model: str) -> None:
    if dataset == "mnist":
        write_mnist(tmp_path, "MNIST", n_train=200, n_test=20)
    else:
        write_cifar10(tmp_path, monkeypatch, per_batch=40)
    cfg = compose_cfg("experiment=olala_digits", "++trainer.fast_dev_run=true", f"model.dataset={dataset}",
                      f"model.model={model}", f"model.data_dir={tmp_path}", "model.olala_steps=10",
                      "model.num_clients=4", "callbacks=none", "logger=csv")
    metrics = run(cfg)
    assert metrics["clients/answered"] == 4.0
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["bits/total"] > 0
