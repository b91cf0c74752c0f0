"""`analyze`: one summary row per (kind, path), as a pandas DataFrame when pandas is installed, else `Rows`.

    table = sj.analyze(sj.weight_spectra(model), sj.gradient_spectrum(loss, model, examples, where="out"))
    table.to_csv("spectra.csv")

Columns (Spectrum.summary): kind, path, quantity, n, samples, shape, tail_window, alpha_tail (+_r2,
_ci_low/_ci_high), alpha_head (+_r2), alpha_<lo>_<hi> (+_r2) of the scaled window bank, rankme, soft_rank,
hard_rank, stable_rank, participation_ratio, head_mass10, warning. NaN where a value does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spectral_jax.lens.spectrum import Spectrum
from spectral_jax.records import write_csv

_FIRST = ("kind", "path", "quantity", "n", "samples", "shape", "tail_window")


class Rows(list):
    """Summary rows (dicts) when pandas is not installed; `to_csv` writes them atomically."""

    def columns(self) -> list[str]:
        cols = list(_FIRST)
        for row in self:
            cols += [k for k in row if k not in cols]
        return [c for c in cols if c != "warning"] + ["warning"]

    def to_csv(self, path) -> None:
        write_csv(path, self, self.columns())


def _spectra(items) -> Iterable[Spectrum]:
    for item in items:
        if isinstance(item, Spectrum):
            yield item
        elif isinstance(item, Mapping):
            yield from _spectra(item.values())
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            yield from _spectra(item)
        else:
            raise TypeError(f"analyze takes Spectrum objects, dicts or lists of them, got {type(item).__name__}")


def analyze(*spectra, tail=None, bank=None, bootstrap: int = 1000, as_frame: bool | None = None):
    """Summary rows of every Spectrum given (Spectrum objects, dicts {path: Spectrum} or lists of either).

    Args:
      tail: the tail window for every row (default: each spectrum's own, d12's [100, 200] of 768 scaled).
      bank: windows for alpha_<lo>_<hi> (default: the paper's bank scaled to each spectrum's length).
      bootstrap: resamples for the tail alpha's 95 % interval (0: none).
      as_frame: True requires pandas, False gives `Rows`; None: a DataFrame when pandas imports.
    Returns:
      A pandas DataFrame, or `Rows` (a list of dicts with `to_csv`).
    """
    rows = Rows(s.summary(tail=tail, bank=bank, bootstrap=bootstrap) for s in _spectra(spectra))
    if as_frame is False:
        return rows
    try:
        import pandas as pd  # noqa: PLC0415 (optional: the `pandas` extra)
    except ImportError:
        if as_frame:
            raise ImportError("analyze(as_frame=True) needs pandas: pip install 'spectral-jax[pandas]'") from None
        return rows
    frame = pd.DataFrame(rows, columns=rows.columns())
    return frame
