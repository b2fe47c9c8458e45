"""The quantizer contract (``llvq.testing.check_quantizer``), for every name in the registry.

Plugin quantizers loaded in this process are checked too, with ``straight_through="any"``
(a rotation trick or an FSQ/LFQ projection is not the identity by design); llvq's own
quantizers must pass the exact straight-through identity and each needs a config YAML.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch

from llvq.plugins import load_plugins
from llvq.quantizers import REGISTRY, Quantizer, build, list_quantizers, register
from llvq.quantizers.registry import QUANTIZERS
from llvq.testing import check_quantizer, latents
from tests.conftest import CONFIG_DIR

load_plugins()
NAMES = list_quantizers()
OWN = sorted(n for n, cls in QUANTIZERS.items() if cls.__module__.startswith("llvq."))


#: own quantizers whose gradient through z_q is not the identity by design
NOT_IDENTITY = {"projected": "learned linear maps around the inner quantizer's straight-through"}


def _mode(name: str) -> str:
    return "exact" if name in OWN and name not in NOT_IDENTITY else "any"


@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, dim: int) -> None:
    check_quantizer(build(name, dim=dim), straight_through=_mode(name))


# known failures, strict: the test turns red once they are fixed, so the entry can go
EMPTY_BATCH_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=EMPTY_BATCH_BUGS[n], strict=True))
    if n in EMPTY_BATCH_BUGS else n for n in OWN])
def test_contract_on_an_empty_batch(name: str) -> None:
    check_quantizer(build(name, dim=16), straight_through=_mode(name), empty_batch=True)


@pytest.mark.parametrize("name", NAMES)
def test_errors_name_the_setting(name: str) -> None:
    q = build(name, dim=16)
    z = latents(16)
    z[0, 0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        q(z)
    with pytest.raises(ValueError, match="dim=16"):
        q(latents(8))


def test_check_quantizer_catches_a_broken_quantizer() -> None:
    class NoStraightThrough(Quantizer):  # unregistered: a plugin author's mistake
        name = "broken"

        def quantize(self, z):
            from llvq.quantizers import QuantizerOutput

            codes = self.encode_impl(z)
            return QuantizerOutput(self.decode(codes), codes, z.new_zeros(()))

        def encode_impl(self, z):
            return torch.round(z).long()

        def decode(self, codes):
            return codes.float()

    NoStraightThrough.vector_codes = True
    with pytest.raises(AssertionError, match="no gradient reaches z"):
        check_quantizer(NoStraightThrough(dim=4))
    with pytest.raises(ValueError, match="straight_through"):
        check_quantizer(NoStraightThrough(dim=4), straight_through="approximately")


def test_own_registry_names_and_configs_match() -> None:
    """Every llvq quantizer has ``configs/model/quantizer/<name>.yaml`` and vice versa (plugin
    quantizers need no YAML inside the checkout)."""
    configs = {p.stem for p in (CONFIG_DIR / "model" / "quantizer").glob("*.yaml")}
    assert configs == set(OWN), (
        f"configs without a quantizer: {sorted(configs - set(OWN))}; "
        f"quantizers without a config: {sorted(set(OWN) - configs)}")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known quantizers: .*llvq"):
        build("no_such_quantizer", dim=4)


def test_list_quantizers_pattern() -> None:
    assert NAMES == sorted(REGISTRY) == list_quantizers("*")
    vq = list_quantizers("vq*")
    assert {"vq", "vq_ema"} <= set(vq) and vq == sorted(vq)
    assert vq == [n for n in NAMES if fnmatch.fnmatchcase(n, "vq*")]
    assert "llvq" not in vq  # a pattern, not a substring search
    assert list_quantizers("no_such_*") == []


def test_a_registered_quantizer_is_listed_and_checked(monkeypatch) -> None:
    monkeypatch.setattr(QUANTIZERS, "_entries", dict(QUANTIZERS._entries))
    monkeypatch.setattr(QUANTIZERS, "_info", dict(QUANTIZERS._info))

    @register("vq_test_rounding")
    class Rounding(Quantizer):
        vector_codes = True

        def quantize(self, z):
            from llvq.quantizers import QuantizerOutput

            codes = self.encode_impl(z)
            return QuantizerOutput(z + (self.decode(codes) - z).detach(), codes, z.new_zeros(()))

        def encode_impl(self, z):
            return torch.round(z).long()

        def decode(self, codes):
            return codes.float()

    assert "vq_test_rounding" in list_quantizers("vq*")
    check_quantizer(build("vq_test_rounding", dim=8), empty_batch=True)
