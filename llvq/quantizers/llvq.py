"""LL-VQ-VAE: a learnable diagonal lattice as the bottleneck.

Khalil, Piechocki & Santos-Rodriguez, "LL-VQ-VAE: Learnable Lattice Vector-Quantization for
Efficient Representations". The lattice is ``L(B) = {Bv : v ∈ Z^D}`` with a diagonal basis
``B`` (eq. 5), so Babai rounding ``v = round(B⁻¹ z)`` (eq. 4) is the exact nearest point.
The training objective (eq. 8) adds to the reconstruction term

    ‖sg[z] − Bv‖²  +  β‖z − sg[Bv]‖²  −  γ‖diag B‖₁                                     (8)

(embedding, commitment and size loss, eq. 7). The basis is initialised uniformly in
``±1/(K^(1/D) − 1)`` for a target codebook size ``K`` (appendix A.1, eq. 11).

Guard against a vanishing basis entry: the sign of a diagonal entry does not change the lattice,
so the basis is parametrised as ``diag B = |b_raw| + min_step``. Every entry stays at least
``min_step`` apart from zero while the gradient of the size loss keeps its paper form
(``∂(−γ‖B‖₁)/∂b_raw = −γ·sign(b_raw)``). ``min_step`` is a setting, logged as ``basis_min``.

Why the paper's setting spends 2-3 of 64 dimensions (issue 16, ``docs/autoencoder_bench.md``):
eq. 11 with ``K = 512, D = 64`` asks for ``512^(1/64) ≈ 1.10`` levels per coordinate, i.e. a
spacing drawn from ``U(0, 9.76)`` while the encoder's latents are O(1). Every coordinate whose
spacing exceeds twice its latent range rounds to 0 for all inputs; there ``v = 0``, so the
embedding-loss gradient ``Σ v (Bv − z)`` is exactly 0 and only the size loss acts, whose
gradient ``−γ`` is the same for every coordinate whatever it costs in distortion: the spacing
grows, the coordinate never comes back, and the commitment loss pulls its latents to 0.

The rate knob ``target_bits`` replaces the size loss: every spacing is ``2^c · |b_j|`` with one
global exponent ``c`` (a buffer, not a parameter) moved after each training step by
``c += rate_gain · log2(R / target_bits)``. ``R`` is by default the batch's *joint* code
entropy, each code vector one symbol (the rate ``bench/ae_rd.py`` measures): the integer code
rows are hashed to 2^16 buckets (a fixed random linear map mod 2^31 − 1), counted with
``scatter_add_`` and turned into bits with the Chao–Shen estimator, which corrects most of the
plug-in estimate's downward bias on a batch of a few thousand vectors; no host-device sync.
``rate_measure="factorised"`` steers ``Σ_j H(v_j)`` instead (one prior per coordinate), an
upper bound that overshoots the joint rate several-fold once active coordinates are correlated.
Under DDP each rank measures its own batch and ``R`` is the rank average. On the first training
batch ``c`` is set by bisection so that ``R = target_bits`` there (``calibrate``), and the
basis starts at equal spacings, so all coordinates compete.

Notation: ``...`` leading axes, ``D`` the vector width (``dim``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers._codebook import check_codebook_size, distributed, sum_over_ranks
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_code_range, check_weight
from llvq.quantizers.registry import register

__all__ = ["DiagonalLatticeQuantizer", "basis_init_range", "bucket_counts", "code_hash",
           "entropy_of_counts", "hash_weights", "joint_entropy_bits", "marginal_entropy_bits"]

#: the prime of :func:`code_hash` (2^31 − 1: a reduced code times a weight fits in int64)
HASH_PRIME = 2**31 - 1
#: buckets the rate knob's batch codes are counted in (:func:`joint_entropy_bits`)
HASH_BUCKETS = 2**16
RATE_MEASURES = ("joint", "factorised")
ENTROPY_ESTIMATORS = ("plugin", "chao_shen")


def basis_init_range(codebook_size: int, dim: int) -> float:
    """LL-VQ-VAE eq. 11: half-width ``1/(K^(1/D) − 1)`` of the uniform basis initialisation."""
    return 1.0 / (codebook_size ** (1.0 / dim) - 1.0)


def marginal_entropy_bits(v: Tensor) -> Tensor:
    """Plug-in entropy in bits of each column of integer codes ``v`` ``(N, D)``; ``(D,)``.

    Sort-based, with ``scatter_add`` instead of ``bincount``, so no host-device synchronisation.
    """
    n, d = v.shape
    s, _ = torch.sort(v, dim=0)  # (N, D)
    start = torch.ones_like(s, dtype=torch.bool)
    start[1:] = s[1:] != s[:-1]  # (N, D): first entry of each run of equal codes
    run = torch.cumsum(start.long(), dim=0) - 1  # (N, D): run id within its column
    slot = run + torch.arange(d, device=v.device) * n  # (N, D): unique per column and run
    counts = torch.zeros(n * d, device=v.device).scatter_add_(
        0, slot.reshape(-1), torch.ones(n * d, device=v.device)).view(d, n)  # (D, N)
    p = counts / max(n, 1)
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(1)


def hash_weights(dim: int, seed: int = 0) -> Tensor:
    """Fixed random weights in ``[1, HASH_PRIME)`` for :func:`code_hash`; ``(D,)`` int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, HASH_PRIME, (dim,), generator=g, dtype=torch.int64)


