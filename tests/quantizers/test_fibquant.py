"""FibQuant and its two KV-cache companions (``turbo_scalar``, ``turbo_lattice``): rates, codes,
the canonical spherical-Beta source and the error ordering the FibQuant paper claims."""

from __future__ import annotations

import math

import pytest
import torch

from llvq.quantizers import build
from llvq.quantizers.fibquant import FibQuantizer, lloyd, radial_angular_codebook
from llvq.quantizers.sphere import haar_rotation, sphere_block_samples
from llvq.quantizers.turbo_scalar import lloyd_max_table
from llvq.testing import check_quantizer


def _rel_mse(q, z: torch.Tensor) -> float:
    zq = q.eval()(z).z_q
    return float(((zq - z).pow(2).sum(-1) / z.pow(2).sum(-1)).mean())


def _gauss(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits, block, size", [
    (2.0, 4, 256), (0.5, 8, 16), (0.25, 8, 4), (1.5, 2, 8), (3.0, 2, 64), (1.0, 8, 256)])
def test_codebook_size_is_two_to_the_bits_times_block(bits, block, size) -> None:
    q = build("fibquant", dim=64, bits=bits, block=block)
    assert q.codebook_size == size == round(2 ** (bits * block))
    assert tuple(q.codebook.shape) == (size, block)
    # m log2 K index bits + a float16 norm per vector
    assert q.bits_per_vector == pytest.approx(64 / block * math.log2(size) + 16)


def test_bits_per_vector_counts_the_norm_format() -> None:
    q16 = build("fibquant", dim=64, bits=2, block=4)
    q32 = build("fibquant", dim=64, bits=2, block=4, norm_dtype="float32")
    assert q32.bits_per_vector - q16.bits_per_vector == 16
    assert q16.bits_per_vector == 16 * 8 + 16  # 16 blocks x 8 bits + the norm


