"""Pure math on spectra (eigenvalues of a covariance, or singular values of a gradient matrix).

Conventions (docs/method.md §1.5–1.6, §6.5):
- A spectrum is any 1-D array of non-negative values; functions sort it descending themselves.
- Ranks are 1-indexed and windows are inclusive: window (lo, hi) covers ranks lo, lo+1, ..., hi.
- "alpha" here is the rank-decay exponent of lambda_j ~ j^-alpha fitted over a rank window; it is NOT
  WeightWatcher's ESD tail exponent p(lambda) ~ lambda^-alpha.
- Trace normalisation does not change alpha (it shifts the intercept only) but does fix the intercept and
  every mass-based summary, so summaries are computed on lambda / sum(lambda).

Every function takes numpy-convertible input and returns numpy / Python floats. `alpha_jnp` and
`rankme_jnp` are traceable jnp twins for use inside jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

Window = tuple[int, int]

WINDOW_BANK: tuple[Window, ...] = ((100, 200), (200, 400), (400, 800))
"""The paper's tail window bank (ranks of the trace-normalised covariance spectrum)."""

LOCAL_WINDOWS: tuple[Window, ...] = ((10, 40), (40, 90), (100, 200))
"""Local windows of the paper's Figure 8 (Spearman of alpha vs token efficiency over progress)."""

HEAD_WINDOW: Window = (1, 10)
"""alpha_head window: the toy code's ranks 1-10 (the paper gives none for the LM)."""

_REFERENCE_WIDTH = 768  # d12 width, the tier whose [100, 200] window `scaled_tail_window` scales


@dataclasses.dataclass(frozen=True)
class AlphaFit:
    """OLS fit of ln(value) = intercept - alpha * ln(rank) over an inclusive 1-indexed rank window."""

    alpha: float
    intercept: float
    r2: float
    window: Window
    n_points: int
    ci: tuple[float, float] | None = None  # bootstrap percentile interval of alpha, if asked for


