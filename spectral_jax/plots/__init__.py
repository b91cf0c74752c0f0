"""Figures from tidy result tables (paper Figs. 1a, 2, 3a, 5-10 and loss curves).

Every plotting function builds a stand-alone `matplotlib.figure.Figure` with its own Agg canvas and returns
it: nothing is registered with pyplot and the global backend is never changed, so importing this package is
safe inside notebooks. `save_figure` writes the file atomically. Legends carry one entry per batch tier (or
per window / family where that is the series); reference lines and rank windows are annotated in the axes
instead of the legend. `base` holds the figure helpers, `runs` the batch-sweep and chain figures, `ablations`
the ablation and LR-selection figures.
"""

from spectral_jax.plots.ablations import (
    plot_rho_by_layer,
    plot_rung_losses,
    plot_seed_control,
    plot_selected_lr,
    plot_tokens_vs_batch,
)
from spectral_jax.plots.base import save_figure, series_colors
from spectral_jax.plots.runs import (
    plot_alpha_summaries,
    plot_alpha_vs_eps,
    plot_gain_plane,
    plot_loss_curves,
    plot_spearman_vs_progress,
    plot_spectra,
    plot_spectral_atlas,
)
from spectral_jax.plots.seeds import plot_seeded_early, plot_seeded_tokens

__all__ = [
    "save_figure",
    "series_colors",
    "plot_spectra",
    "plot_alpha_vs_eps",
    "plot_loss_curves",
    "plot_spearman_vs_progress",
    "plot_gain_plane",
    "plot_alpha_summaries",
    "plot_spectral_atlas",
    "plot_tokens_vs_batch",
    "plot_rho_by_layer",
    "plot_seed_control",
    "plot_rung_losses",
    "plot_selected_lr",
    "plot_seeded_tokens",
    "plot_seeded_early",
]
