"""Modular-arithmetic toy: the cyclic-sequence task, the toy transformer chain, training, probes and analytic
Fourier models."""

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
from spectral_jax.toy.model import (
    EXPECTED_PARAMS,
    STAGES,
    ToyDims,
    build_toy_model,
    hidden_and_logits,
    init_toy_model,
    toy_config,
    toy_param_count,
)
from spectral_jax.toy.probes import (
    ToyProbeConfig,
    ToyProber,
    centred_eigenvalues,
    last_states,
    per_sample_gradient_singular_values,
)
from spectral_jax.toy.task import Latents, ProbeSplit, Split, TaskConfig, make_task, probe_split, sample_split
from spectral_jax.toy.train import ToyRun, ToyTrainConfig, toy_optimizer, train_toy

__all__ = [
    "EXPECTED_PARAMS",
    "PROBE_BANDS",
    "STAGES",
    "FourierProbe",
    "Latents",
    "ProbeSplit",
    "Split",
    "TaskConfig",
    "ToyDims",
    "ToyProbeConfig",
    "ToyProber",
    "ToyRun",
    "ToyTrainConfig",
    "band_concentration",
    "band_sweep",
    "build_toy_model",
    "centred_eigenvalues",
    "conditional_means",
    "fourier_energy",
    "fourier_probe",
    "gini",
    "hidden_and_logits",
    "init_toy_model",
    "last_states",
    "make_task",
    "pca_fourier",
    "per_sample_gradient_singular_values",
    "probe_hidden",
    "probe_split",
    "sample_split",
    "task_frequency_set",
    "toy_config",
    "toy_optimizer",
    "toy_param_count",
    "train_toy",
]
