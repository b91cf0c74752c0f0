"""Shared pytest set-up.

Under pytest-xdist (pyproject's default `-n auto`) several worker processes share one machine: on a GPU each
would otherwise preallocate 75 % of its memory at the first JAX call, so workers allocate on demand instead.
"""

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
