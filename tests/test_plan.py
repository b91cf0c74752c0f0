"""The memory plan: sharded parameter bytes, compiled activation bytes, the smallest mesh, the entry point."""

import subprocess
import sys

import jax
import jax.numpy as jnp

from spectral_jax.models import param_count
from spectral_jax.plan import GIB, format_plan, plan_memory, sharded_bytes, smallest_mesh


def test_sharded_bytes_divide_only_split_leaves():
    tree = {"w": jax.ShapeDtypeStruct((8, 6), jnp.float32), "b": jax.ShapeDtypeStruct((6,), jnp.float32)}
    assert sharded_bytes(tree, 1) == (48 + 6) * 4
    assert sharded_bytes(tree, 2) == 24 * 4 + 3 * 4  # (8, 6): axis 0 of 8; (6,): 6 splits too
    assert sharded_bytes(tree, 4) == 12 * 4 + 6 * 4  # the vector of 6 does not divide by 4: replicated


def test_plan_of_the_tiny_preset():
    one, two = plan_memory("tiny", mesh="fsdp:1"), plan_memory("tiny", mesh="fsdp:2")
    assert one.params == param_count("betterwin", "tiny") * 4 == one.gradients
    assert two.params < one.params and two.optimizer < one.optimizer
    assert one.activations > 0 and one.train == one.params + one.optimizer + one.gradients + one.activations
    assert one.fits(80 * GIB) and "fits a 80 GiB device" in format_plan(one, 80)
    assert smallest_mesh("tiny").mesh == "fsdp:1"
    shapes_only = plan_memory("d48", mesh="data:2,fsdp:4", activations=False)
    assert shapes_only.devices == 8 and shapes_only.train is None and shapes_only.fits(80 * GIB) is None
    assert (
        abs(shapes_only.params * 4 - param_count("betterwin", "d48") * 4) < 0.01 * param_count("betterwin", "d48") * 4
    )


def test_plan_entry_point_and_bad_input():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.plan", "--preset=d48", "--mesh=fsdp:8", "--noactivations"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "betterwin d48 on fsdp:8 (8 devices)" in out.stdout and "parameters" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.plan", "--mesh=model:8", "--noactivations"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "--mesh='model:8'" in bad.stderr
