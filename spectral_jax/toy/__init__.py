"""Modular-arithmetic toy: the cyclic-sequence task, Fourier feature probes and analytic Fourier models."""

from spectral_jax.toy.fourier import (
    PROBE_BANDS,
    FourierProbe,
    band_concentration,
    band_sweep,
    conditional_means,
    fourier_energy,
    fourier_probe,
    gini,
    pca_fourier,
    probe_hidden,
    task_frequency_set,
)
from spectral_jax.toy.task import Latents, ProbeSplit, Split, TaskConfig, make_task, probe_split, sample_split

__all__ = [
    "PROBE_BANDS",
    "FourierProbe",
    "Latents",
    "ProbeSplit",
    "Split",
    "TaskConfig",
    "band_concentration",
    "band_sweep",
    "conditional_means",
    "fourier_energy",
    "fourier_probe",
    "gini",
    "make_task",
    "pca_fourier",
    "probe_hidden",
    "probe_split",
    "sample_split",
    "task_frequency_set",
]
