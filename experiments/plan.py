"""A memory plan: per-device bytes of training and probing a preset on a mesh, and the smallest mesh that fits.

python -m experiments.plan --preset=d48 --mesh=fsdp:8                  # one preset on one mesh
python -m experiments.plan --preset=d12,d36,d48 --smallest              # the smallest fsdp:N of 80 GiB devices
python -m experiments.plan --preset=d48 --mesh=data:2,fsdp:4 --noactivations   # shapes only, no compile

Activations come from XLA's memory analysis of the compiled forward + backward on this machine's backend
(spectral_jax.plan); compiling d36/d48 takes minutes on a CPU.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _cli
from experiments._cli import user_errors_exit_2
from spectral_jax.errors import UserError
from spectral_jax.mesh import parse_mesh
from spectral_jax.plan import GIB, format_plan, plan_memory, smallest_mesh
from spectral_jax.presets import get_preset
from spectral_jax.records import log_stderr

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "d12", "preset name, or several separated by commas")
flags.DEFINE_string("family", "betterwin", "model family")
flags.DEFINE_string("mesh", "fsdp:8", "mesh spec as --mesh takes it (e.g. fsdp:8, data:2,fsdp:4)")
flags.DEFINE_float("device_gib", 80.0, "memory of one device, GiB")
flags.DEFINE_bool("smallest", False, "search the smallest fsdp:N whose training and probes fit")
flags.DEFINE_bool("activations", True, "compile forward + backward for the activation bytes")


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    presets = [p.strip() for p in FLAGS.preset.split(",") if p.strip()]
    for p in presets:
        get_preset(p)
    parse_mesh(FLAGS.mesh)
    if FLAGS.smallest and not FLAGS.activations:
        raise UserError("--smallest needs the activation bytes: drop --noactivations")
    rows = []
    for preset in presets:
        if FLAGS.smallest:
            plan = smallest_mesh(preset, FLAGS.family, FLAGS.device_gib, log=log_stderr)
            if plan is None:
                print(
                    f"{preset}: no fsdp:N of {FLAGS.device_gib:g} GiB devices fits (one sequence's activations do not)"
                )
                plan = plan_memory(preset, FLAGS.family, "fsdp:1")
            rows.append(plan)
        else:
            plan = plan_memory(preset, FLAGS.family, FLAGS.mesh, activations=FLAGS.activations)
        print(format_plan(plan, FLAGS.device_gib))
    if FLAGS.smallest:
        print(
            f"\n| preset | smallest mesh of {FLAGS.device_gib:g} GiB devices | params | optimizer | gradients | "
            "activations | training | probes |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            fits = r.fits(FLAGS.device_gib * GIB)
            mesh = r.mesh if fits else "none fits"
            cells = [r.params, r.optimizer, r.gradients, r.activations, r.train, r.probe]
            print(f"| {r.preset} | {mesh} | " + " | ".join(f"{c / GIB:.1f} GiB" for c in cells) + " |")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
