"""Token efficiency, gains, checkpoint selection, min-max normalisation and Spearman (docs/method.md §1.6, §3.2).

Pure host-side functions over tidy records (dicts). Definitions:

- T(B), tokens to target: training tokens at the first eval (in step order, step > 0) whose validation loss is
  <= the target. None if the target is never reached. (The reference's Baseline stops on `<=`, later scripts
  on `<`; with continuous losses the two agree.)
- eps_tok(B) = T(B) / min_B' T(B') over the tiers of one family that reached the target (1.0 = the most
  token-efficient tier); None for a tier that did not.
- TokGain(a->b) = T(a)/T(b) - 1, ThrGain(a->b) = Q(b)/Q(a) - 1 (Q = training throughput, tokens/s);
  log gains g_tok = ln(T(a)/T(b)), g_thr = ln(Q(b)/Q(a)). Positive = b is better.
- T(B) below one eval: the crossing of the target interpolated linearly between the two evals around it
  (`tokens_to_target_interpolated`); the batch sweep's eps_tok uses it.
- Early points (never step 0, the same initial model for every tier): the probe record nearest in training tokens
  to fraction * T(B) (default 20 %, retrospective), ties to the earlier record; nearest to one token count shared
  by every tier (known online); or the first record at or below an early loss (matched early loss, online).
- Matched loss (the reference toy's `common_loss_targets` / `matched_loss_rows`): targets are the n quantiles
  (linspace(0, 1, n), numpy's linear interpolation) of the pooled losses of all runs restricted to
  [max of per-run minima, min of per-run maxima], de-duplicated and sorted ascending; per target the row with
  argmin |val_loss - target| (first such row on ties; no requirement to be below the target).
- Min-max: a~ = (a - min) / (max - min) over one family's tiers. If max == min every value maps to NaN (there
  is no ordering to normalise), and a Spearman over such values is NaN as well.
- Spearman rho: average ranks for ties, Pearson correlation of the ranks (scipy.stats.spearmanr), over the pairs
  where both values are finite. NaN (rho and p) with < 3 such pairs or zero rank variance (the reference toy's
  `safe_spearman`). Two-sided p: for n <= 9 exact, the fraction of the n! permutations of y's ranks with
  |rho_perm| >= |rho| (scipy.stats.permutation_test); for n > 9 scipy's Student-t approximation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

from spectral_jax import spectra as _spectra

Window = tuple[int, int]


# ---- T(B), eps_tok, gains ------------------------------------------------------------------------------
def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def tokens_to_target(evals: Sequence[Mapping], target: float) -> int | None:
    """T(B): `tokens` of the first eval (by step, step > 0) with val_loss <= target; None if never reached."""
    for row in sorted(evals, key=lambda r: r["step"]):
        if row["step"] > 0 and _finite(row.get("val_loss")) and row["val_loss"] <= target:
            return int(row["tokens"])
    return None


def tokens_to_target_interpolated(evals: Sequence[Mapping], target: float) -> float | None:
    """T(B) below one eval: the tokens at which the val-loss curve crosses `target`, linearly interpolated between
    the last eval above it and the first eval (step > 0) at or below it; that eval's tokens when the one before
    is not above the target. None if never reached."""
    rows = sorted((r for r in evals if _finite(r.get("val_loss"))), key=lambda r: r["step"])
    for i, row in enumerate(rows):
        if row["step"] > 0 and row["val_loss"] <= target:
            prev = rows[i - 1] if i > 0 else None
            if prev is None or not prev["val_loss"] > target:
                return float(row["tokens"])
            share = (prev["val_loss"] - target) / (prev["val_loss"] - row["val_loss"])
            return float(prev["tokens"] + share * (row["tokens"] - prev["tokens"]))
    return None


def token_efficiency(tokens_by_batch: Mapping[Hashable, int | None]) -> dict[Hashable, float | None]:
    """eps_tok(B) = T(B) / min_B' T(B') over the tiers that reached the target; None for the others."""
    for b, t in tokens_by_batch.items():
        if t is not None and not t > 0:
            raise ValueError(f"tokens to target of tier {b!r} is {t}; expected a positive count or None")
    reached = [t for t in tokens_by_batch.values() if t is not None]
    best = min(reached) if reached else None
    return {b: (None if t is None else t / best) for b, t in tokens_by_batch.items()}


def _positive(name: str, v) -> float:
    if v is None or not (float(v) > 0 and math.isfinite(float(v))):
        raise ValueError(
            f"{name} must be a positive finite number, got {v!r} (a tier that never reached the target has no T)"
        )
    return float(v)


def token_gain(t_a: float, t_b: float) -> float:
    """TokGain(a->b) = T(a)/T(b) - 1 (> 0: b needs fewer tokens)."""
    return _positive("T(a)", t_a) / _positive("T(b)", t_b) - 1.0


def throughput_gain(q_a: float, q_b: float) -> float:
    """ThrGain(a->b) = Q(b)/Q(a) - 1 (> 0: b processes more tokens per second)."""
    return _positive("Q(b)", q_b) / _positive("Q(a)", q_a) - 1.0


def log_token_gain(t_a: float, t_b: float) -> float:
    """g_tok(a->b) = ln(T(a)/T(b))."""
    return math.log(_positive("T(a)", t_a) / _positive("T(b)", t_b))


def log_throughput_gain(q_a: float, q_b: float) -> float:
    """g_thr(a->b) = ln(Q(b)/Q(a))."""
    return math.log(_positive("Q(b)", q_b) / _positive("Q(a)", q_a))


def gains(t_a: float, t_b: float, q_a: float, q_b: float) -> dict[str, float]:
    """All four gains of a transition a->b: {tok_gain, thr_gain, g_tok, g_thr} (the gain-plane coordinates)."""
    return dict(
        tok_gain=token_gain(t_a, t_b),
        thr_gain=throughput_gain(q_a, q_b),
        g_tok=log_token_gain(t_a, t_b),
        g_thr=log_throughput_gain(q_a, q_b),
    )


# ---- checkpoint selection ------------------------------------------------------------------------------
def select_at_tokens(records: Sequence[Mapping], tokens: float) -> Mapping:
    """The record whose "tokens" is nearest to `tokens`; on a tie the earlier (fewer tokens) one."""
    if not records:
        raise ValueError("no records to select from")
    return min(records, key=lambda r: (abs(r["tokens"] - tokens), r["tokens"]))


def after_start(records: Sequence[Mapping]) -> list[Mapping]:
    """Records after step 0: the initial model is the same for every tier, so it is never an early point."""
    return [r for r in records if r.get("step", 1) > 0]


def select_first_below(records: Sequence[Mapping], loss: float) -> Mapping | None:
    """The first record (by step, step > 0) whose val_loss is at or below `loss`: the matched-early-loss point,
    known online. None if no record gets there."""
    for r in sorted(after_start(records), key=lambda r: r["step"]):
        if _finite(r.get("val_loss")) and r["val_loss"] <= loss:
            return r
    return None


EARLY_KINDS = ("fraction", "tokens", "loss")


def exact_steps(
    evals: Sequence[Mapping],
    *,
    target: float,
    tokens_per_step: int,
    last_step: int,
    fractions: Sequence[float] = (),
    tokens: Sequence[float] = (),
    losses: Sequence[float] = (),
) -> dict[tuple[str, float], int | None]:
    """The exact optimizer step of early points of one run, keyed ("fraction" | "tokens" | "loss", value) (>= 1,
    <= last_step; None where it does not exist): a fraction of the interpolated T(B), a number of training tokens
    (both rounded to the nearest step), and the first eval at or below a val loss."""
    T = tokens_to_target_interpolated(evals, target)

    def clip(step: int | None) -> int | None:
        return None if step is None or step > last_step else max(1, step)

    out: dict[tuple[str, float], int | None] = {}
    for f in fractions:
        out["fraction", f] = clip(round(f * T / tokens_per_step)) if T else None
    for t in tokens:
        out["tokens", t] = clip(round(t / tokens_per_step))
    for loss in losses:
        crossed = select_first_below(evals, loss)
        out["loss", loss] = clip(crossed["step"]) if crossed else None
    return out


def select_at_fraction(records: Sequence[Mapping], total_tokens: float, fraction: float = 0.2) -> Mapping:
    """The record nearest to fraction * total_tokens (e.g. 20 % of T(B)); ties to the earlier one."""
    if total_tokens is None or not total_tokens > 0:
        raise ValueError(f"total_tokens must be positive, got {total_tokens!r}")
    return select_at_tokens(records, fraction * total_tokens)


def common_loss_targets(curves: Mapping[Hashable, Sequence[float]], n: int = 5) -> list[float]:
    """n quantiles (linspace 0..1) of the pooled losses inside [max of run minima, min of run maxima].

    `curves` maps a run (tier) to its logged losses; non-finite losses and empty runs are ignored. Returns the
    de-duplicated targets in ascending order (so possibly fewer than n). ValueError if no run has a finite
    loss or the runs' loss ranges do not overlap (including touching at a single value, as the reference).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    finite = {k: np.asarray([v for v in c if _finite(v)], float) for k, c in curves.items()}
    finite = {k: c for k, c in finite.items() if c.size}
    if not finite:
        raise ValueError("no finite losses to match")
    lo = max(float(c.min()) for c in finite.values())
    hi = min(float(c.max()) for c in finite.values())
    if hi <= lo:
        raise ValueError(
            f"the runs' loss ranges do not overlap: max of per-run minima {lo:.6g} >= min of "
            f"per-run maxima {hi:.6g} (runs: {sorted(map(str, finite))})"
        )
    pooled = np.concatenate(list(finite.values()))
    pooled = pooled[(pooled >= lo) & (pooled <= hi)]
    return [float(q) for q in np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, n)))]


