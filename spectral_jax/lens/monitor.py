"""`SpectralMonitor`: activation, per-example gradient and weight spectra inside any training loop.

    monitor = sj.SpectralMonitor(
        [sj.ActivationProbe(val_batches, where=r"layers/\\d+$"),
         sj.GradientProbe(example_loss, examples, where=r"layers/1/out/kernel"),
         sj.WeightProbe(where="kernel")],
        every=100, out_dir="runs/spectra")
    for step in range(steps):
        params, opt_state = train_step(params, opt_state, batch)
        logger.log(monitor(step, params), step=step)     # {} between probe steps

Called outside jit with the model (an NNX module, or the params pytree the probes' functions take), at the
cadence `every` (levanter's `add_hook(every=N)` convention); it returns a flat dict of floats keyed
`spectra/<kind>/<path>/<metric>` for any logger, appends one tidy summary row per spectrum to
`<out_dir>/spectra.jsonl` and the raw values to `<out_dir>/spectra/step_<step>.npz` (both written atomically), and
draws its figures (`figure()`, `save_figures()`). The directory's `monitor.json` holds the settings: a monitor
with other settings refuses it (no mixed records); a step already recorded is read back, not recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.lens.activations import activation_spectra, activation_spectrum
from spectral_jax.lens.gradients import gradient_spectrum
from spectral_jax.lens.paths import Where
from spectral_jax.lens.weights import weight_spectra
from spectral_jax.records import append_jsonl, json_text, read_json, read_jsonl, save_npz, write_json

DEFAULT_METRICS = ("alpha_tail", "alpha_head", "rankme", "stable_rank")


def _describe(where) -> str:
    return where.pattern if hasattr(where, "pattern") else (where if isinstance(where, str) else repr(where))


@dataclasses.dataclass(frozen=True, eq=False)
class ActivationProbe:
    """Hidden-state covariance spectra over fixed `batches` (a list, re-read at every probe step).

    Either `where` (module outputs of an NNX model, or of a linen `module` whose params the monitor receives),
    or `fn(model, batch) -> hidden states (..., D)` (or a dict of them) for any other model."""

    batches: Sequence
    where: Where = None
    fn: Callable | None = None
    call: Callable | None = None
    module: object = None  # a Flax linen module: the monitor's model argument is then its params

    def __post_init__(self):
        if (self.where is None) == (self.fn is None):
            raise UserError("ActivationProbe needs exactly one of where= (module outputs) or fn= (hidden states)")

    @functools.cached_property
    def _jitted_fn(self):
        """`fn` jitted once per probe, with the model as an argument (a new closure per call would recompile)."""
        return jax.jit(self.fn)

    def run(self, model) -> dict:
        if self.fn is not None:
            out = activation_spectrum(lambda b: self._jitted_fn(model, b), self.batches, jit=False)
            return out if isinstance(out, dict) else {out.path: out}
        if self.module is not None:
            variables = model if "params" in model else {"params": model}
            return activation_spectra(self.module, self.batches, where=self.where, call=self.call, variables=variables)
        return activation_spectra(model, self.batches, where=self.where, call=self.call)

    def describe(self) -> dict:
        return {"kind": "activation", "where": _describe(self.where), "fn": getattr(self.fn, "__name__", None)}


@dataclasses.dataclass(frozen=True, eq=False)
class GradientProbe:
    """Per-example gradient spectra of the leaves `where` selects, over fixed `examples`."""

    loss_fn: Callable
    examples: object
    where: Where
    chunk: int | None = None

    def run(self, model) -> dict:
        return gradient_spectrum(self.loss_fn, model, self.examples, where=self.where, chunk=self.chunk)

    def describe(self) -> dict:
        return {"kind": "gradient", "where": _describe(self.where), "loss_fn": getattr(self.loss_fn, "__name__", None)}


@dataclasses.dataclass(frozen=True, eq=False)
class WeightProbe:
    """Singular values of the matrix-shaped parameter leaves `where` selects (default: all)."""

    where: Where = None

    def run(self, model) -> dict:
        return weight_spectra(model, where=self.where)

    def describe(self) -> dict:
        return {"kind": "weight", "where": _describe(self.where)}


class SpectralMonitor:
    """Runs `probes` every `every` steps (module docstring).

    Args:
      probes: ActivationProbe / GradientProbe / WeightProbe objects.
      every: probe when step % every == 0.
      out_dir: where records, raw spectra and figures go (None: kept in memory only).
      metrics: the summary fields returned as scalars and drawn (any Spectrum.summary column).
      tail: the tail window of every summary (default: each spectrum's scaled d12 window).
      bootstrap: resamples of the tail alpha's interval.
    """

    def __init__(
        self,
        probes: Sequence,
        *,
        every: int = 100,
        out_dir: str | pathlib.Path | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        tail=None,
        bootstrap: int = 200,
    ):
        if every < 1:
            raise UserError(f"every must be a positive number of steps, got {every}")
        if not probes:
            raise UserError("SpectralMonitor needs at least one probe (ActivationProbe, GradientProbe, WeightProbe)")
        self.probes, self.every, self.metrics = tuple(probes), int(every), tuple(metrics)
        self.tail, self.bootstrap = (None if tail is None else tuple(tail)), int(bootstrap)
        self.out_dir = None if out_dir is None else pathlib.Path(out_dir)
        self._rows: list[dict] = []
        if self.out_dir is not None:
            self._open()

    def settings(self) -> dict:
        return {
            "probes": [p.describe() for p in self.probes],
            "every": self.every,
            "tail": self.tail,
            "bootstrap": self.bootstrap,
        }

    def _open(self) -> None:
        meta = self.out_dir / "monitor.json"
        mine = json.loads(json_text(self.settings()))
        if not meta.is_file():
            write_json(meta, {"settings": mine})
            return
        stored = read_json(meta).get("settings") or {}
        fields = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
        if fields:
            raise UserError(
                f"{self.out_dir} holds spectra recorded with other monitor settings ({', '.join(fields)}); "
                "use another out_dir, or delete it to start over"
            )
        self._rows = read_jsonl(self.out_dir / "spectra.jsonl")

    def due(self, step: int) -> bool:
        return int(step) % self.every == 0

    def __call__(self, step: int, model, *, force: bool = False) -> dict[str, float]:
        """Probe `model` at `step` when due (or `force`); the flat scalars, {} when not due."""
        step = int(step)
        if not (force or self.due(step)):
            return {}
        done = [r for r in self._rows if r["step"] == step]
        if not done:
            done = self._measure(step, model)
        return self._scalars(done)

    def _measure(self, step: int, model) -> list[dict]:
        spectra = {}
        for probe in self.probes:
            for path, s in probe.run(model).items():
                spectra[f"{s.kind}/{path}"] = s
        rows = []
        for s in spectra.values():
            row = {"step": step, **s.summary(tail=self.tail, bootstrap=self.bootstrap)}
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        if self.out_dir is not None:
            save_npz(self.out_dir / "spectra" / f"step_{step:08d}.npz", {k: s.values for k, s in spectra.items()})
            for row in rows:
                append_jsonl(self.out_dir / "spectra.jsonl", row)
        self._rows.extend(rows)
        return rows

    def _scalars(self, rows) -> dict[str, float]:
        out = {}
        for r in rows:
            for m in self.metrics:
                v = r.get(m)
                if v is not None and math.isfinite(float(v)):
                    out[f"spectra/{r['kind']}/{r['path']}/{m}"] = float(v)
        return out

    def records(self) -> list[dict]:
        """Every summary row so far (this run's and, with out_dir, earlier runs' of the same settings)."""
        return list(self._rows)

    def spectra(self, step: int) -> dict[str, np.ndarray]:
        """Raw values recorded at `step`, keyed "<kind>/<path>" (needs out_dir)."""
        if self.out_dir is None:
            raise UserError("raw spectra are kept on disk only: build the monitor with out_dir=")
        with np.load(self.out_dir / "spectra" / f"step_{int(step):08d}.npz") as z:
            return {k: z[k] for k in z.files}

    def figure(self, metrics: Sequence[str] | None = None):
        """Each metric against the step, one line per (kind, path); a matplotlib Figure."""
        from spectral_jax.lens.figures import monitor_figure  # noqa: PLC0415 (matplotlib only when drawing)

        return monitor_figure(self._rows, metrics or self.metrics[:2])

    def save_figures(self, metrics: Sequence[str] | None = None) -> list[pathlib.Path]:
        """The metrics figure and the last step's spectra as PNGs in out_dir."""
        from spectral_jax.lens.figures import spectrum_axes  # noqa: PLC0415
        from spectral_jax.lens.spectrum import Spectrum  # noqa: PLC0415
        from spectral_jax.plots.base import save_figure  # noqa: PLC0415

        if self.out_dir is None or not self._rows:
            raise UserError("nothing to draw: build the monitor with out_dir= and call it at a probe step first")
        paths = [save_figure(self.figure(metrics), self.out_dir / "metrics.png")]
        last = max(r["step"] for r in self._rows)
        raw = self.spectra(last)
        for kind in ("activation", "gradient", "weight"):
            items = [Spectrum(kind, k.split("/", 1)[1], v, 0, ()) for k, v in raw.items() if k.startswith(kind + "/")]
            if items:
                fig = spectrum_axes(items, title=f"{kind} spectra at step {last}")
                paths.append(save_figure(fig, self.out_dir / f"{kind}_spectra.png"))
        return paths
