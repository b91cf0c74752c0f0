"""The learning-vs-throughput taxonomy of architecture transitions (paper §4; the rule is ours, the paper's
assignments are qualitative). Pure: log gains and spectral-feature deltas in, a label and its reason out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from spectral_jax.fields import option


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


ACTIVATION_LED = "activation-led learning"
GRADIENT_LED = "gradient-led learning"
THROUGHPUT_LED = "throughput execution-leaning"
MIXED = "mixed/tradeoff"
TAXONOMY_LABELS = (ACTIVATION_LED, GRADIENT_LED, THROUGHPUT_LED, MIXED)

ACTIVATION_FEATURES = ("d_act_alpha_head", "d_act_head_mass", "path_sep_act")
GRADIENT_FEATURES = ("d_grad_log_rankme", "d_grad_alpha", "d_grad_head_mass", "path_sep_grad")


@dataclasses.dataclass(frozen=True)
class TaxonomyThresholds:
    """What counts as a change. Gains are natural-log (g_tok, g_thr); spectral features are deltas b - a of the
    final-checkpoint summaries, and path separations are mean JS divergences over matched-loss checkpoints.

    A transition's activation score is max(|feature| / threshold) over ACTIVATION_FEATURES, its gradient score
    the same over GRADIENT_FEATURES (features that are missing are skipped); a score >= 1 is a shift."""

    tok: float = option(0.05, "|g_tok| beyond this: b needs fewer / more tokens (about 5 %)")
    thr: float = option(0.05, "|g_thr| beyond this: b runs faster / slower")
    act_alpha_head: float = option(0.10, "|delta alpha_head| of the final activation spectrum")
    act_head_mass: float = option(0.02, "|delta top-10 mass| of the final activation spectrum")
    act_path_js: float = option(0.02, "mean activation-spectrum JS along the matched-loss path")
    grad_log_rankme: float = option(0.10, "|delta ln RankMe| of the final gradient spectrum (about 10 %)")
    grad_alpha: float = option(0.10, "|delta alpha_tail| of the final gradient spectrum")
    grad_head_mass: float = option(0.02, "|delta top-10 mass| of the final gradient spectrum")
    grad_path_js: float = option(0.02, "mean gradient-spectrum JS along the matched-loss path")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"taxonomy threshold {f.name} must be positive and finite, got {v!r}")


_FEATURE_THRESHOLD = dict(
    d_act_alpha_head="act_alpha_head",
    d_act_head_mass="act_head_mass",
    path_sep_act="act_path_js",
    d_grad_log_rankme="grad_log_rankme",
    d_grad_alpha="grad_alpha",
    d_grad_head_mass="grad_head_mass",
    path_sep_grad="grad_path_js",
)


def spectral_scores(
    features: Mapping[str, float | None], thresholds: TaxonomyThresholds = TaxonomyThresholds()
) -> tuple[float, float]:
    """(activation score, gradient score): the largest |feature| / threshold of each side; NaN if a side has
    no finite feature."""

    def score(names):
        vals = [
            abs(float(features[n])) / getattr(thresholds, _FEATURE_THRESHOLD[n])
            for n in names
            if _finite(features.get(n))
        ]
        return max(vals) if vals else float("nan")

    return score(ACTIVATION_FEATURES), score(GRADIENT_FEATURES)


def classify_transition(
    g_tok: float | None,
    g_thr: float | None,
    features: Mapping[str, float | None],
    thresholds: TaxonomyThresholds = TaxonomyThresholds(),
) -> dict:
    """Label one transition a -> b. The rule, in order:

    1. no label (None) when either gain is missing (a run that never reached the target);
    2. token gain (g_tok > tok) without a throughput loss (g_thr >= -thr) is LEARNING; it is activation-led when
       the activation score is >= 1 and at least the gradient score, gradient-led when the gradient score is
       >= 1 (and larger), and mixed/tradeoff when neither spectrum moved beyond its thresholds;
    3. throughput gain (g_thr > thr) with no token change either way (|g_tok| <= tok) is execution-leaning;
    4. everything else is mixed/tradeoff: a gain on one axis paid for on the other, a regression, or no
       change beyond the thresholds (the reason says which).

    Returns {"label", "reason", "act_score", "grad_score"}.
    """
    act, grad = spectral_scores(features, thresholds)
    out = dict(act_score=act, grad_score=grad)
    if not (_finite(g_tok) and _finite(g_thr)):
        return dict(out, label=None, reason="no gains: a run of the transition did not reach the target")
    t, q = thresholds.tok, thresholds.thr
    learn, worse = g_tok > t, g_tok < -t
    faster, slower = g_thr > q, g_thr < -q
    if learn and not slower:
        a = act if math.isfinite(act) else 0.0
        g = grad if math.isfinite(grad) else 0.0
        if a >= 1 and a >= g:
            return dict(out, label=ACTIVATION_LED, reason="token gain; the activation spectrum moved most")
        if g >= 1:
            return dict(out, label=GRADIENT_LED, reason="token gain; the gradient spectrum moved most")
        return dict(out, label=MIXED, reason="token gain without a spectral shift beyond the thresholds")
    if faster and not learn and not worse:
        return dict(out, label=THROUGHPUT_LED, reason="throughput gain at unchanged tokens to target")
    if learn and slower:
        reason = "token gain paid for in throughput"
    elif faster and worse:
        reason = "throughput gain paid for in tokens to target"
    elif worse or slower:
        reason = "regression: more tokens or lower throughput without a gain on the other axis"
    else:
        reason = "no change beyond the thresholds"
    return dict(out, label=MIXED, reason=reason)


__all__ = [
    "ACTIVATION_LED",
    "GRADIENT_LED",
    "THROUGHPUT_LED",
    "MIXED",
    "TAXONOMY_LABELS",
    "ACTIVATION_FEATURES",
    "GRADIENT_FEATURES",
    "TaxonomyThresholds",
    "spectral_scores",
    "classify_transition",
]
