"""Fourier feature-learning probes on state-conditioned hidden means (pure numpy, docs/method.md §6.6).

For a probe band (c0, o0) with state labels m ∈ Z_c0 (task.ProbeSplit.m_N) and last-position hidden
states h (N×D):

    H[m]  = mean{h_i : m_i = m} − mean_m H[m]                      (c0×D, centred over m)
    E_r   = Σ_j |Σ_m H[m, j] e^{−2πi r m / c0}|²,   En = E / Σ_r E_r  (r = 0..c0−1, two-sided)

H_peak, H_pos_mass and the PC peak masses use the reference normalisation over all c0 frequencies, so
for real H the energy of a mode is split evenly between r and c0−r: a pure Fourier mode has
H_peak = 1/2 (1 at the Nyquist frequency). The `*_pair` variants add the conjugate partner,
P_r = En_r + En_{c0−r} for 1 ≤ r ≤ ⌊c0/2⌋ (counted once when r = c0−r), which is 1 for a pure mode.

Task frequency set S and H_S (the paper's Σ_{r∈S} m_r / Σ_r m_r, absent from the reference code):
m_r = En_r, the normalised Fourier energy of the learned H, and by default S = {1, c0−1}. The task's
next-state rule is the shift m ↦ m + d on Z_c0, diagonalised by the characters χ_r(m) = e^{2πi r m/c0};
the ideal (teacher) representation of the state is the clock m ↦ (cos 2πm/c0, sin 2πm/c0), which turns
the shift into a rotation by 2πd/c0 for every step d and is the dominant harmonic of the token-value map
m ↦ o0 + m that the task's mixing and rounding act on (sawtooth energy ∝ 1/sin²(πr/c0)). Its Fourier
energy sits on r = ±1, so S = {±1}; `task_frequency_set` widens it to ±(r0 ± w) for other key
frequencies r0 or a band of half-width w.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from spectral_jax.toy import task as task_lib

EPS = 1e-30

PROBE_BANDS: tuple[tuple[int, int], ...] = (
    (13, 0),
    (31, 400),
    (61, 20),
    (97, 200),
    (127, 600),
    (179, 50),
    (257, 700),
    (509, 100),
)
"""Eight probe bands (c0, o0) for the band sweep (paper Fig. 11c; the reference defines only 97:200 and
179:50, kept here). Widths are primes on a roughly geometric ladder 13..509 (every step d ≠ 0 generates
Z_c0, so the non-coprime rule never fires and H[m] is a clean cyclic table), spanning the frequent head
(P(c) ∝ c^−1.3) to the rare tail of the modulus distribution. Offsets alternate between the frequent
low-offset region (o0 ≤ 200) and the rare high-offset region (o0 ≥ 400, P(o) ∝ (o+1)^−1.2), so width
and offset effects can be told apart; all bands fit the 1024-token vocabulary."""


@dataclasses.dataclass(frozen=True, eq=False)
class FourierProbe:
    """Fourier summaries of one centred H (c0×D); arrays over the top-k principal components."""

    energy_C: np.ndarray
    h_peak: float
    h_peak_pair: float
    dominant_freq: int
    gini: float
    pos_mass: float
    dc_mass: float
    h_s: float
    pc_peak_mass_K: np.ndarray
    pc_peak_mass_pair_K: np.ndarray
    pc_dominant_freq_K: np.ndarray
    evr_K: np.ndarray

    @property
    def pc1_peak_mass(self) -> float:
        return float(self.pc_peak_mass_K[0])

    @property
    def pc1_peak_mass_pair(self) -> float:
        return float(self.pc_peak_mass_pair_K[0])

    def record(self) -> dict[str, float | int]:
        """Flat scalar record (reference column names where they exist)."""
        return {
            "H_peak": self.h_peak,
            "H_peak_pair": self.h_peak_pair,
            "dominant_freq": self.dominant_freq,
            "H_gini": self.gini,
            "H_pos_mass": self.pos_mass,
            "H_dc_mass": self.dc_mass,
            "H_S": self.h_s,
            "pca_peak_mass_pc1": self.pc1_peak_mass,
            "pca_peak_mass_pair_pc1": self.pc1_peak_mass_pair,
            "pca_evr_pc1": float(self.evr_K[0]),
        }


def conditional_means(
    h_NxD: np.ndarray, m_N: np.ndarray, c0: int, center: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """H[m] = mean of h over rows labelled m (empty labels give a zero row), centred over m; counts."""
    h_NxD = np.asarray(h_NxD, dtype=np.float64)
    m_N = np.asarray(m_N, dtype=np.int64)
    if m_N.min(initial=0) < 0 or m_N.max(initial=0) >= c0:
        raise ValueError(f"labels must lie in [0, {c0})")
    sums_CxD = np.zeros((c0, h_NxD.shape[1]))
    np.add.at(sums_CxD, m_N, h_NxD)
    counts_C = np.bincount(m_N, minlength=c0)
    H_CxD = sums_CxD / np.maximum(counts_C, 1)[:, None]
    if center:
        H_CxD = H_CxD - H_CxD.mean(axis=0, keepdims=True)
    return H_CxD, counts_C


def normalize(x: np.ndarray) -> np.ndarray:
    """x / Σx after clipping at 0; all zeros when the total vanishes."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
    total = x.sum()
    return x / total if total > EPS else np.zeros_like(x)


