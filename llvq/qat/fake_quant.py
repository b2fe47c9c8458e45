"""Fake quantization of the weights and inputs of every ``nn.Linear`` / ``nn.Conv2d`` of a model.

Notation: ``C`` the layer's input width (``in_features`` / ``in_channels``), the axis every
quantizer sees as its last one (``dim = C``); ``H`` the normalized ``C × C`` Hadamard matrix.

:func:`attach_fake_quant` gives each matching layer

- a weight parametrization (:class:`FakeQuantWeight`, ``torch.nn.utils.parametrize``): the
  weight is read through the quantizer wherever it is read — also by code that takes
  ``layer.weight`` directly, such as ``nn.MultiheadAttention``'s ``out_proj``;
- an input quantizer applied by a forward pre-hook (layers that are called; the input of
  ``out_proj`` inside ``nn.MultiheadAttention`` is not, as that module never calls it).

Both are any registered quantizer (``{"name": "statqat_int", "bits": 4, ...}``), straight
through (``z + (q - z).detach()``), so training proceeds on full-precision weights. With
``hadamard=True`` both operands are rotated first, as in "Training Transformers with 4-bit
Integers" (Xi et al. 2023): ``y = Q(x H) Q(W H)ᵀ`` (``H`` orthogonal, so without quantization
nothing changes); the rotation spreads outliers over the ``C`` coordinates before the per-tensor
scale is chosen. ``C`` must then be a power of two.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from llvq.quantizers import Quantizer, build

__all__ = ["FakeQuantInput", "FakeQuantWeight", "attach_fake_quant", "calibrate",
           "detach_fake_quant", "fake_quant_layers", "hadamard", "quantization_metrics"]

LAYERS = (nn.Linear, nn.Conv2d)


def hadamard(n: int) -> Tensor:
    """The normalized Sylvester Hadamard matrix ``(n, n)`` (orthogonal; ``n`` a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard=true needs layer input widths that are powers of two, got {n}; "
                         f"set hadamard=false or exclude the layer")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / h.shape[0] ** 0.5


def _build(spec: Mapping[str, Any] | Quantizer, dim: int) -> Quantizer:
    if isinstance(spec, Quantizer):
        return spec
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"a fake-quant quantizer needs a registry `name`, got {spec}")
    opts = {k: v for k, v in spec.items() if k not in ("name", "dim", "_target_")}
    return build(str(spec["name"]), dim=dim, **opts)


class _Rotated(nn.Module):
    """Quantize ``x`` with its last axis ``C`` (optionally in the Hadamard domain)."""

    def __init__(self, quantizer: Quantizer, rotation: Tensor | None) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.register_buffer("rotation", rotation, persistent=False)
        self.metrics: dict[str, float] = {}

    def _apply_q(self, x: Tensor) -> Tensor:  # x: (..., C)
        h = self.rotation
        y = x @ h if h is not None else x
        out = self.quantizer(y)
        self.metrics = {k: float(v) for k, v in out.metrics.items()}
        return out.z_q @ h.T if h is not None else out.z_q


class FakeQuantWeight(_Rotated):
    """Parametrization: ``W -> Q(W)`` with the input-channel axis last (``(O, C, kh, kw)`` too)."""

    def forward(self, w: Tensor) -> Tensor:
        return self._apply_q(w.movedim(1, -1)).movedim(-1, 1)


class FakeQuantInput(_Rotated):
    """Input quantizer of one layer: ``x -> Q(x)`` on the channel axis (last for Linear, 1 for
    Conv2d)."""

    def __init__(self, quantizer: Quantizer, rotation: Tensor | None, channel_axis: int) -> None:
        super().__init__(quantizer, rotation)
        self.channel_axis = channel_axis

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_axis == -1:
            return self._apply_q(x)
        return self._apply_q(x.movedim(self.channel_axis, -1)).movedim(-1, self.channel_axis)


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (module.fake_quant_input(args[0]), *args[1:])


