"""`Spectrum`: one measured spectrum with its provenance, and its summary row (docs/method.md §1.5-1.6).

Every model-agnostic probe returns Spectrum objects keyed by path. `Spectrum.summary()` is one tidy row: alpha
(the rank-decay exponent, NOT WeightWatcher's ESD tail exponent) over the tail window and a window bank scaled
to the spectrum's length, alpha_head, RankMe / soft rank, hard and stable rank, participation ratio, top-10 mass,
R^2 of every fit and a bootstrap interval of the tail alpha. A degenerate spectrum (all zero, too short for a
window, numerical rank below a window) gives NaN there and says why in `warning`, never an exception.

Summaries are taken on the values as measured: covariance eigenvalues for activations, singular values for
gradients and weights (`quantity` says which), as the batch sweep's records always have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from spectral_jax import spectra

RANK_TOL = 1e-6  # values below this fraction of the largest are round-off (float32 eigen/singular values)
KINDS = ("activation", "gradient", "weight")


def scaled_bank(n: int) -> tuple[spectra.Window, ...]:
    """The paper's window bank (d12: ranks 100-200, 200-400, 400-800 of 768) scaled by n / 768, windows that fit."""
    out = []
    for lo, hi in spectra.WINDOW_BANK:
        a = max(1, round(lo * n / 768))
        b = max(a + 1, round(hi * n / 768))
        if b <= n and (a, b) not in out:
            out.append((a, b))
    return tuple(out)


def summary_fields(values, tail, head, bank) -> dict:
    """spectra.summarize, tolerant of short / degenerate spectra: a tail window that does not fit gives
    alpha_tail = None, head / bank windows that do not fit are omitted, fits that fail (fewer than two
    positive values) and all-zero spectra give None instead of raising, with the reason in "summary_note"."""
    for w in (tail, head):
        if w is not None and not 1 <= int(w[0]) < int(w[1]):
            raise ValueError(f"rank window {w} must satisfy 1 <= lo < hi (1-indexed, inclusive)")
    v = np.sort(np.clip(np.asarray(values, np.float64), 0.0, None))[::-1]
    n = v.size
    if n == 0:
        raise ValueError("empty spectrum")
    windows = [("alpha_tail", tail)] if tail is not None else []
    if head is not None and head[1] <= n:
        windows.append(("alpha_head", tuple(head)))
    windows += [(f"alpha_{w[0]}_{w[1]}", w) for w in spectra.window_bank(n, bank)]
    out: dict = {}
    rank = int((v > v[0] * RANK_TOL).sum()) if v[0] > 0 else 0  # numerical rank
    short = [name for name, w in windows if rank < w[1] <= n]
    if short and rank:
        out["summary_note"] = (
            f"numerical rank {rank} of {n} (fewer samples than dimensions?): {', '.join(short)} would fit "
            "round-off and are left out"
        )
    for name, w in windows:
        fit = None
        if w[1] <= min(n, rank):
            try:
                fit = spectra.alpha(v, w)
            except ValueError:
                fit = None
        out[name] = None if fit is None else fit.alpha
        out[f"{name}_r2"] = None if fit is None else fit.r2
    rest_keys = spectra.summarize(np.ones(n), tail=None, head=(1, n + 1), bank=())
    try:
        rest = spectra.summarize(v, tail=None, head=(1, n + 1), bank=())
    except ValueError as err:
        rest = dict.fromkeys(rest_keys)
        out["summary_note"] = str(err)  # why every summary is None (e.g. an all-zero spectrum)
    out.update(rest)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Spectrum:
    """A measured spectrum, descending float64 `values`, and where it came from.

    kind      "activation" (covariance eigenvalues of hidden states), "gradient" (singular values of the
              per-example gradient matrix M x P) or "weight" (singular values of the matrix)
    path      the '/'-joined path of the module output or parameter leaf
    samples   covariance rows (tokens) / examples M / rows of the weight matrix
    shape     hidden width (D,) / the leaf's shape / the matrix's (rows, cols) after any reshape
    note      how it was measured when that is not obvious (a reshape, an all-zero leaf that was skipped)
    """

    kind: str
    path: str
    values: np.ndarray
    samples: int
    shape: tuple[int, ...]
    note: str | None = None

    @property
    def quantity(self) -> str:
        return "eigenvalue" if self.kind == "activation" else "singular_value"

    def __len__(self) -> int:
        return int(np.size(self.values))

    def alpha(self, window: spectra.Window, *, bootstrap: int = 0) -> spectra.AlphaFit:
        """The rank-decay fit over one inclusive, 1-indexed rank window (spectra.alpha)."""
        return spectra.alpha(self.values, window, bootstrap=bootstrap)

    def default_tail(self) -> spectra.Window | None:
        """d12's [100, 200] of 768 scaled to this spectrum's length (None below 3 values)."""
        n = len(self)
        return spectra.scaled_tail_window(n) if n >= 3 else None

    def summary(
        self,
        *,
        tail: spectra.Window | None = None,
        head: spectra.Window = spectra.HEAD_WINDOW,
        bank: Sequence[spectra.Window] | None = None,
        bootstrap: int = 1000,
        seed: int = 0,
    ) -> dict:
        """One tidy row (module docstring). `tail` defaults to `default_tail()`, `bank` to `scaled_bank(len)`;
        `bootstrap` resamples of the tail window's points give alpha_tail_ci_low / _high (0: none)."""
        n = len(self)
        tail = tuple(tail) if tail is not None else self.default_tail()
        bank = scaled_bank(n) if bank is None else tuple(bank)
        row = {
            "kind": self.kind,
            "path": self.path,
            "quantity": self.quantity,
            "n": n,
            "samples": int(self.samples),
            "shape": "x".join(str(s) for s in self.shape),
            "tail_window": None if tail is None else f"{tail[0]}-{tail[1]}",
        }
        warnings = [self.note] if self.note else []
        if n == 0:
            return {**row, "warning": "; ".join(warnings + ["empty spectrum"])}
        fields = summary_fields(self.values, tail, head, bank)
        note = fields.pop("summary_note", None)
        if note:
            warnings.append(note)
        if tail is None:
            warnings.append(f"{n} values: too short for a tail window")
        elif tail[1] > n:
            warnings.append(f"tail window {tail} reaches past the {n} values")
        lo = hi = None
        if bootstrap and fields.get("alpha_tail") is not None:
            ci = spectra.alpha(self.values, tail, bootstrap=bootstrap, seed=seed).ci
            lo, hi = ci if ci is not None else (None, None)
        ordered = {k: fields.pop(k, None) for k in ("alpha_tail", "alpha_tail_r2")}
        ordered.update(alpha_tail_ci_low=lo, alpha_tail_ci_high=hi, **fields)
        ordered["soft_rank"] = ordered.get("rankme")
        row.update({k: (math.nan if v is None else v) for k, v in ordered.items()})
        row["warning"] = "; ".join(warnings) if warnings else ""
        return row

    def plot(self, ax=None, **kwargs):
        """Log-log rank plot of the trace-normalised spectrum on `ax` (a new figure when None); the Figure."""
        from spectral_jax.lens.figures import spectrum_axes  # noqa: PLC0415 (matplotlib only when drawing)

        return spectrum_axes([self], ax=ax, **kwargs)
