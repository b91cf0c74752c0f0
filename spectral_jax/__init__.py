"""spectral-jax: activation and gradient spectra as diagnostics of LLM optimization (JAX/Flax NNX)."""

__version__ = "0.1.0"
