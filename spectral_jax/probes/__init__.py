"""Our GPT's spectral probes: activation covariance spectra, per-sample gradient spectra, weight spectra.

Built on the model-agnostic layer `spectral_jax.lens` (streaming covariance, the vmap(grad) engine, the float64
Gram, weight spectra, the summary row); what is GPT-specific here is naming (matrices by alias and layer),
token pools, the run-time attention window, and the "capture" per-sample gradient, which stays because it is
faster on our GPT (docs/benchmarks.md). The package:
  matrices     the probed matrices (docs/method.md §2): names, aliases, "L{layer}.{name}" keys
  common       input checks, chunking, device placement, defaults and `ProbeError`, shared by every probe
  gradients    per-sample gradients ("vmap" / "capture") and their spectrum via a float64 Gram
  activations  activation covariance spectra (docs/method.md §1.1) and weight spectra
  this module  `run_probes`, the fused probe used in training, and `summarize_probe`, its tidy summaries
Every name of the submodules, their private helpers included, is importable from here as well.

`run_probes` is the fused entry point used in training: the first `grad_samples` pool sequences go through
ONE pass per chunk that yields both the block outputs (fed to the covariance) and the per-sample gradients
of every requested matrix (capture: one forward + one backward down to the earliest requested matrix; vmap:
the block outputs come out of the same vmapped forward as `has_aux`), the rest of the pool through a
forward-only pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spectral_jax import spectra
from spectral_jax.lens.activations import CovarianceStreams
from spectral_jax.lens.spectrum import RANK_TOL  # noqa: F401  (re-exported)
from spectral_jax.lens.spectrum import summary_fields as _safe_summary
from spectral_jax.lens.weights import weight_spectra
from spectral_jax.probes.activations import (  # noqa: F401  (re-exported: importable as before the split)
    _activation_fn,
    _ActivationPass,
    _iter_batches,
    activation_spectrum,
    weight_singular_values,
)
from spectral_jax.probes.common import (  # noqa: F401  (re-exported)
    _TRACES,
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_GRAD_SAMPLES,
    DEFAULT_METHOD,
    METHODS,
    ProbeError,
    _as_layers,
    _check_tokens,
    _check_window,
    _chunks,
    _pad_rows,
    _placer,
    default_chunk,
    split_windows,
)
from spectral_jax.probes.gradients import (  # noqa: F401  (re-exported)
    _capture_grad_fn,
    _forward_loss_fn,
    _GradPass,
    _pick_method,
    _SequenceLoss,
    _singular_values_from_chunks,
    gradient_singular_values,
    per_sample_grads,
    singular_values_gram,
)
from spectral_jax.probes.matrices import (  # noqa: F401  (re-exported)
    _KEY_RE,
    ALIASES,
    MATRICES,
    MatrixSpec,
    _get,
    _kernel,
    _nest,
    _resolve_layer,
    _resolve_matrices,
    resolve_matrix,
)


# ---- the fused probe used in training ------------------------------------------------------------------
@dataclasses.dataclass
class ProbeResult:
    """Spectra of one probe run. Keys: activation by resolved layer; gradient / weight by 'L{l}.{matrix}'."""

    activation: dict[int, np.ndarray]
    gradient: dict[str, np.ndarray]
    weight: dict[str, np.ndarray]
    rows: int  # token rows in each covariance
    grad_samples: int  # sequences M in each per-sample gradient matrix
    method: str | None = None  # per-sample gradient method used


def check_selection(config, layers=(-1,), matrices=("final_attn_out",), grad_layers=(-1,)) -> None:
    """ValueError naming the bad entry when `layers` or `matrices` do not exist in `config`'s model (what
    run_probes would raise at its first probe, checked before any training)."""
    _as_layers(config, layers)
    _resolve_matrices(config, matrices, grad_layers)


def run_probes(
    model,
    pool_NxT1,
    *,
    layers=(-1,),
    matrices=("final_attn_out",),
    grad_samples: int | None = None,
    grad_layers=(-1,),
    chunk: int | None = None,
    window=None,
    mesh=None,
    method: str = "auto",
) -> ProbeResult:
    """Activation spectra at `layers` over every pool sequence, per-sample gradient spectra of `matrices`
    over the first `grad_samples` (default min(512, N)) sequences, and weight spectra of `matrices`.

    pool_NxT1: (N, T+1) windows, x = w[:, :-1], y = w[:, 1:]. `matrices`: aliases / keys as in
    `resolve_matrix`, bare names (e.g. "mlp_out") are taken at every block of `grad_layers`.
    The first grad_samples sequences go through ONE capture pass per chunk that yields both the block
    outputs and the per-sample gradients (method "auto": capture when every probed block is a probe layer,
    vmap with the activations as aux otherwise); the rest get a forward-only pass that stops at the deepest
    requested layer. Raises ProbeError on NaN/inf or grad_samples < 2.
    """
    config = model.config
    x, y = split_windows(pool_NxT1)
    x, y = _check_tokens(config, x), _check_tokens(config, y, "targets")
    N, T = x.shape
    act_layers = _as_layers(config, layers)
    specs = _resolve_matrices(config, matrices, grad_layers)
    M = min(DEFAULT_GRAD_SAMPLES, N) if grad_samples is None else int(grad_samples)
    if not specs:
        M = 0
    elif M < 2:
        raise ProbeError(f"need grad_samples >= 2 for a gradient spectrum, got {M}")
    elif M > N:
        raise ProbeError(f"grad_samples={M} exceeds the pool's {N} sequences")
    if N < 1 or (act_layers and N * T < 2):
        raise ProbeError(f"pool of {N} sequences is too small")
    chunk = int(chunk) if chunk else default_chunk(T)
    streams = CovarianceStreams(dict.fromkeys(act_layers, config.d_model), mesh)

    def fold(acts, n):
        streams.fold(dict(zip(act_layers, acts)), rows=n)

    gradient, used = {}, None
    if M:
        grad_chunk = min(chunk, M)
        run = _GradPass(model, specs, act_layers, method, window, mesh)
        used = run.method
        G = run.run(x[:M], y[:M], grad_chunk, on_acts=fold)
        gradient = {s.key: _singular_values_from_chunks(g) for s, g in zip(specs, G)}
    if act_layers and N > M:
        fwd = _ActivationPass(model, act_layers, window, mesh)
        rest = x[M:]
        for start, stop in _chunks(rest.shape[0], chunk):
            fold(fwd(_pad_rows(rest[start:stop], chunk, 0)), stop - start)
    activation = {l: s.values for l, s in streams.spectra().items()}
    weight = {k: w.values for k, w in weight_spectra(model, targets=[s.target for s in specs]).items()}
    return ProbeResult(activation, gradient, weight, rows=streams.count, grad_samples=M, method=used)


# ---- tidy summaries ------------------------------------------------------------------------------------
def summarize_probe(result: ProbeResult, *, tail, head=spectra.HEAD_WINDOW, bank=spectra.WINDOW_BANK) -> list[dict]:
    """Tidy records, one per spectrum: {"kind", "layer", "matrix", "n", alpha_tail(_r2), alpha_head(_r2),
    alpha_{lo}_{hi}(_r2) for bank windows that fit, rankme, hard_rank, stable_rank, participation_ratio,
    head_mass10}. A tail window longer than the spectrum gives alpha_tail None (gradient spectra with
    M < tail hi)."""
    records = []
    for layer, v in sorted(result.activation.items()):
        records.append(
            {
                "kind": "activation",
                "layer": int(layer),
                "matrix": None,
                "n": int(len(v)),
                **_safe_summary(v, tail, head, bank),
            }
        )
    for kind, table in (("gradient", result.gradient), ("weight", result.weight)):
        for key, v in table.items():
            m = _KEY_RE.match(key)
            layer, name = (int(m.group(1)), m.group(2)) if m else (None, key)
            records.append(
                {"kind": kind, "layer": layer, "matrix": name, "n": int(len(v)), **_safe_summary(v, tail, head, bank)}
            )
    return records


__all__ = [
    "check_selection",
    "ALIASES",
    "DEFAULT_METHOD",
    "MATRICES",
    "METHODS",
    "MatrixSpec",
    "ProbeError",
    "ProbeResult",
    "activation_spectrum",
    "default_chunk",
    "gradient_singular_values",
    "per_sample_grads",
    "resolve_matrix",
    "run_probes",
    "singular_values_gram",
    "split_windows",
    "summarize_probe",
    "weight_singular_values",
]