@pytest.mark.parametrize("bits, block", [(0.5, 8), (1.5, 2), (0.75, 4)])
def test_fractional_and_sub_one_bit_rates_pass_the_contract(bits, block) -> None:
    q = build("fibquant", dim=16, bits=bits, block=block)
    check_quantizer(q, empty_batch=True)
    z = _gauss(32, 16)
    codes = q.eval().encode(z)
    assert codes.shape == (32, 16 // block + 1)
    assert int(codes[:, :-1].min()) >= 0 and int(codes[:, :-1].max()) < q.codebook_size
    assert q.bits_per_vector / 16 == pytest.approx(bits + 1.0)  # + 16 norm bits / 16 coords
    assert _rel_mse(q, z) < 1.0  # better than sending nothing


def test_decode_round_trip_and_norm_are_exact() -> None:
    q = build("fibquant", dim=32, bits=2, block=4, norm_dtype="float32").eval()
    z = _gauss(50, 32, 3) * 5
    codes = q.encode(z)
    torch.testing.assert_close(q.decode(codes), q(z).z_q)
    norms = q.front.norms(codes[:, -1])
    torch.testing.assert_close(norms, z.norm(dim=-1))


def test_codes_of_a_token_do_not_depend_on_the_others() -> None:
    """Random access: each vector's codes are a function of that vector alone."""
    q = build("fibquant", dim=32, bits=1, block=8).eval()
    z = _gauss(40, 32, 4)
    full = q.encode(z)
    assert torch.equal(full[7:9], q.encode(z[7:9]))


@pytest.mark.parametrize("kwargs, match", [
    ({"block": 5}, "block"),
    ({"bits": 0}, "bits"),
    ({"bits": 4, "block": 8}, "codebook"),      # 2^32 points
    ({"bits": 0.05, "block": 2}, "codebook"),   # 1 point
    ({"norm_dtype": "int8"}, "norm_dtype"),
])
def test_bad_settings_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        build("fibquant", dim=16, **kwargs)


def test_a_norm_that_overflows_float16_is_an_error() -> None:
    q = build("fibquant", dim=16, bits=1, block=4).eval()
    with pytest.raises(ValueError, match="norm_dtype"):
        q(torch.full((2, 16), 1e5))
    big = build("fibquant", dim=16, bits=1, block=4, norm_dtype="bfloat16").eval()
    assert torch.isfinite(big(torch.full((2, 16), 1e5)).z_q).all()


def test_haar_rotation_is_orthogonal_and_seeded() -> None:
    r = haar_rotation(24, 5)
    torch.testing.assert_close(r @ r.T, torch.eye(24, dtype=torch.float64))
    assert torch.equal(r, haar_rotation(24, 5))
    assert not torch.allclose(r, haar_rotation(24, 6))


def test_block_samples_follow_the_spherical_beta_law() -> None:
    """Squared radius of a k-block of a uniform point on S^(d-1) is Beta(k/2, (d-k)/2)."""
    d, k = 64, 4
    x = sphere_block_samples(d, k, 100_000, seed=0)
    r2 = x.pow(2).sum(1)
    mean, var = k / d, (k / 2) * ((d - k) / 2) / ((d / 2) ** 2 * (d / 2 + 1))
    assert float(r2.mean()) == pytest.approx(mean, rel=0.01)
    assert float(r2.var()) == pytest.approx(var, rel=0.03)


def test_radial_angular_start_uses_beta_quantile_radii() -> None:
    from scipy.stats import beta

    d, k, rings = 64, 4, 4
    c = radial_angular_codebook(d, k, 64, rings)
    assert c.shape == (64, 4)
    radii = torch.unique(c.norm(dim=1).round(decimals=8))
    expected = torch.from_numpy(beta.ppf((torch.arange(rings) + 0.5).numpy() / rings,
                                         k / 2, (d - k) / 2)).sqrt()
    torch.testing.assert_close(radii, expected.round(decimals=8), atol=1e-7, rtol=0)


def test_lloyd_does_not_increase_the_error() -> None:
    d, k = 32, 2
    x = sphere_block_samples(d, k, 20_000, seed=1).float()
    start = radial_angular_codebook(d, k, 16, 2).float()
    before = float((x - start[torch.cdist(x, start).argmin(1)]).pow(2).sum(1).mean())
    _, after = lloyd(x, start, iterations=20)
    assert after < before


def test_codebook_is_deterministic(tmp_path, monkeypatch) -> None:
    from llvq.quantizers import fibquant

    a = build("fibquant", dim=32, bits=1.5, block=2).codebook
    monkeypatch.setenv("LLVQ_CACHE", str(tmp_path))  # a cold build, away from the shared cache
    fibquant._codebook.cache_clear()
    b = fibquant.fibquant_codebook(32, 2, 8)
    torch.testing.assert_close(a, b)
    assert any(tmp_path.rglob("*.pt"))


def test_relative_error_does_not_depend_on_the_input_distribution() -> None:
    """No calibration: after the rotation an outlier channel costs nothing extra."""
    q = build("fibquant", dim=64, bits=2, block=4)
    z = _gauss(2000, 64, 1)
    skewed = z.clone()
    skewed[:, 3] *= 20.0  # one outlier channel, as in attention keys
    skewed[:, 10:20] *= 0.1
    assert _rel_mse(q, skewed) == pytest.approx(_rel_mse(q, z), rel=0.08)


def test_fibquant_beats_the_scalar_codec_at_the_same_rate() -> None:
    """FibQuant's claim at 2 bits/coordinate: the shared k=4 codebook has lower error than the
    per-coordinate Lloyd-Max table (same front end, same norm bits)."""
    z = _gauss(3000, 64, 2)
    fib = build("fibquant", dim=64, bits=2, block=4)
    scalar = build("turbo_scalar", dim=64, bits=2)
    assert fib.bits_per_vector == scalar.bits_per_vector
    assert _rel_mse(fib, z) < 0.95 * _rel_mse(scalar, z)


def test_block_one_is_the_scalar_lloyd_max_code() -> None:
    z = _gauss(3000, 64, 5)
    fib = build("fibquant", dim=64, bits=2, block=1)
    scalar = build("turbo_scalar", dim=64, bits=2)
    torch.testing.assert_close(fib.codebook.squeeze(1).sort().values, scalar.levels,
                               atol=2e-3, rtol=0.02)
    assert _rel_mse(fib, z) == pytest.approx(_rel_mse(scalar, z), rel=0.02)


def test_more_bits_less_error() -> None:
    z = _gauss(1000, 64, 6)
    errs = [_rel_mse(build("fibquant", dim=64, bits=b, block=2), z) for b in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]
    assert isinstance(build("fibquant", dim=64), FibQuantizer)


# -- turbo_scalar ------------------------------------------------------------------------------

def test_scalar_one_bit_levels_are_the_mean_absolute_coordinate() -> None:
    """1 bit: the centroids are ±E|t|, t one coordinate of a uniform point on S^(d-1)."""
    d = 64
    mean_abs = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    torch.testing.assert_close(lloyd_max_table(d, 2), torch.tensor([-mean_abs, mean_abs],
                                                                   dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_scalar_table_tends_to_the_gaussian_lloyd_max_levels() -> None:
    """For large d a coordinate is ~N(0, 1/d): Max's 2-bit levels ±0.4528, ±1.510."""
    d = 2048
    levels = lloyd_max_table(d, 4) * math.sqrt(d)
    torch.testing.assert_close(levels, torch.tensor([-1.510, -0.4528, 0.4528, 1.510],
                                                    dtype=torch.float64), atol=5e-3, rtol=0)


@pytest.mark.parametrize("bits", [0, 9, 2.5])
def test_scalar_bits_must_be_whole(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        build("turbo_scalar", dim=16, bits=bits)


# -- turbo_lattice -----------------------------------------------------------------------------

def test_lattice_codes_are_exact_bits_per_coordinate() -> None:
    q = build("turbo_lattice", dim=64, bits=2, lattice="E8").eval()
    assert q.codebook_size == 4 ** 8 and q.bits_per_vector == 64 * 2 + 16
    z = _gauss(300, 64, 7)
    codes = q.encode(z)
    assert codes.shape == (300, 9)
    assert int(codes[:, :-1].min()) >= 0 and int(codes[:, :-1].max()) < 4 ** 8
    torch.testing.assert_close(q.decode(codes), q(z).z_q)
    assert _rel_mse(q, z) < 0.2  # about the scalar codec's 0.115 at 2 bits


def test_lattice_dimension_must_divide_dim() -> None:
    with pytest.raises(ValueError, match="lattice"):
        build("turbo_lattice", dim=12, lattice="E8")
    with pytest.raises(ValueError, match="bits"):
        build("turbo_lattice", dim=16, bits=0.5)
