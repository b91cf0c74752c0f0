"""plots.py: every figure on synthetic data: labelled axes, one legend entry per tier, atomic PNG writes."""

import sys

import numpy as np
from matplotlib.figure import Figure

from spectral_jax import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _axes(fig, n_legend=None):
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip()
    if n_legend is not None:
        assert len(ax.get_legend().get_texts()) == n_legend
    return ax


def test_plot_spectra_one_entry_per_tier():
    spec = {f"B={b}": np.arange(64, 0, -1.0) ** -(1 + b / 10) for b in (1, 2, 4)}
    spec["B=8"] = np.zeros(64)  # all-zero spectrum keeps its entry
    ax = _axes(plots.plot_spectra(spec, title="t", ylabel="normalised eigenvalue", window=(8, 17)), n_legend=4)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    line = ax.get_lines()[0]
    assert np.isclose(line.get_ydata().sum(), 1.0)  # trace-normalised
    raw = plots.plot_spectra({"B=1": [3.0, 2.0, 1.0]}, title="t", ylabel="eigenvalue", normalize=False)
    assert list(_axes(raw, n_legend=1).get_lines()[0].get_ydata()) == [3.0, 2.0, 1.0]


def test_plot_alpha_vs_eps():
    pts = [dict(family=f, batch=b, alpha=0.1 * b + k, eps_tok=b) for k, f in enumerate("ab") for b in (1, 2, 4)]
    fig = plots.plot_alpha_vs_eps(pts, rho=0.9, p_value=0.04, xlabel="normalised early alpha_tail")
    ax = _axes(fig, n_legend=2)
    assert ax.get_xlabel() == "normalised early alpha_tail"
    assert "rho = 0.900" in ax.get_title() and "p = 0.04" in ax.get_title()
    assert sum(t.get_text().startswith("B=") for t in ax.texts) == 6
    nan_rho = _axes(plots.plot_alpha_vs_eps(pts[:3], rho=float("nan")))
    assert "rho" not in nan_rho.get_title()


def test_plot_loss_curves_and_progress_and_gain_plane():
    curves = {f"B={b}": ([0, 10, 20, 40], [9, 5, None, 4]) for b in (1, 2, 4)}
    ax = _axes(plots.plot_loss_curves(curves, target=4.5), n_legend=3)
    assert ax.get_xscale() == "log" and any(abs(line.get_ydata()[0] - 4.5) < 1e-12 for line in ax.get_lines())
    rows = [dict(fraction=f, window=w, rho=r) for f, r in ((0.1, 0.5), (0.2, float("nan"))) for w in ([2, 8], [8, 17])]
    ax = _axes(plots.plot_spearman_vs_progress(rows), n_legend=2)
    assert ax.get_ylim() == (-1.05, 1.05)
    trans = [
        dict(a="rope", b="muon", g_tok=0.4, g_thr=-0.1, label="learning"),
        dict(name="muon->untied", g_tok=0.1, g_thr=0.2, label="throughput"),
    ]
    ax = _axes(plots.plot_gain_plane(trans), n_legend=2)
    assert {t.get_text() for t in ax.texts} == {"rope->muon", "muon->untied"}


def test_save_figure_atomic_png(tmp_path):
    before = "matplotlib.pyplot" in sys.modules
    fig = plots.plot_loss_curves({"B=1": ([1, 2], [3, 2])})
    path = plots.save_figure(fig, tmp_path / "sub" / "f.png")
    assert path == tmp_path / "sub" / "f.png" and path.read_bytes()[:8] == PNG
    plots.save_figure(fig, path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temp file left behind
    assert ("matplotlib.pyplot" in sys.modules) == before  # never pulls in pyplot


def test_spectra_plot_of_only_all_zero_spectra_draws_an_empty_panel(tmp_path):
    """A one-tier run whose every gradient spectrum is zero (zero-initialised head) must not crash on log axes."""
    fig = plots.plot_spectra({"B=1": np.zeros(32)}, title="t", ylabel="y", window=(8, 17))
    plots.save_figure(fig, tmp_path / "zero.png")
    assert (tmp_path / "zero.png").stat().st_size > 1000