def code_hash(v: Tensor, weights: Tensor) -> Tensor:
    """Hash of each integer code row of ``v`` ``(N, D)``: ``Σ_j (v_j mod p)·w_j mod p``; ``(N,)``.

    A random linear map mod the prime ``p = 2^31 − 1``: two different rows collide with
    probability ``1/p`` over the weights. Each product is below ``2^62`` and the sum of ``D``
    reduced terms below ``2^63`` for ``D < 2^32``, so nothing overflows int64.
    """
    v = torch.remainder(v.to(torch.int64), HASH_PRIME)  # (N, D) in [0, p)
    return torch.remainder(v * weights, HASH_PRIME).sum(-1).remainder(HASH_PRIME)


def bucket_counts(v: Tensor, weights: Tensor, buckets: int = HASH_BUCKETS) -> Tensor:
    """How many rows of ``v`` ``(N, D)`` hash to each of ``buckets`` buckets; ``(buckets,)``.

    ``scatter_add_`` into a fixed-size tensor: no ``unique``/``bincount``, no host sync.
    """
    idx = code_hash(v, weights).remainder(buckets)  # (N,)
    return torch.zeros(buckets, device=v.device).scatter_add_(
        0, idx, torch.ones(idx.shape, device=v.device))


def entropy_of_counts(counts: Tensor, estimator: str = "plugin") -> Tensor:
    """Entropy in bits of a histogram ``counts`` ``(K,)`` of ``n`` samples; ``()``, on device.

    ``"plugin"``: ``−Σ p log2 p`` with ``p = counts / n``; biased low when many symbols are
    seen once or not at all (at 6–9 bits per vector a batch of 2048 misses much of the tail).
    ``"chao_shen"`` (Chao & Shen 2003): the coverage ``C = 1 − f1/n`` (``f1`` symbols seen
    once) shrinks ``p`` to ``C·p``, and each term is divided by the chance ``1 − (1 − C·p)^n``
    that a sample of ``n`` sees the symbol (Horvitz–Thompson), which accounts for the unseen.
    """
    if estimator not in ENTROPY_ESTIMATORS:
        raise ValueError(f"entropy estimator must be one of {', '.join(ENTROPY_ESTIMATORS)}, "
                         f"got {estimator!r}")
    n = counts.sum()
    seen = counts > 0
    p = counts / n.clamp_min(1)
    if estimator == "plugin":
        return -(p * torch.log2(p.clamp_min(1e-30))).sum()
    f1 = (counts == 1).sum().to(p.dtype)
    f1 = torch.where(f1 >= n, f1 - 1, f1)  # every symbol seen once: C = 1/n, not 0
    p = (1 - f1 / n.clamp_min(1)) * p
    inclusion = -torch.expm1(n * torch.log1p(-p))  # 1 − (1 − p)^n
    terms = -p * torch.log2(p.clamp_min(1e-30)) / inclusion.clamp_min(1e-30)
    return torch.where(seen, terms, torch.zeros_like(terms)).sum()


