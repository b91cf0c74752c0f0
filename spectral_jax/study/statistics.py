"""Statistics of one spectrum for the study (docs/method.md §3.7): alpha over rank windows, alpha past the head
(ranks [ceil(2 RankMe), n]) and RankMe. Pure NumPy on a spectrum; no sweep, model or trainer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spectral_jax import spectra
from spectral_jax.lens.spectrum import scaled_bank

PAST_HEAD = "past_head"  # alpha over ranks [ceil(2 RankMe), n]
MIN_PAST_HEAD_RANKS = 4
RANKME = "rankme"


def alpha_key(window: Sequence[int]) -> str:
    """The statistic's name for alpha over ranks [lo, hi]: "alpha[lo,hi]"."""
    lo, hi = window
    return f"alpha[{lo},{hi}]"


def windows_for(n: int, tail: Sequence[int], bank: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """The rank windows that fit a length-n spectrum: the tail window, the preset's bank, the scaled paper bank
    (a window that differs from an earlier one by one rank at its end is the same window)."""
    out: list[tuple[int, int]] = []
    for lo, hi in (tuple(tail), *map(tuple, bank), *scaled_bank(n)):
        if hi <= n and not any(lo == a and abs(hi - b) <= 1 for a, b in out):  # (17, 33) and (17, 34) are one
            out.append((lo, hi))
    return sorted(out)


def statistics(values: np.ndarray, wins: Sequence[tuple[int, int]]) -> dict[str, float]:
    """alpha per window ("alpha[lo,hi]"), alpha past the head, and RankMe of one spectrum (NaN where undefined)."""
    v = np.sort(np.clip(np.asarray(values, np.float64), 0, None))[::-1]
    out = {}
    for lo, hi in wins:
        out[alpha_key((lo, hi))] = _alpha(v, (lo, hi))
    r = spectra.rankme(v) if v.sum() > 0 else math.nan
    lo = math.ceil(2 * r) if math.isfinite(r) else v.size + 1
    out[PAST_HEAD] = _alpha(v, (lo, v.size)) if v.size - lo + 1 >= MIN_PAST_HEAD_RANKS else math.nan
    out[RANKME] = float(r)
    return out


def _alpha(v: np.ndarray, window: tuple[int, int]) -> float:
    try:
        return float(spectra.alpha(v, window).alpha)
    except ValueError:  # fewer than two positive values in the window
        return math.nan


__all__ = ["PAST_HEAD", "RANKME", "MIN_PAST_HEAD_RANKS", "alpha_key", "statistics", "windows_for"]
