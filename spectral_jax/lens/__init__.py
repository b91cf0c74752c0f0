"""The model-agnostic layer: activation, per-example gradient and weight spectra of any JAX model.

  paths        leaves by '/'-joined path and the `where` selection (regex or predicate)
  spectrum     `Spectrum` (values + provenance) and its summary row
  activations  `activation_spectrum(fn, batches)`, `activation_spectra(model, batches, where=)` (NNX / linen capture)
  gradients    `gradient_spectrum(loss_fn, params, examples, where=)`: vmap(grad) of selected leaves + float64 Gram
  weights      `weight_spectra(params, where=)`: every matrix-shaped leaf
  table        `analyze(...)`: one row per (kind, path), DataFrame or `Rows`
  monitor      `SpectralMonitor` and its probes, for any training loop
  figures      spectra and monitor figures
Our GPT's probes (`spectral_jax.probes`) are built on these.
"""

from spectral_jax.lens.activations import activation_spectra, activation_spectrum
from spectral_jax.lens.common import ProbeError
from spectral_jax.lens.gradients import gradient_spectrum, singular_values_gram
from spectral_jax.lens.monitor import ActivationProbe, GradientProbe, SpectralMonitor, WeightProbe
from spectral_jax.lens.spectrum import Spectrum
from spectral_jax.lens.table import Rows, analyze
from spectral_jax.lens.weights import weight_spectra

__all__ = [
    "ActivationProbe",
    "GradientProbe",
    "ProbeError",
    "Rows",
    "SpectralMonitor",
    "Spectrum",
    "WeightProbe",
    "activation_spectra",
    "activation_spectrum",
    "analyze",
    "gradient_spectrum",
    "singular_values_gram",
    "weight_spectra",
]