def fourier_energy(H_CxD: np.ndarray) -> np.ndarray:
    """E_r = Σ_j |FFT_m(H)[r, j]|², r = 0..c0−1 (unnormalised)."""
    return (np.abs(np.fft.fft(np.asarray(H_CxD, dtype=np.float64), axis=0)) ** 2).sum(axis=1)


def positive_freqs(c0: int) -> np.ndarray:
    """r = 1..⌊c0/2⌋."""
    return np.arange(1, c0 // 2 + 1)


def pair_mass(En_C: np.ndarray) -> np.ndarray:
    """P_r = En_r + En_{c0−r} for r = 1..⌊c0/2⌋ (En_r once when 2r = c0)."""
    c0 = len(En_C)
    r_R = positive_freqs(c0)
    partner_R = (c0 - r_R) % c0
    return np.where(partner_R == r_R, En_C[r_R], En_C[r_R] + En_C[partner_R])


def gini(x: np.ndarray) -> float:
    """G = 2 Σ_i i·x_(i) / n − (n+1)/n over x normalised to sum 1 and sorted ascending (i = 1..n).

    0 for a uniform vector, (n−1)/n for a one-hot vector, (n−2)/n for a conjugate pair.
    """
    p = np.sort(normalize(x))
    n = p.size
    if n == 0 or p.sum() == 0.0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * p) / n - (n + 1.0) / n)


def _circular_distance(r: np.ndarray, s: int, c0: int) -> np.ndarray:
    delta = (r - s) % c0
    return np.minimum(delta, c0 - delta)


def task_frequency_set(c0: int, center: int = 1, half_width: int = 0) -> np.ndarray:
    """S = {r : min_± |r ∓ center|_c0 ≤ half_width, r ≠ 0} (circular distance), conjugate-closed, sorted.

    Default S = {1, c0−1}: the support of the clock representation m ↦ e^{2πi m/c0} (module docstring).
    """
    r_C = np.arange(c0)
    dist_C = np.minimum(_circular_distance(r_C, center, c0), _circular_distance(r_C, -center, c0))
    return r_C[(dist_C <= half_width) & (r_C != 0)]


def band_concentration(m_C: np.ndarray, S: Sequence[int]) -> float:
    """H_S = Σ_{r∈S} m_r / Σ_r m_r (0 when all masses vanish)."""
    m_C = np.clip(np.asarray(m_C, dtype=np.float64), 0.0, None)
    total = m_C.sum()
    return float(m_C[np.asarray(S, dtype=np.int64)].sum() / total) if total > EPS else 0.0


