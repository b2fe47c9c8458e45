"""Compressors, client models and data sets are registries: an outside package adds its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from llvq.federated import COMPRESSORS, DATASETS, MODELS, Compressor, Payload, build_compressor
from llvq.federated.payload import check_side
from llvq.modules import FederatedModule
from llvq.registry import Registry


@pytest.fixture
def registered(monkeypatch) -> Iterator[Callable[[Registry, str, object], None]]:
    """Register an entry for one test only (the registries are process-wide)."""

    def add(registry: Registry, name: str, obj: object) -> None:
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_info", dict(registry._info))
        registry.add(name, obj)

    yield add


class SignCompressor(Compressor):
    """A toy outside compressor: one bit per coordinate (the sign) and the mean magnitude."""

    def __init__(self, rate: float = 1.0, gain: float = 1.0) -> None:
        super().__init__(rate)
        self.gain = gain

    def compress(self, h: Tensor, seed: int) -> Payload:
        idx = (h.detach().reshape(-1) >= 0).long()
        side = {"scale": (h.detach().abs().mean() * self.gain).float().reshape(())}
        return Payload(self.name, h.numel(), idx, side, bits=h.numel() + 32, blocks=h.numel())

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        self._check_indices(payload, numel, 2)
        scale = check_side(payload, "scale", ())
        return ((2 * payload.indices - 1).double() * scale).float()


def tiny(in_shape: tuple[int, int, int], num_classes: int, width: int = 4) -> nn.Module:
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))


def blobs(data_dir: str, download: bool, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(120) % 3
    x = torch.rand(120, 1, 4, 4, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.3
    return x[:90], y[:90], x[90:], y[90:]


def test_an_outside_compressor_model_and_data_set_run_through_the_module(registered) -> None:
    registered(COMPRESSORS, "sign", SignCompressor)
    registered(MODELS, "tiny", tiny)
    registered(DATASETS, "blobs", blobs)
    comp = build_compressor("sign", rate=1.0, gain=1.0)
    h = torch.randn(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(comp.decompress(comp.compress(h, 0), 0).sign(), h.sign())

    # the module passes only the shared settings the compressor takes (here: rate)
    module = FederatedModule(dataset="blobs", model="tiny", compressor="sign", num_clients=3,
                             rate=1.0, local_steps=2, plot_clients=0,
                             compressor_options={"gain": 0.5}, model_options={"width": 3})
    assert module.net[1].out_features == 3 and module.compressors[0].gain == 0.5
    start = [p.detach().clone() for p in module.net.parameters()]
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)
    assert trainer.global_step == 2  # one round per step, counted without an optimizer
    assert any(not torch.equal(a, b) for a, b in zip(start, module.net.parameters(), strict=True))
    numel = sum(p.numel() for p in module.net.parameters())
    assert float(trainer.callback_metrics["bits/total"]) == 3 * (numel + 32)


def test_bad_options_of_plugins_are_errors_naming_them(registered) -> None:
    registered(COMPRESSORS, "sign", SignCompressor)
    registered(MODELS, "tiny", tiny)
    registered(DATASETS, "blobs", blobs)
    common = {"dataset": "blobs", "model": "tiny", "compressor": "sign", "num_clients": 2}
    with pytest.raises(ValueError, match="'gian'.*compressor 'sign'"):
        FederatedModule(**common, compressor_options={"gian": 2.0})
    with pytest.raises(ValueError, match="'hiden'.*federated model 'tiny'.*model.model"):
        FederatedModule(**common, model_options={"hiden": 2})
    with pytest.raises(ValueError, match="unknown federated data set 'nope'.*blobs.*model.dataset"):
        FederatedModule(**{**common, "dataset": "nope"})


def test_a_compressor_must_subclass_the_base() -> None:
    with pytest.raises(TypeError, match="Compressor"):
        COMPRESSORS.add("not_a_compressor", object)