def matched_loss_rows(rows: Sequence[Mapping], targets: Sequence[float]) -> list[Mapping]:
    """Per target, the row with argmin |val_loss - target| (first on ties); rows without a finite loss skipped."""
    good = [r for r in rows if _finite(r.get("val_loss"))]
    if not good:
        raise ValueError("no rows with a finite val_loss to match")
    return [min(good, key=lambda r: abs(r["val_loss"] - t)) for t in targets]


# ---- min-max and Spearman ------------------------------------------------------------------------------
def minmax_normalize(values: Mapping[Hashable, float | None]) -> dict[Hashable, float | None]:
    """(a - min)/(max - min) over the finite values; None/non-finite stay None; max == min gives NaN for all."""
    good = [float(v) for v in values.values() if _finite(v)]
    lo, hi = (min(good), max(good)) if good else (0.0, 0.0)
    out: dict = {}
    for k, v in values.items():
        if not _finite(v):
            out[k] = None
        elif hi == lo:
            out[k] = float("nan")
        else:
            out[k] = (float(v) - lo) / (hi - lo)
    return out


@dataclasses.dataclass(frozen=True)
class SpearmanResult:
    rho: float  # NaN when undefined
    p_value: float  # two-sided; NaN when rho is
    n: int  # number of finite pairs used


