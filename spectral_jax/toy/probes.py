"""Toy probes on one model state: activation and gradient spectra, Fourier feature probes (docs/method.md §6.5-6.6).

Activation spectrum: covariance eigenvalues (float64 centred SVD, lambda = s^2 / (N-1)) of the final normalised
last-token state h[:, -1, :] over a fixed sample set of `n_samples` TRAIN sequences (indices drawn without
replacement by default_rng(seed + 7_919), sorted; the same set for every stage, batch and checkpoint of a seed).
Summaries (spectral_jax.spectra on the trace-normalised spectrum): `alpha_10_40` (the paper's local tail
statistic, Fig. 4a), `alpha_head` (ranks 1-10), `alpha_tail` (ranks 50-128: the reference's 50-200 capped at d),
RankMe, top-10 mass, ...

Gradient spectra:
  proxy (`grad_*`, the reference's): rows g = (p_true - 1) h at the last position, p_true the softmax probability of
      the target token; covariance eigenvalues of the rows, like the activations.
  true per-sample (`psg_*`, optional): singular values of the M x P matrix of per-sequence mean-CE gradients of one
      weight matrix (default the last block's W_O), from spectral_jax.probes (jax.vmap(jax.grad) + float64 Gram +
      eigh), on the first M sequences of the sample set.

Fourier probes (spectral_jax.toy.fourier): for each probe band (c0, o0), last-position hidden states of a probe
split (task.probe_split, seed probe_seed + 97 * index of the band in fourier.PROBE_BANDS, so a band's split is the
same in the checkpoint probes and in the band sweep) give H[m] and its Fourier summaries: H_peak, H_S (S = {1,
c0-1}: the clock representation's frequencies; m_r = normalised Fourier energy of the centred state-conditioned
means), Gini, PC1 peak mass and the full energy profile En_r.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax import probes as lm_probes
from spectral_jax import spectra
from spectral_jax.errors import UserError
from spectral_jax.models.gpt import rms_norm
from spectral_jax.toy import fourier
from spectral_jax.toy import task as task_lib

ACT_WINDOW = (10, 40)
LEVELS = ("spectra", "fourier", "full")


@dataclasses.dataclass(frozen=True)
class ToyProbeConfig:
    """What to measure at a snapshot, and on how many sequences."""

    n_samples: int = 1024  # fixed train sequences for the activation / proxy-gradient spectra
    sample_seed: int = 0
    head: tuple[int, int] = (1, 10)
    tail: tuple[int, int] = (50, 128)
    local: tuple[int, int] = ACT_WINDOW
    bands: tuple[tuple[int, int], ...] = ((97, 200),)  # probed at every snapshot (reference: 97:200 and 179:50)
    n_probe: int = 1024  # probe sequences per band at every snapshot (reference 12,000)
    sweep_bands: tuple[tuple[int, int], ...] = fourier.PROBE_BANDS  # band sweep at step 0 and at the stop
    n_sweep: int = 1024
    probe_kind: str = "matched_band"
    probe_seed: int = 0
    pca_k: int = 8
    grad_samples: int = 64  # true per-sample gradient SVD at step 0 and at the stop (0 = off)
    grad_matrix: str = "final_attn_out"
    chunk: int = 512

    def __post_init__(self):
        if self.n_samples < 2:
            raise UserError(f"n_samples must be >= 2, got {self.n_samples}")
        if self.n_probe < 1 or self.n_sweep < 1 or self.chunk < 1:
            raise UserError("n_probe, n_sweep and chunk must be >= 1")
        if self.grad_samples < 0 or self.grad_samples == 1:
            raise UserError(f"grad_samples must be 0 (off) or >= 2, got {self.grad_samples}")
        if self.probe_kind not in task_lib.PROBE_KINDS:
            raise UserError(f"probe_kind must be one of {task_lib.PROBE_KINDS}, got {self.probe_kind!r}")


def band_key(band: tuple[int, int]) -> str:
    """'97:200' for band (c0=97, o0=200) (the reference's CLI notation)."""
    return f"{band[0]}:{band[1]}"


# ---- device part -----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 4))
def _last_state(graphdef, state, x_BxL, y_last_B, with_grad: bool):
    """h[:, -1] (B, D) and, with_grad, the proxy-gradient rows (p_true - 1) h[:, -1] of one chunk.

    Only the block outputs are taken from the capture, so XLA drops the LM head over all positions; the proxy needs
    the logits at the last position only, from the model's own head (`GPT.head`, soft-cap included)."""
    model = nnx.merge(graphdef, state)
    _, acts = nnx.capture(model, nnx.Intermediate)(x_BxL)
    h_BxD = rms_norm(acts["blocks"][model.config.n_layer - 1]["block_out"][0][:, -1, :])
    if not with_grad:
        return h_BxD, h_BxD
    logits_BxV = model.head(h_BxD[:, None, :])[:, 0, :]
    p_BxV = jax.nn.softmax(logits_BxV.astype(jnp.float32), axis=-1)
    p_true_B = jnp.take_along_axis(p_BxV, y_last_B[:, None], axis=-1)[:, 0]
    return h_BxD, (p_true_B - 1.0)[:, None] * h_BxD


def last_states(model, x_NxL, y_NxL, chunk: int = 512, with_grad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(h_NxD, g_NxD): final normalised last-token states and proxy-gradient rows, float32 numpy.

    Every chunk has `chunk` rows (the last one padded by repeating its final row), so each model compiles once."""
    x_NxL, y_NxL = np.asarray(x_NxL, np.int32), np.asarray(y_NxL, np.int32)
    n = x_NxL.shape[0]
    if x_NxL.ndim != 2 or n == 0 or y_NxL.shape != x_NxL.shape:
        raise UserError(f"expected non-empty (N, L) inputs and targets of one shape, got {x_NxL.shape}, {y_NxL.shape}")
    pad = -n % chunk
    if pad:
        x_NxL = np.concatenate([x_NxL, np.repeat(x_NxL[-1:], pad, axis=0)])
        y_NxL = np.concatenate([y_NxL, np.repeat(y_NxL[-1:], pad, axis=0)])
    graphdef, state = nnx.split(model)
    hs, gs = [], []
    for i in range(0, x_NxL.shape[0], chunk):
        h, g = _last_state(
            graphdef, state, jnp.asarray(x_NxL[i : i + chunk]), jnp.asarray(y_NxL[i : i + chunk, -1]), with_grad
        )
        hs.append(np.asarray(h))
        gs.append(np.asarray(g))
    return np.concatenate(hs)[:n], np.concatenate(gs)[:n]


# ---- host part -------------------------------------------------------------------------------------------------
def centred_eigenvalues(acts_NxD: np.ndarray) -> np.ndarray:
    """Covariance eigenvalues lambda = s^2 / (N - 1) from the SVD of the centred float64 rows, descending (the
    reference's method; at N = 1,024 x 128 it takes milliseconds, where the streaming accumulator of
    spectral_jax.covariance pays ~1 s of dispatch per call)."""
    a = np.asarray(acts_NxD, np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise UserError(f"need at least 2 rows of a 2-D array, got shape {a.shape}")
    s = np.linalg.svd(a - a.mean(axis=0), compute_uv=False)
    ev = np.zeros(a.shape[1])
    ev[: s.size] = s**2 / (a.shape[0] - 1)
    return ev


def spectrum_summary(values: np.ndarray, *, tail, head, bank, prefix: str = "") -> dict[str, float | None]:
    """spectra.summarize (alpha over the windows, RankMe, mass summaries), or None for each alpha and RankMe where
    no fit exists (an all-zero spectrum: every gradient of an untied model at step 0, whose head is zero)."""
    try:
        return spectra.summarize(values, tail=tail, head=head, bank=bank, prefix=prefix)
    except ValueError:
        keys = (["alpha_tail"] if tail else []) + ["alpha_head", "rankme"] + [f"alpha_{lo}_{hi}" for lo, hi in bank]
        return {prefix + k: None for k in keys}


class ToyProber:
    """Measures model states of one seed's task: `__call__(model, level=...)` -> flat record.

    Probe splits and the sample set are drawn once; records of a state already probed come from a cache."""

    def __init__(
        self,
        task_cfg: task_lib.TaskConfig,
        splits: Mapping[str, task_lib.Split],
        cfg: ToyProbeConfig = ToyProbeConfig(),
    ):
        self.task_cfg, self.cfg = task_cfg, cfg
        train = splits["train"]
        n = min(cfg.n_samples, train.x_NxL.shape[0])
        idx = np.sort(np.random.default_rng(cfg.sample_seed + 7_919).choice(train.x_NxL.shape[0], n, replace=False))
        self.x_NxL, self.y_NxL = train.x_NxL[idx], train.y_NxL[idx]
        self._splits: dict[tuple[tuple[int, int], int], task_lib.ProbeSplit] = {}
        self._cache: dict[tuple[str, bool], dict] = {}

    def probe_split(self, band: tuple[int, int], n: int) -> task_lib.ProbeSplit:
        """The band's probe split (cached); its seed follows the band's index in fourier.PROBE_BANDS."""
        key = (tuple(band), n)
        if key not in self._splits:
            bands = list(fourier.PROBE_BANDS)
            index = bands.index(tuple(band)) if tuple(band) in bands else len(bands) + len(self._splits)
            self._splits[key] = task_lib.probe_split(
                self.task_cfg, band[0], band[1], kind=self.cfg.probe_kind, n=n, seed=self.cfg.probe_seed + 97 * index
            )
        return self._splits[key]

    def fourier(self, model, band: tuple[int, int], n: int) -> fourier.FourierProbe:
        split = self.probe_split(band, n)
        h_NxD, _ = last_states(model, split.x_NxL, split.y_NxL, self.cfg.chunk, with_grad=False)
        return fourier.probe_hidden(h_NxD, split.m_N, band[0], k=self.cfg.pca_k)

    def __call__(self, model, *, level: str = "fourier") -> dict[str, Any]:
        """The record of one state at `level` (LEVELS: "spectra" = activation and proxy-gradient spectra; "fourier"
        adds the checkpoint bands; "full" adds the band sweep and the per-sample gradient SVD). A state probed before
        (same parameters: step 0 of every batch, RoPE and Muon at init) is answered from a cache keyed by a digest
        of its parameters."""
        if level not in LEVELS:
            raise UserError(f"level must be one of {LEVELS}, got {level!r}")
        key = (params_digest(model), level)
        if key not in self._cache:
            self._cache[key] = self._measure(model, level)
        return copy.deepcopy(self._cache[key])

    def _measure(self, model, level: str) -> dict[str, Any]:
        cfg = self.cfg
        h_NxD, g_NxD = last_states(model, self.x_NxL, self.y_NxL, cfg.chunk)
        act = centred_eigenvalues(h_NxD)
        grad = centred_eigenvalues(g_NxD)
        windows = dict(tail=cfg.tail, head=cfg.head, bank=(cfg.local,))
        rec: dict[str, Any] = dict(
            spectrum_summary(act, **windows), **spectrum_summary(grad, **windows, prefix="grad_")
        )
        rec["act_eigenvalues"] = act.tolist()
        rec["grad_eigenvalues"] = grad.tolist()
        if level == "spectra":
            return rec
        rec["fourier"] = {}
        for band in cfg.bands:
            probe = self.fourier(model, band, cfg.n_probe)
            rec["fourier"][band_key(band)] = dict(probe.record(), energy=probe.energy_C.tolist())
        if level == "full":
            rec["band_sweep"] = {}
            for band in cfg.sweep_bands:
                probe = self.fourier(model, band, cfg.n_sweep)
                rec["band_sweep"][band_key(band)] = probe.record()
            if cfg.grad_samples:
                m = min(cfg.grad_samples, self.x_NxL.shape[0])
                sv = per_sample_gradient_singular_values(model, self.x_NxL[:m], self.y_NxL[:m], cfg.grad_matrix)
                rec["psg_singular_values"] = sv.tolist()
                rec.update(spectrum_summary(sv**2, tail=None, head=cfg.head, bank=(), prefix="psg_"))
        return rec


def params_digest(model) -> str:
    """sha1 of the model's parameter bytes (and its graph), identifying a state for the probe cache."""
    graphdef, state = nnx.split(model, nnx.Param)
    h = hashlib.sha1(repr(graphdef).encode())
    for leaf in jax.tree.leaves(state):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def per_sample_gradient_singular_values(model, x_MxL, y_MxL, matrix: str = "final_attn_out") -> np.ndarray:
    """True per-sample gradient SVD: singular values of the M x P matrix whose row m is the gradient of sequence m's
    mean CE w.r.t. `matrix` (spectral_jax.probes: jax.vmap(jax.grad) + float64 Gram + eigh). Descending."""
    return lm_probes.gradient_singular_values(
        model, np.asarray(x_MxL, np.int32), np.asarray(y_MxL, np.int32), matrix, method="vmap"
    )


def fourier_profile(record: Mapping[str, Any], band: tuple[int, int]) -> np.ndarray:
    """Normalised Fourier energy En_r (r = 0..c0-1) of a band from a probe record."""
    return np.asarray(record["fourier"][band_key(band)]["energy"], float)


def sweep_table(record: Mapping[str, Any], key: str = "H_peak") -> dict[str, float]:
    """band -> summary (H_peak by default) from a record's band sweep."""
    return {b: float(v[key]) for b, v in record.get("band_sweep", {}).items()}
