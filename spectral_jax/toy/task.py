"""The cyclic-sequence ("modular arithmetic") task of the toy model and its Fourier probe sets.

Each sequence follows one or more cyclic components (docs/method.md §6.1)

    s_k = (a + d·k) mod c,    t_k = o + s_k,    k = 0..L,

mixed as t_mix = Σ_j w_j t_j / Σ_j w_j, optionally perturbed by token noise, rounded and clipped to
[0, V−1]. Inputs are x = t[0:L] and next-token targets y = t[1:L+1] (loss over all L positions).

The sampler is vectorised over sequences. It draws the same distribution as the reference loop
(`data_modarith.py`) but consumes the generator in a different order, so the arrays are not
bit-identical to the reference for the same seed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from spectral_jax.errors import UserError

NOISE_KINDS = ("none", "gaussian", "student_t")
PROBE_KINDS = ("clean_band", "matched_band")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Task distribution (defaults = the reference's trusted runs).

    c ~ P(c) ∝ c^−c_power on {c_min..V};  o ~ P(o) ∝ (o+1)^−o_power on {0..V−c};
    d ~ U{max(1, ⌊d_min_frac·c⌋) .. c−1}; with probability noncoprime_prob a factor g of c
    (uniform over {p : 2 ≤ p ≤ √c, p | c}) forces d ← clip(⌊d/g⌋·g, g, c−1); a ~ U{0..c−1}.
    Components per sequence ~ U{mix_min..mix_max}; weights w = 1, or 1 + Pareto(α) if α > 0.
    noise: "none" | "gaussian" (std·N(0,1)) | "student_t" (std·t_df·sqrt((df−2)/df), unit variance).
    """

    vocab_size: int = 1024
    seq_len: int = 64
    n_train: int = 32_000
    n_val: int = 2_048
    n_test: int = 4_096
    c_min: int = 5
    c_power: float = 1.3
    o_power: float = 1.2
    d_min_frac: float = 0.125
    noncoprime_prob: float = 0.3
    mix_min: int = 1
    mix_max: int = 1
    component_weight_pareto_alpha: float = 0.0
    noise: str = "none"
    noise_std: float = 0.0
    noise_df: float = 3.0
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.c_min <= self.vocab_size:
            raise UserError(f"need 2 <= c_min <= vocab_size, got {self.c_min}")
        if not 1 <= self.mix_min <= self.mix_max:
            raise UserError(f"need 1 <= mix_min <= mix_max, got {self.mix_min}, {self.mix_max}")
        if self.noise not in NOISE_KINDS:
            raise UserError(f"noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        if self.noise == "student_t" and self.noise_df <= 2.0:
            raise UserError("student_t noise needs noise_df > 2 (finite variance)")
        if not 0.0 <= self.noncoprime_prob <= 1.0:
            raise UserError(f"noncoprime_prob must lie in [0, 1], got {self.noncoprime_prob}")


@dataclasses.dataclass(frozen=True, eq=False)
class Latents:
    """Per-sequence, per-component latents; unused component slots hold −1 (weight 0).

    g_NxM is the factor forced onto d by the non-coprime rule (0 where the rule did not fire).
    """

    n_components_N: np.ndarray
    c_NxM: np.ndarray
    o_NxM: np.ndarray
    d_NxM: np.ndarray
    a_NxM: np.ndarray
    w_NxM: np.ndarray
    g_NxM: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: int32 inputs and next-token targets (N×L) plus the latents that generated them."""

    x_NxL: np.ndarray
    y_NxL: np.ndarray
    latents: Latents


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeSplit:
    """Probe sequences anchored on band (c0, o0) with the anchored component's state labels.

    state_NxL[:, k] = s_k = (a + d·k) mod c0 is the state of input token x[:, k]. The probe label of a
    sequence is m_N = state_NxL[:, −1] = (a + d·(L−1)) mod c0: the hidden state read at the last
    position has seen tokens k = 0..L−1, so it is labelled by the state of the last token it has seen
    (the state it must advance by d to predict y[:, −1]), as in the reference probe.
    """

    x_NxL: np.ndarray
    y_NxL: np.ndarray
    state_NxL: np.ndarray
    d_N: np.ndarray
    a_N: np.ndarray
    c0: int
    o0: int
    kind: str

    @property
    def m_N(self) -> np.ndarray:
        return self.state_NxL[:, -1]


def c_pmf(cfg: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Support and probabilities of the modulus: P(c) ∝ c^−c_power, c = c_min..V."""
    c_C = np.arange(cfg.c_min, cfg.vocab_size + 1)
    p_C = c_C.astype(np.float64) ** -cfg.c_power
    return c_C, p_C / p_C.sum()


def o_pmf(cfg: TaskConfig, c: int) -> np.ndarray:
    """Probabilities of the offset for modulus c: P(o) ∝ (o+1)^−o_power, o = 0..V−c."""
    w = np.arange(1, cfg.vocab_size - c + 2, dtype=np.float64) ** -cfg.o_power
    return w / w.sum()


def small_factor_table(max_c: int) -> tuple[np.ndarray, np.ndarray]:
    """Row c lists {p : 2 ≤ p ≤ √c, p | c} left-aligned (zero padded); also returns the counts."""
    c_C = np.arange(max_c + 1)
    p_P = np.arange(2, math.isqrt(max_c) + 1)
    divides_CxP = (c_C[:, None] % p_P[None, :] == 0) & (p_P[None, :] ** 2 <= c_C[:, None])
    count_C = divides_CxP.sum(axis=1)
    order_CxP = np.argsort(~divides_CxP, axis=1, kind="stable")
    table_CxP = np.where(np.take_along_axis(divides_CxP, order_CxP, axis=1), p_P[order_CxP], 0)
    return table_CxP, count_C


def _sample_offsets(cfg: TaskConfig, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cum_V = np.cumsum(np.arange(1, cfg.vocab_size + 1, dtype=np.float64) ** -cfg.o_power)
    u = rng.random(c.shape) * cum_V[cfg.vocab_size - c]
    return np.minimum(np.searchsorted(cum_V, u, side="right"), cfg.vocab_size - c)


def sample_steps(cfg: TaskConfig, c: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Steps d for moduli c (any shape) and the forced factor g (0 where none): see TaskConfig."""
    c = np.asarray(c, dtype=np.int64)
    d_min = np.maximum(1, np.floor(cfg.d_min_frac * c).astype(np.int64))
    d = np.where(d_min < c, rng.integers(d_min, np.maximum(c, d_min + 1)), 1)
    table_CxP, count_C = small_factor_table(int(c.max(initial=2)))
    force = (rng.random(c.shape) < cfg.noncoprime_prob) & (count_C[c] > 0)
    pick = np.floor(rng.random(c.shape) * np.maximum(count_C[c], 1)).astype(np.int64)
    g = np.where(force, table_CxP[c, pick], 0)
    g_safe = np.maximum(g, 1)
    d = np.where(force, np.clip((d // g_safe) * g_safe, g_safe, c - 1), d)
    return d, g


def _component_weights(cfg: TaskConfig, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if cfg.component_weight_pareto_alpha > 0.0:
        return 1.0 + rng.pareto(cfg.component_weight_pareto_alpha, size=shape)
    return np.ones(shape)


def _token_noise(cfg: TaskConfig, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if cfg.noise == "gaussian":
        return cfg.noise_std * rng.standard_normal(shape)
    if cfg.noise == "student_t":
        return cfg.noise_std * rng.standard_t(cfg.noise_df, size=shape) * math.sqrt((cfg.noise_df - 2.0) / cfg.noise_df)
    return np.zeros(shape)


def cyclic_tokens(c, o, d, a, length: int) -> np.ndarray:
    """t_k = o + (a + d·k) mod c for k = 0..length−1, broadcast over the latents' shape (…×length)."""
    k = np.arange(length)
    c, o, d, a = (np.asarray(v, dtype=np.int64)[..., None] for v in (c, o, d, a))
    return o + (a + d * k) % c


def _mix_to_tokens(cfg: TaskConfig, t_NxMxK: np.ndarray, w_NxM: np.ndarray, rng) -> np.ndarray:
    t_NxK = np.einsum("nmk,nm->nk", t_NxMxK.astype(np.float64), w_NxM) / w_NxM.sum(axis=1, keepdims=True)
    t_NxK = t_NxK + _token_noise(cfg, t_NxK.shape, rng)
    return np.clip(np.rint(t_NxK), 0, cfg.vocab_size - 1).astype(np.int32)


def _sample_components(cfg: TaskConfig, shape: tuple[int, ...], rng: np.random.Generator):
    c_C, p_C = c_pmf(cfg)
    c = rng.choice(c_C, size=shape, p=p_C)
    o = _sample_offsets(cfg, c, rng)
    d, g = sample_steps(cfg, c, rng)
    a = rng.integers(0, c)
    return c, o, d, a, g


def _used_slots(cfg: TaskConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    n_components_N = rng.integers(cfg.mix_min, cfg.mix_max + 1, size=n)
    return np.arange(cfg.mix_max)[None, :] < n_components_N[:, None]


def sample_split(cfg: TaskConfig, n: int, rng: np.random.Generator) -> Split:
    """n sequences from the task distribution (see module docstring)."""
    used_NxM = _used_slots(cfg, n, rng)
    c, o, d, a, g = _sample_components(cfg, used_NxM.shape, rng)
    w = np.where(used_NxM, _component_weights(cfg, used_NxM.shape, rng), 0.0)
    tokens_NxK = _mix_to_tokens(cfg, cyclic_tokens(c, o, d, a, cfg.seq_len + 1), w, rng)
    latents = Latents(
        n_components_N=used_NxM.sum(axis=1),
        c_NxM=np.where(used_NxM, c, -1),
        o_NxM=np.where(used_NxM, o, -1),
        d_NxM=np.where(used_NxM, d, -1),
        a_NxM=np.where(used_NxM, a, -1),
        w_NxM=w,
        g_NxM=np.where(used_NxM, g, -1),
    )
    return Split(x_NxL=tokens_NxK[:, :-1], y_NxL=tokens_NxK[:, 1:], latents=latents)


def make_task(cfg: TaskConfig) -> dict[str, Split]:
    """Train, val and test splits drawn sequentially from one generator seeded with cfg.seed + 303."""
    rng = np.random.default_rng(cfg.seed + 303)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    return {name: sample_split(cfg, n, rng) for name, n in sizes.items()}


def probe_split(
    cfg: TaskConfig, c0: int, o0: int, kind: str = "matched_band", n: int = 12_000, seed: int = 0
) -> ProbeSplit:
    """Probe sequences whose anchored component has the fixed band (c0, o0) (docs/method.md §6.6).

    Both kinds draw the anchor's step d with the task's step sampler and a ~ U{0..c0−1}.
    clean_band: the anchor alone, no noise. matched_band: the anchor (weight drawn like any component)
    mixed with U{mix_min..mix_max} − 1 nuisance components and token noise from the training
    distribution; identical in form to clean_band when mix_max = 1 and noise = "none".
    """
    if kind not in PROBE_KINDS:
        raise UserError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    if c0 < 2 or o0 < 0 or o0 + c0 > cfg.vocab_size:
        raise UserError(f"band [{o0}, {o0 + c0}) must lie within the vocabulary and have c0 >= 2")
    rng = np.random.default_rng(seed)
    length = cfg.seq_len + 1
    d_N, _ = sample_steps(cfg, np.full(n, c0), rng)
    a_N = rng.integers(0, c0, size=n)
    anchor_NxK = cyclic_tokens(c0, o0, d_N, a_N, length)
    if kind == "clean_band":
        tokens_NxK = anchor_NxK.astype(np.int32)
    else:
        used_NxM = _used_slots(cfg, n, rng)
        c, o, d, a, _ = _sample_components(cfg, (n, cfg.mix_max - 1), rng)
        t_NxMxK = np.concatenate([anchor_NxK[:, None, :], cyclic_tokens(c, o, d, a, length)], axis=1)
        w_NxM = np.where(used_NxM, _component_weights(cfg, used_NxM.shape, rng), 0.0)
        tokens_NxK = _mix_to_tokens(cfg, t_NxMxK, w_NxM, rng)
    state_NxL = ((a_N[:, None] + d_N[:, None] * np.arange(cfg.seq_len)) % c0).astype(np.int32)
    return ProbeSplit(
        x_NxL=tokens_NxK[:, :-1],
        y_NxL=tokens_NxK[:, 1:],
        state_NxL=state_NxL,
        d_N=d_N,
        a_N=a_N,
        c0=c0,
        o0=o0,
        kind=kind,
    )