def _as_spectrum(values, name: str = "spectrum") -> np.ndarray:
    """Validate and sort descending. Tiny negative eigenvalues from round-off are clipped to 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(v)):
        bad = int(np.sum(~np.isfinite(v)))
        raise ValueError(f"{name} has {bad} non-finite values out of {v.size}; refusing to summarise NaN/inf")
    scale = float(np.max(np.abs(v)))
    if np.any(v < -1e-6 * scale):
        raise ValueError(
            f"{name} has negative values down to {v.min():.3g} (max {scale:.3g}); "
            "pass eigenvalues of a PSD matrix or singular values"
        )
    return np.sort(np.clip(v, 0.0, None))[::-1]


def trace_normalize(values) -> np.ndarray:
    """lambda_j / sum_k lambda_k, sorted descending (sums to 1)."""
    v = _as_spectrum(values)
    total = v.sum()
    if total <= 0:
        raise ValueError(
            f"spectrum of {v.size} values is all zeros (e.g. the gradients of a zero-initialised matrix at step 0); "
            "nothing to normalise or fit"
        )
    return v / total


def _check_window(window: Window, n: int) -> tuple[int, int]:
    lo, hi = (int(w) for w in window)
    if lo < 1 or hi <= lo:
        raise ValueError(f"rank window {window} must satisfy 1 <= lo < hi (1-indexed, inclusive)")
    if hi > n:
        raise ValueError(
            f"rank window {window} reaches past the spectrum's length {n}; "
            f"use a window with hi <= {n} (e.g. spectra.scaled_tail_window for narrow models)"
        )
    return lo, hi


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    ss_res = float(np.sum((y - (intercept + slope * x)) ** 2))
    ss_tot = float(np.sum((y - ym) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, intercept, r2


def alpha(
    values, window: Window = (100, 200), *, normalize: bool = True, bootstrap: int = 0, ci: float = 0.95, seed: int = 0
) -> AlphaFit:
    """alpha(I) = -OLS slope of (ln j, ln lambda_j) for ranks j in I = [lo, hi] (1-indexed, inclusive).

    Non-positive values inside the window are dropped (as the reference's scripts 9+ do); fewer than two
    remaining points is an error. With `bootstrap=n > 0`, the (rank, value) pairs of the window are
    resampled n times and `ci` holds the percentile interval of alpha at level `ci`.
    """
    v = trace_normalize(values) if normalize else _as_spectrum(values)
    lo, hi = _check_window(window, v.size)
    ranks = np.arange(lo, hi + 1, dtype=np.float64)
    vals = v[lo - 1 : hi]
    keep = vals > 0
    if keep.sum() < 2:
        raise ValueError(
            f"rank window {window} of a length-{v.size} spectrum holds {int(keep.sum())} "
            "positive values; need at least 2 to fit a power law"
        )
    x, y = np.log(ranks[keep]), np.log(vals[keep])
    slope, intercept, r2 = _ols(x, y)
    interval = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(bootstrap, x.size))
        xb, yb = x[idx], y[idx]
        xc = xb - xb.mean(1, keepdims=True)
        sxx = np.sum(xc**2, axis=1)
        ok = sxx > 0
        alphas = -np.sum(xc * (yb - yb.mean(1, keepdims=True)), axis=1)[ok] / sxx[ok]
        q = (1.0 - ci) / 2.0
        interval = (float(np.quantile(alphas, q)), float(np.quantile(alphas, 1.0 - q)))
    return AlphaFit(alpha=-slope, intercept=intercept, r2=r2, window=(lo, hi), n_points=int(x.size), ci=interval)


def alpha_head(values, window: Window = HEAD_WINDOW) -> AlphaFit:
    """alpha over the head ranks (default 1-10)."""
    return alpha(values, window)


def tail_window(preset: str) -> Window:
    """The alpha_tail rank window of a preset: d12 [100,200], d36 [200,400], d48 [400,800], tiny [8, 17] (d12's
    scaled by width, `scaled_tail_window`). Looked up in `spectral_jax.presets`."""
    from spectral_jax.presets import get_preset  # noqa: PLC0415 (presets builds on this module: no cycle)

    return get_preset(preset).tail_window


def scaled_tail_window(d_model: int) -> Window:
    """d12's [100, 200] scaled by d_model/768 (rounded, at least 2 points): the same relative rank band."""
    lo = max(1, round(100 * d_model / _REFERENCE_WIDTH))
    hi = max(lo + 1, round(200 * d_model / _REFERENCE_WIDTH))
    return (lo, min(hi, d_model))


def window_bank(n: int, bank: Sequence[Window] = WINDOW_BANK) -> tuple[Window, ...]:
    """The windows of `bank` that fit in a spectrum of length n."""
    return tuple(w for w in bank if w[1] <= n)


def spectral_entropy(values) -> float:
    """H = -sum p_j ln p_j with p = lambda / sum(lambda) (0 ln 0 = 0)."""
    p = trace_normalize(values)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def rankme(values) -> float:
    """RankMe = exp(H(p)), p = lambda / sum(lambda) (paper App. C; applied to the spectrum as given).

    RankMe of covariance eigenvalues differs from RankMe of the data's singular values (sigma vs sigma^2);
    the paper's activation RankMe uses covariance eigenvalues.
    """
    return float(np.exp(spectral_entropy(values)))


def soft_rank(values) -> float:
    """Soft spectral rank = exp(spectral entropy); by definition identical to RankMe."""
    return rankme(values)


def hard_rank(values, rel_threshold: float = 1e-2) -> int:
    """Hard spectral rank = #{j : lambda_j >= rel_threshold * lambda_1}.

    A relative threshold (default 1 % of the top eigenvalue) makes the count scale-free, so spectra of
    different checkpoints and widths compare directly.
    """
    v = _as_spectrum(values)
    if v[0] <= 0:
        return 0
    return int(np.sum(v >= rel_threshold * v[0]))


def stable_rank(values) -> float:
    """Stable rank = sum_j lambda_j / max_j lambda_j (for singular values pass sigma^2 to get ||W||_F^2/||W||_2^2)."""
    v = _as_spectrum(values)
    if v[0] <= 0:
        raise ValueError("stable rank of an all-zero spectrum is undefined")
    return float(v.sum() / v[0])


def participation_ratio(values) -> float:
    """PR = (sum lambda)^2 / sum lambda^2, between 1 and the spectrum's length."""
    v = _as_spectrum(values)
    s2 = float(np.sum(v**2))
    if s2 <= 0:
        raise ValueError("participation ratio of an all-zero spectrum is undefined")
    return float(v.sum() ** 2 / s2)


def head_mass(values, k: int = 10) -> float:
    """Fraction of the trace in the k largest values."""
    return float(trace_normalize(values)[:k].sum())


def js_divergence(p_values, q_values, eps: float = 1e-12) -> float:
    """Jensen-Shannon divergence (natural log) between two spectra as distributions over rank.

    Both are sorted descending, truncated to their common length n, normalised to sum 1 (+eps), then
    JS = KL(p||m)/2 + KL(q||m)/2 with m = (p+q)/2 and eps inside the logs (the reference's toy definition).
    """
    p, q = _as_spectrum(p_values, "p_values"), _as_spectrum(q_values, "q_values")
    n = min(p.size, q.size)
    p, q = p[:n], q[:n]
    p = p / (p.sum() + eps)
    q = q / (q.sum() + eps)
    m = 0.5 * (p + q)
    kl = lambda a, b: float(np.sum(a * (np.log(a + eps) - np.log(b + eps))))  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def summarize(
    values,
    *,
    tail: Window | None = None,
    head: Window = HEAD_WINDOW,
    bank: Sequence[Window] = WINDOW_BANK,
    prefix: str = "",
) -> dict[str, float]:
    """Flat dict of every summary (for tidy records): alpha over the tail, head and each bank window that
    fits (with R^2), RankMe, hard/stable rank, participation ratio and top-10 mass."""
    v = _as_spectrum(values)
    out: dict[str, float] = {}

    def put_fit(name: str, w: Window) -> None:
        fit = alpha(v, w)
        out[f"{prefix}{name}"] = fit.alpha
        out[f"{prefix}{name}_r2"] = fit.r2

    if tail is not None:
        put_fit("alpha_tail", tail)
    if head[1] <= v.size:
        put_fit("alpha_head", head)
    for w in window_bank(v.size, bank):
        put_fit(f"alpha_{w[0]}_{w[1]}", w)
    out[f"{prefix}rankme"] = rankme(v)
    out[f"{prefix}hard_rank"] = float(hard_rank(v))
    out[f"{prefix}stable_rank"] = stable_rank(v)
    out[f"{prefix}participation_ratio"] = participation_ratio(v)
    out[f"{prefix}head_mass10"] = head_mass(v, 10)
    return out


def alpha_jnp(values: jnp.ndarray, window: Window) -> jnp.ndarray:
    """Traceable alpha over a static window of a descending spectrum (assumes positive values in window)."""
    lo, hi = window
    p = values / jnp.sum(values)
    x = jnp.log(jnp.arange(lo, hi + 1, dtype=values.dtype))
    y = jnp.log(p[lo - 1 : hi])
    xc = x - x.mean()
    return -jnp.sum(xc * (y - y.mean())) / jnp.sum(xc**2)


def rankme_jnp(values: jnp.ndarray) -> jnp.ndarray:
    """Traceable RankMe = exp(-sum p ln p)."""
    p = values / jnp.sum(values)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
