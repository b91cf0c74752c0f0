"""Shared pytest set-up.

Under pytest-xdist (pyproject's default `-n auto`) several worker processes share one machine: on a GPU each
would otherwise preallocate 75 % of its memory at the first JAX call, so workers allocate on demand instead.
"""

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


import pytest  # noqa: E402  (after the environment above: these import JAX)

from spectral_jax.batch_sweep import SweepConfig, run_batch_sweep  # noqa: E402
from spectral_jax.presets import register_preset, unregister_preset  # noqa: E402
from spectral_jax.train_config import TrainOverrides  # noqa: E402
from tests.test_presets import SMALL  # noqa: E402


@pytest.fixture(scope="session")
def seeded_sweep(tmp_path_factory):
    """A seeded batch sweep at test size (2 seeds x tiers 1, 2, 4 on a small registered preset), with the study's
    progress grid and two probed layers; shared by the seeds and the study tests. Yields (config, out, summary)."""
    register_preset(SMALL, replace=True)
    out = tmp_path_factory.mktemp("seeded")
    cfg = SweepConfig(
        preset=SMALL.name,
        tiers=(1, 2, 4),
        seeds=2,
        lr="sqrt",
        out=str(out),
        layers=(1, -1),
        early_tokens=512,
        early_loss=8.9,
        progress_fractions=(0.3, 0.6),
        progress_losses=(9.0, 8.95),
        train=TrainOverrides(micro_batch=1, target_loss=8.8, probe_every_evals=2),
    )
    try:
        yield cfg, out, run_batch_sweep(cfg, log=lambda m: None)
    finally:
        unregister_preset(SMALL.name)