def fake_quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that carry fake quantization, by name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, LAYERS) and (parametrize.is_parametrized(m, "weight")
                                          or hasattr(m, "fake_quant_input"))}


def attach_fake_quant(model: nn.Module, weight: Mapping[str, Any] | None = None,
                      activation: Mapping[str, Any] | None = None, hadamard_transform: bool = False,
                      include: Iterable[str] = ("*",), exclude: Iterable[str] = ()) -> list[str]:
    """Fake-quantize the weights and/or inputs of every matching ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        model: any module (a LightningModule included); changed in place.
        weight: the weight quantizer spec ``{name, **options}`` (``None``: weights stay fp).
        activation: the input quantizer spec (``None``: inputs stay fp).
        hadamard_transform: rotate both operands by ``H`` first (input widths: powers of two).
        include, exclude: shell patterns on the layer names (``named_modules``).

    Returns:
        The names of the layers changed.

    Raises:
        ValueError: nothing to quantize, no layer matches, a layer already has fake
            quantization, a grouped convolution, or a width that is not a power of two with
            ``hadamard_transform``.
    """
    if weight is None and activation is None:
        raise ValueError("fake quantization needs a `weight` or an `activation` quantizer")
    include, exclude = list(include), list(exclude)
    names = []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, LAYERS):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in include) or \
                any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if name in fake_quant_layers(model):
            raise ValueError(f"layer {name!r} already has fake quantization")
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f"layer {name!r} is a grouped convolution (groups={layer.groups}); "
                             f"exclude it")
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        rot = hadamard(width) if hadamard_transform else None
        if weight is not None:
            parametrize.register_parametrization(layer, "weight",
                                                 FakeQuantWeight(_build(weight, width), rot))
        if activation is not None:
            axis = -1 if isinstance(layer, nn.Linear) else 1
            layer.fake_quant_input = FakeQuantInput(_build(activation, width), rot, axis)
            layer.register_forward_pre_hook(_quantize_input)
        names.append(name)
    if not names:
        raise ValueError(f"no nn.Linear / nn.Conv2d layer matches include={include} "
                         f"exclude={exclude}")
    return names


def _quantizers(model: nn.Module) -> list[Quantizer]:
    return [m.quantizer for m in model.modules() if isinstance(m, _Rotated)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], forward: Any = None) -> None:
    """Fit the fake quantizers' scales on ``batches`` with the model in eval mode (post-training
    quantization): quantizers in training mode (their running scales update), the rest in eval.

    Args:
        model: a model with fake quantization attached.
        batches: inputs; each is passed to ``forward`` (default ``model(batch)``).
        forward: ``forward(model, batch)``, e.g. to pick the inputs out of ``(x, y)``.
    """
    was = model.training
    model.eval()
    qs = _quantizers(model)
    for q in qs:
        q.train()
    try:
        for batch in batches:
            forward(model, batch) if forward is not None else model(batch)
    finally:
        for q in qs:
            q.eval()
        model.train(was)


def quantization_metrics(model: nn.Module) -> dict[str, float]:
    """Means over layers of the last metrics of the weight and input quantizers
    (``weight/<metric>``, ``input/<metric>``), e.g. ``weight/mse``, ``input/mse_expected``."""
    sums: dict[str, list[float]] = {}
    for m in model.modules():
        if isinstance(m, _Rotated):
            kind = "weight" if isinstance(m, FakeQuantWeight) else "input"
            for k, v in m.metrics.items():
                sums.setdefault(f"{kind}/{k}", []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def detach_fake_quant(model: nn.Module, bake: bool = True) -> None:
    """Remove fake quantization; ``bake=True`` leaves the quantized weights in place."""
    for layer in fake_quant_layers(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=bake)
        if hasattr(layer, "fake_quant_input"):
            del layer.fake_quant_input
            for key, hook in list(layer._forward_pre_hooks.items()):
                if hook is _quantize_input:
                    del layer._forward_pre_hooks[key]