def joint_entropy_bits(v: Tensor, estimator: str = "plugin", buckets: int = HASH_BUCKETS,
                       weights: Tensor | None = None) -> Tensor:
    """Entropy in bits of whole code rows ``v`` ``(N, D)``, each row one symbol; ``()``.

    Rows are hashed (:func:`code_hash`, ``weights`` default :func:`hash_weights`) into
    ``buckets`` buckets and counted on device, so there is no host-device synchronisation. The
    count is exact unless distinct rows share a bucket (about ``m²/(2·buckets)`` pairs for ``m``
    distinct rows, 32 at most for a batch of 2048 in 2^16 buckets), which only lowers the
    estimate. ``estimator``: see :func:`entropy_of_counts`.
    """
    if weights is None:
        weights = hash_weights(v.shape[-1]).to(v.device)
    return entropy_of_counts(bucket_counts(v, weights, buckets), estimator)


@register("llvq")
class DiagonalLatticeQuantizer(Quantizer):
    """Learnable diagonal lattice with Babai rounding (LL-VQ-VAE).

    Args:
        dim: vector width ``D`` (the basis has ``D`` parameters).
        codebook_size: target codebook size ``K`` (≥ 2) that sets the initial range (eq. 11).
        beta: commitment weight β (>= 0).
        gamma: sparsity coefficient γ of the size loss: 1 pushes the lattice sparse (finite
            codebook), −1 dense (paper's "dense" variant), 0 switches it off.
        init_range: overrides the half-width of the uniform initialisation (e.g. 1.0 for the
            paper's Table 3 rows with range (−1, 1)); default derived from ``codebook_size``.
        init_basis: explicit initial diagonal (length ``D``, no zero entries); overrides the
            random initialisation.
        min_step: smallest allowed lattice spacing (see the module docstring).
        target_bits: the rate knob: bits per vector the global spacing is steered to (the
            code entropy chosen by ``rate_measure``); replaces the size loss (needs
            ``gamma=0``) and starts from equal spacings (unless ``init_basis`` or
            ``init_range`` is given). ``None``: the paper's size loss.
        rate_gain: step of the spacing exponent ``c`` per training step per doubling of the
            rate error (``c += rate_gain · log2(R / target_bits)``).
        rate_measure: the rate ``R`` the knob steers and logs as ``rate_bits``: ``"joint"``
            (default) the entropy of whole code vectors in the batch (each vector one symbol;
            what a coder with one prior per vector pays, and what ``bench/ae_rd.py`` reports),
            estimated by hashing (:func:`joint_entropy_bits`, Chao–Shen); ``"factorised"``
            ``Σ_j H(v_j)`` (one prior per coordinate; an upper bound, far above the joint rate
            when the active coordinates are correlated).
        calibrate: with ``target_bits``, set ``c`` on the first training batch by bisection so
            that the batch's rate is ``target_bits`` (else ``c`` starts at 0). Done once: the
            flag is a buffer, saved with the model.
        check_every: on a GPU, read the gathered NaN/Inf and code-range checks (basis,
            latents) once every ``check_every`` forward calls (each read synchronises; an error
            comes at most that many calls late); on CPU every call checks at once. See
            :meth:`~llvq.quantizers.base.Quantizer.guard`.

    Raises:
        ValueError: in ``forward``/``encode``, when a code ``round(z / b)`` would exceed
            ``±2^53`` (:data:`~llvq.quantizers.base.MAX_CODE`; beyond it codes are not exact
            and soon overflow int64). Half-precision latents are coded in float32 and
            ``z_q`` is returned in the input's dtype.
    """

    vector_codes = True

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25, gamma: float = 1.0,
                 init_range: float | None = None, init_basis: Sequence[float] | None = None,
                 min_step: float = 1e-3, target_bits: float | None = None,
                 rate_gain: float = 0.1, rate_measure: str = "joint", calibrate: bool = True,
                 check_every: int = 100) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if min_step <= 0:
            raise ValueError(f"quantizer 'llvq': `min_step` must be > 0, got {min_step}")
        if rate_measure not in RATE_MEASURES:
            raise ValueError(f"quantizer 'llvq': `rate_measure` must be one of "
                             f"{', '.join(RATE_MEASURES)}, got {rate_measure!r}")
        if target_bits is not None:
            if not target_bits > 0:
                raise ValueError(f"quantizer 'llvq': `target_bits` must be > 0, got {target_bits}")
            if gamma != 0:
                raise ValueError(f"quantizer 'llvq': `target_bits` replaces the size loss; set "
                                 f"gamma=0 (got gamma={gamma}) or target_bits=null")
            if not rate_gain > 0:
                raise ValueError(f"quantizer 'llvq': `rate_gain` must be > 0, got {rate_gain}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"quantizer 'llvq': `check_every` must be an integer >= 1, "
                             f"got {check_every!r}")
        self.target_bits = None if target_bits is None else float(target_bits)
        self.rate_gain, self.check_every = float(rate_gain), check_every
        self.rate_measure, self.calibrate = rate_measure, bool(calibrate)
        self._hash_w: Tensor | None = None  # fixed hash weights, made on the codes' device
        # the lattice is unbounded: K is a target that sets the initial range, not a code size
        self.target_codebook_size, self.gamma = codebook_size, float(gamma)
        self.beta = check_weight(beta, "beta", self.name)
        self.min_step = float(min_step)
        if init_basis is not None:
            raw = torch.as_tensor(list(init_basis), dtype=torch.float32)
            if raw.shape != (dim,):
                raise ValueError(f"quantizer 'llvq': `init_basis` must have {dim} entries "
                                 f"(one per latent channel), got shape {tuple(raw.shape)}")
            if not bool(torch.isfinite(raw).all()) or bool((raw == 0).any()):
                raise ValueError("quantizer 'llvq': `init_basis` has a zero or non-finite entry; "
                                 "a lattice basis entry of 0 collapses that axis to one point")
            raw = raw.abs() - self.min_step
            if bool((raw < 0).any()):
                raise ValueError(f"quantizer 'llvq': `init_basis` entries must have |b| >= "
                                 f"min_step={self.min_step}")
        elif target_bits is not None and init_range is None:
            raw = torch.full((dim,), 1.0 - self.min_step)  # equal spacings 1; c sets the scale
        else:
            r = init_range if init_range is not None else basis_init_range(codebook_size, dim)
            if not r > 0:
                raise ValueError(f"quantizer 'llvq': `init_range` must be > 0, got {r}")
            raw = torch.empty(dim).uniform_(-r, r)
        self.basis_raw = nn.Parameter(raw)  # (D,)
        self.register_buffer("log2_spacing", torch.zeros(()))  # c: global exponent (rate knob)
        # whether c was calibrated (True when there is nothing to calibrate)
        self.register_buffer("rate_calibrated",
                             torch.tensor(not (self.calibrate and target_bits is not None)))
        self._calibrated: bool | None = None  # host copy of `rate_calibrated`, read once

    @property
    def basis(self) -> Tensor:
        """The diagonal of ``B``, shape ``(D,)``, every entry ≥ ``min_step`` (times ``2^c``)."""
        return (self.basis_raw.abs() + self.min_step) * self.log2_spacing.exp2()

    def _check_basis(self, b: Tensor) -> None:
        """Raise if the basis is non-finite (read at once on CPU, gathered on a GPU)."""
        self.guard(~torch.isfinite(b).all(),
                   "quantizer 'llvq': the lattice basis became non-finite; lower the learning rate")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before the flag existed were trained: nothing to calibrate
        state_dict.setdefault(prefix + "rate_calibrated", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = None  # re-read the loaded flag

    def _rate(self, v: Tensor, measure: str) -> Tensor:
        """Code entropy of ``v`` ``(N, D)`` in bits per vector: ``"joint"`` or ``"factorised"``."""
        if measure == "factorised":
            return marginal_entropy_bits(v).sum()
        if self._hash_w is None or self._hash_w.device != v.device:
            self._hash_w = hash_weights(self.dim).to(v.device)
        return joint_entropy_bits(v, "chao_shen", weights=self._hash_w)

    def _rank_mean(self, t: Tensor) -> Tensor:
        """``t`` averaged over ranks under DDP (each rank steers on its own batch)."""
        if distributed():
            return sum_over_ranks(t.clone()) / torch.distributed.get_world_size()
        return t

    @torch.no_grad()
    def _maybe_calibrate(self, z: Tensor) -> None:
        """First training batch: bisect ``c`` so that the batch's rate is ``target_bits``.

        The flag is read to the host once per process (one sync), like ``vq``'s k-means init;
        the bisection itself runs on device (24 halvings of a 24-octave bracket).
        """
        if self._calibrated is None:
            self._calibrated = bool(self.rate_calibrated)
        if self._calibrated:
            return
        z = z.reshape(-1, self.dim).float()  # (N, D)
        unit = self.basis_raw.detach().abs() + self.min_step  # (D,) spacings at c = 0
        hi = torch.log2(2 * z.abs().max().clamp_min(1e-12) / unit.min()) + 1  # all codes 0
        lo = hi - 24
        for _ in range(24):
            mid = (lo + hi) / 2
            above = self._rate(torch.round(z / (unit * mid.exp2())), self.rate_measure) \
                > self.target_bits
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        self.log2_spacing.copy_(self._rank_mean((lo + hi) / 2))
        self.rate_calibrated.fill_(True)
        self._calibrated = True

    @torch.no_grad()
    def _steer_rate(self, rate: Tensor) -> None:
        """One step of the rate knob: ``c += rate_gain · log2(R / target_bits)``."""
        err = torch.log2(self._rank_mean(rate).clamp_min(1e-3) / self.target_bits)
        self.log2_spacing.add_(self.rate_gain * err)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        if self.training and self.target_bits is not None and z.numel():
            self._maybe_calibrate(z.detach())
        b = self.basis  # (D,)
        self._check_basis(b)
        z_d, b_d = z.detach(), b.detach()
        if z.numel() == 0:  # an empty batch: empty codes, no loss (not a 0/0 NaN)
            return QuantizerOutput(z_q=z.clone(), codes=z_d.long(), loss=0.0 * b.sum())
        v = torch.round(z_d / b_d)  # (..., D) Babai rounding, eq. 4 (no gradient)
        check_code_range(v, self.name, "`min_step`", quantizer=self)
        e = v * b_d  # (..., D) nearest lattice point Bv
        r = e - z_d  # (..., D) quantization residual
        # Embedding loss ‖sg[z] − Bv‖² (mean over entries). Its gradient w.r.t. b_j is
        # (2/N) Σ_i v_ij r_ij; written as value + (b − sg[b])·grad, so the backward pass is O(D)
        # instead of a broadcast product over every latent entry. Value and gradient are exact.
        grad_b = (v * r).reshape(-1, self.dim).sum(0) * (2.0 / r.numel())  # (D,)
        embedding = r.square().mean() + ((b - b_d) * grad_b).sum()
        commitment = F.mse_loss(z, e)  # β‖z − sg[Bv]‖²
        size = -self.gamma * b.sum()  # −γ‖diag B‖₁, eq. 7 (entries are positive)
        flat = v.reshape(-1, self.dim)  # (N, D)
        joint, fact = self._rate(flat, "joint"), self._rate(flat, "factorised")  # bits / vector
        rate = joint if self.rate_measure == "joint" else fact
        z_q = z + r.to(z.dtype)  # straight-through: value Bv, identity gradient to z
        metrics = {
            "embedding_loss": embedding.detach(), "commitment": commitment.detach(),
            "size_loss": size.detach(), "basis_mean": b.detach().mean(),
            "basis_min": b.detach().min(), "code_absmax": v.abs().max(), "rate_bits": rate,
            "joint_bits": joint, "factorised_bits": fact,
            "active_dims": (flat != 0).any(0).sum().float(),
        }
        if self.training and self.target_bits is not None:
            self._steer_rate(rate)
        return QuantizerOutput(z_q=z_q, codes=v.long(), loss=embedding + self.beta * commitment + size,
                               metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        v = torch.round(z / self.basis)
        check_code_range(v, self.name, "`min_step`", quantizer=self)
        return v.long()

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(self.basis.dtype) * self.basis

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, target_codebook_size={self.target_codebook_size}, beta={self.beta}, "
                f"gamma={self.gamma}, min_step={self.min_step}, target_bits={self.target_bits}, "
                f"rate_measure={self.rate_measure!r}")