def pca_fourier(H_CxD: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the centred H over m: per top-k left singular vector u (length c0), centre u, take
    Pn = normalize(|FFT(u)|²) over all c0 frequencies and return (max_{r≥1} Pn_r, max_r P_pair_r,
    argmax r, EVR = s_j² / Σ_all s²). (The reference divides the EVR by the top-k sum instead.)
    """
    H_CxD = np.asarray(H_CxD, dtype=np.float64)
    U_CxK, s_K, _ = np.linalg.svd(H_CxD - H_CxD.mean(axis=0, keepdims=True), full_matrices=False)
    k = max(1, min(k, U_CxK.shape[1]))
    evr_K = normalize(s_K**2)[:k]
    peak_K, pair_K, freq_K = np.zeros(k), np.zeros(k), np.zeros(k, dtype=np.int64)
    for j in range(k):
        Pn_C = normalize(fourier_energy(U_CxK[:, j : j + 1] - U_CxK[:, j].mean()))
        positive_R = Pn_C[positive_freqs(len(Pn_C))]
        peak_K[j], pair_K[j] = positive_R.max(), pair_mass(Pn_C).max()
        freq_K[j] = int(np.argmax(positive_R)) + 1
    return peak_K, pair_K, freq_K, evr_K


def fourier_probe(H_CxD: np.ndarray, k: int = 8, task_freqs: Sequence[int] | None = None) -> FourierProbe:
    """All Fourier summaries of a centred H (see module docstring); S defaults to task_frequency_set(c0)."""
    c0 = H_CxD.shape[0]
    if c0 < 3:
        raise ValueError("need c0 >= 3 for a positive-frequency slice")
    En_C = normalize(fourier_energy(H_CxD))
    positive_R = En_C[positive_freqs(c0)]
    S = task_frequency_set(c0) if task_freqs is None else task_freqs
    peak_K, pair_K, freq_K, evr_K = pca_fourier(H_CxD, k)
    return FourierProbe(
        energy_C=En_C,
        h_peak=float(positive_R.max()),
        h_peak_pair=float(pair_mass(En_C).max()),
        dominant_freq=int(np.argmax(positive_R)) + 1,
        gini=gini(En_C),
        pos_mass=float(positive_R.sum()),
        dc_mass=float(En_C[0]),
        h_s=band_concentration(En_C, S),
        pc_peak_mass_K=peak_K,
        pc_peak_mass_pair_K=pair_K,
        pc_dominant_freq_K=freq_K,
        evr_K=evr_K,
    )


def probe_hidden(
    h_NxD: np.ndarray, m_N: np.ndarray, c0: int, k: int = 8, task_freqs: Sequence[int] | None = None
) -> FourierProbe:
    """fourier_probe of the centred state-conditioned means of last-position hidden states."""
    H_CxD, _ = conditional_means(h_NxD, m_N, c0)
    return fourier_probe(H_CxD, k, task_freqs)


def band_sweep(
    hidden_fn: Callable[[np.ndarray], np.ndarray],
    cfg: task_lib.TaskConfig,
    bands: Sequence[tuple[int, int]] = PROBE_BANDS,
    kind: str = "matched_band",
    n: int = 12_000,
    probe_seed: int = 0,
    k: int = 8,
) -> dict[tuple[int, int], FourierProbe]:
    """Probe every band: split i uses seed probe_seed + 97·i (reference); hidden_fn maps x (N×L)
    to the last-position hidden states (N×D)."""
    results = {}
    for i, (c0, o0) in enumerate(bands):
        split = task_lib.probe_split(cfg, c0, o0, kind=kind, n=n, seed=probe_seed + 97 * i)
        results[(c0, o0)] = probe_hidden(hidden_fn(split.x_NxL), split.m_N, c0, k)
    return results
