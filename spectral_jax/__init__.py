r"""spectral-jax: activation and gradient spectra as diagnostics of LLM optimization (JAX/Flax NNX).

import spectral_jax as sj
sj.activation_spectra(model, batches, where=r"layers/\d+$")        # any Flax NNX / linen model
sj.gradient_spectrum(loss_fn, params, examples, where="out/kernel")  # any pytree of parameters
sj.weight_spectra(params)                                         # every matrix-shaped leaf
sj.analyze(...)                                                   # one summary row per spectrum
"""

__version__ = "0.1.0"

from spectral_jax import lens as _lens  # noqa: E402 (the public model-agnostic layer, after the version)
from spectral_jax.lens import *  # noqa: E402, F403

__all__ = ["__version__", *_lens.__all__]