def _rank_correlation_null(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided permutation p of Spearman's rho: the share of the n! orderings of y's ranks (x's held
    fixed) whose |rho| is at least the observed one."""
    rx = stats.rankdata(x)
    rx = rx - rx.mean()

    def abs_rho(ry, axis):
        ry = ry - ry.mean(axis=axis, keepdims=True)
        return np.abs((ry * rx).sum(axis)) / np.sqrt((rx @ rx) * (ry * ry).sum(axis))

    # |rho| with alternative "greater": the null is asymmetric under ties, so 2 min(p_less, p_greater) would not
    # be the share of |rho_perm| >= |rho|
    return float(
        stats.permutation_test(
            (stats.rankdata(y),),
            abs_rho,
            permutation_type="pairings",
            vectorized=True,
            n_resamples=np.inf,
            alternative="greater",
        ).pvalue
    )


_EXACT_MAX_N = 9


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> SpearmanResult:
    """Spearman rho (scipy.stats.spearmanr) over the finite pairs, with a two-sided p-value: exact permutation
    for n <= 9, scipy's t-approximation above. NaN with < 3 pairs or a constant side."""
    x = np.asarray([np.nan if v is None else v for v in x], float)
    y = np.asarray([np.nan if v is None else v for v in y], float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return SpearmanResult(float("nan"), float("nan"), n)
    res = stats.spearmanr(x, y)
    p = _rank_correlation_null(x, y) if n <= _EXACT_MAX_N else float(res.pvalue)
    return SpearmanResult(float(res.statistic), p, n)


# ---- early prediction ----------------------------------------------------------------------------------
def _probe_records(records: Sequence[Mapping], kind: str, layer: int | None, matrix: str | None) -> list[Mapping]:
    """Records of one kind (records without "kind" count as any), one layer / matrix; ValueError if the
    selection still mixes several (layer, matrix) series, since "nearest checkpoint" would then be ambiguous."""
    recs = [
        r
        for r in records
        if r.get("kind", kind) == kind
        and (layer is None or r.get("layer") == layer)
        and (matrix is None or r.get("matrix") == matrix)
    ]
    series = {(r.get("layer"), r.get("matrix")) for r in recs}
    if len(series) > 1:
        raise ValueError(
            f"{kind} records hold {len(series)} series (layer, matrix) = {sorted(series, key=str)}; "
            "pass layer= (and matrix=) to pick one"
        )
    return recs


def _eps(runs: Mapping[Hashable, Mapping]) -> dict:
    return token_efficiency({b: r.get("tokens_to_target") for b, r in runs.items()})


def early_prediction(
    runs: Mapping[Hashable, Mapping],
    *,
    fraction: float = 0.2,
    key: str = "alpha_tail",
    kind: str = "activation",
    layer: int | None = None,
    matrix: str | None = None,
    at_tokens: float | None = None,
) -> dict:
    """Early spectral value per tier vs eps_tok, and their Spearman correlation within the family.

    runs: {batch: {"tokens_to_target": T or None, "records": [probe records with "tokens", "step", key]}}.
    Each reached tier's record (of `kind`, `layer`, `matrix`; never step 0) nearest to fraction * T(B) is taken; with
    `at_tokens` every tier (reached or not) is read at that one token count instead (matched tokens).
    `early_alpha_tail` holds the record's `key` (alpha_tail by default); `early_alpha_tail_normalized` is its
    min-max over the reached tiers (docs/method.md §1.6). Spearman(early value, eps_tok) runs over reached tiers.

    Returns {"tiers": [{batch, tokens_to_target, eps_tok, early_tokens, early_step, early_val_loss,
    early_alpha_tail, early_alpha_tail_normalized}, ...] sorted by batch, "spearman_within", "p_value",
    "n", "key", "fraction", "at_tokens"}.
    """
    eps = _eps(runs)
    tiers, values = [], {}
    for b in sorted(runs):
        run = runs[b]
        T = run.get("tokens_to_target")
        row = dict(
            batch=b,
            tokens_to_target=T,
            eps_tok=eps[b],
            early_tokens=None,
            early_step=None,
            early_val_loss=None,
            early_alpha_tail=None,
            early_alpha_tail_normalized=None,
        )
        recs = after_start(_probe_records(run.get("records", ()), kind, layer, matrix))
        if recs and (at_tokens is not None or T is not None):
            rec = select_at_tokens(recs, at_tokens) if at_tokens is not None else select_at_fraction(recs, T, fraction)
            row.update(
                early_tokens=rec["tokens"],
                early_step=rec.get("step"),
                early_val_loss=rec.get("val_loss"),
                early_alpha_tail=rec.get(key),
            )
            if T is not None:
                values[b] = rec.get(key)
        tiers.append(row)
    normalized = minmax_normalize(values)
    for row in tiers:
        row["early_alpha_tail_normalized"] = normalized.get(row["batch"])
    bs = list(values)
    res = spearman([values[b] for b in bs], [eps[b] for b in bs])
    return dict(
        tiers=tiers,
        spearman_within=res.rho,
        p_value=res.p_value,
        n=res.n,
        key=key,
        fraction=None if at_tokens is not None else fraction,
        at_tokens=at_tokens,
    )


def spearman_across(families: Mapping[str, Sequence[Mapping]]) -> dict:
    """Across-family Spearman over the pooled min-max-normalised points, plus the within-family rhos.

    families: {family: the "tiers" rows of `early_prediction`}. Returns {"rho", "p_value", "n" (pooled),
    "within": {family: rho}, "mean_within" (mean of the finite within-family rhos; NaN if none)}.
    """
    xs, ys, within = [], [], {}
    for fam, rows in families.items():
        pts = [r for r in rows if _finite(r.get("eps_tok")) and _finite(r.get("early_alpha_tail_normalized"))]
        xs += [r["early_alpha_tail_normalized"] for r in pts]
        ys += [r["eps_tok"] for r in pts]
        within[fam] = spearman([r.get("early_alpha_tail") for r in rows], [r.get("eps_tok") for r in rows]).rho
    res = spearman(xs, ys)
    finite = [w for w in within.values() if math.isfinite(w)]
    return dict(
        rho=res.rho,
        p_value=res.p_value,
        n=res.n,
        within=within,
        mean_within=float(np.mean(finite)) if finite else float("nan"),
    )


def spearman_vs_progress(
    runs: Mapping[Hashable, Mapping],
    *,
    windows: Sequence[Window],
    fractions: Sequence[float],
    kind: str = "activation",
    layer: int | None = None,
    matrix: str | None = None,
    spectra: Callable[[Hashable, Mapping], np.ndarray] | None = None,
) -> list[dict]:
    """Spearman(alpha over each rank window at fraction f of T(B), eps_tok) across reached tiers (paper Fig. 8).

    alpha over (lo, hi) is read from the record's "alpha_{lo}_{hi}" key when the key is present (a None
    value, i.e. a failed fit, drops that tier); otherwise it is fitted with `spectral_jax.spectra.alpha` on
    `spectra(batch, record)`, the caller's loader of the raw spectrum. A missing key without `spectra` is a
    KeyError. Returns tidy rows {"fraction", "window": [lo, hi], "rho", "p_value", "n"}, fraction-major.
    """
    eps = _eps(runs)
    reached = {
        b: after_start(_probe_records(r.get("records", ()), kind, layer, matrix))
        for b, r in runs.items()
        if r.get("tokens_to_target") is not None
    }
    rows = []
    for f in fractions:
        chosen = {b: select_at_fraction(recs, runs[b]["tokens_to_target"], f) for b, recs in reached.items() if recs}
        for lo, hi in windows:
            name = f"alpha_{lo}_{hi}"
            xs, ys = [], []
            for b, rec in chosen.items():
                if name in rec:
                    a = rec[name]
                elif spectra is not None:
                    a = _spectra.alpha(spectra(b, rec), (lo, hi)).alpha
                else:
                    raise KeyError(
                        f"record of tier {b!r} at step {rec.get('step')} has no {name!r}; pass "
                        "spectra=callable(batch, record) -> raw spectrum to fit it"
                    )
                xs.append(a)
                ys.append(eps[b])
            res = spearman(xs, ys)
            rows.append(dict(fraction=float(f), window=[int(lo), int(hi)], rho=res.rho, p_value=res.p_value, n=res.n))
    return rows
