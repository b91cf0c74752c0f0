"""Analytic Fourier models behind the toy experiment (paper Section 5 / App. F, as summarised in issue 6).

Everything lives on Z_n. A circulant matrix C (first column c) is diagonalised by the DFT,
C = F⁻¹ diag(ĉ) F with ĉ = fft(c); ĉ is its vector of mode eigenvalues (conjugate-symmetric when C is
real). Modes r and n−r are partners; fold(r) = min(r, n−r).

(a) One-layer linearised gradient flow. Inputs x ∈ R^n with circulant covariance Σ (eigenvalues k_r > 0),
    teacher y = W* x (+ label noise ε ~ N(0, σ² I)), student W trained by gradient flow on
    L(W) = ½ E‖W x − y‖²:  dW/dt = −lr (W − W*) Σ P  (P = I for plain gradient flow; a circulant P models
    a per-mode preconditioner). With W*, W(0), P circulant, W(t) stays circulant and each mode decouples:

        w_r(t) = w*_r + (w_r(0) − w*_r) e^{−ρ_r t},        ρ_r = lr·k_r·P_r,
        activation second moment   A_r(t) = k_r |w_r(t)|²          (eigenvalues of W Σ Wᵀ),
        gradient second moment     G_r(t) = k_r² |Δ_r|² (1 + c_r/B) + σ² k_r / B,   Δ_r = w_r − w*_r,

    where G_r is E|ĝ_r|² for the minibatch (size B) gradient projected on the shift-equivariant direction
    of mode r, ĝ_r = (U g U*)_{rr} with U the unitary DFT and g = ∂ℓ/∂W = (W x − y) xᵀ; for Gaussian
    inputs c_r = 1 for complex modes and c_r = 2 for the self-conjugate modes r = 0, n/2. B = ∞ gives the
    population gradient k_r² |Δ_r|² (eigenvalues of ∇L ∇Lᵀ).

(b) Smooth power-law extension. Kernel k_r = fold(r)^−p (k_0 = 1), teacher the cyclic shift (|w*_r| = 1),
    zero init. The early-time regime ρ_r t ≪ 1 gives |w_r(t)| ≈ ρ_r t, so a mode weighting ρ_r ∝ r^−q_B
    yields A_r ≈ k_r ρ_r² t² ∝ r^−(p + 2 q_B): the activation tail exponent is α = p + 2 q_B.
    How B enters: plain SGD has the same mean dynamics at every B, so q = p (ρ_r = lr·k_r). An adaptive
    optimizer normalises each mode by the root second moment of its minibatch gradient (Adam's v_r),
    which by (a) in the early regime (|Δ_r| = 1) is v_r = k_r² (1 + c_r/B) + σ² k_r / B, so

        ρ_r(B) = lr·k_r / sqrt(v_r),   q_B = rank-decay exponent of ρ_r(B) over the fit window,

    which runs from p/2 (noise-dominated, σ² ≫ B k_r: ρ_r ≈ lr·sqrt(B k_r)/σ) down to 0
    (signal-dominated, B → ∞: sign-descent-like, every mode learned at the same rate). Here σ² is the
    per-sample residual seen by the gradient (label noise, or the unexplained loss of all other modes).

(c) Two-layer diagonal Fourier factor model. Per mode f_r = a_r b_r, loss ½ Σ_r k_r (y_r − a_r b_r)²,
    gradient flow ȧ_r = lr k_r (y_r − f_r) b_r, ḃ_r = lr k_r (y_r − f_r) a_r. The mass of mode r is its
    output-activation energy m_r = k_r f_r², and H_S(t) = Σ_{r∈S} m_r / Σ_r m_r (fourier.band_concentration).
    a_r² − b_r² is conserved, so f_r solves the autonomous scalar ODE
    ḟ = lr k_r (y_r − f) sqrt((a_r² − b_r²)² + 4 f²) and moves monotonically from f_r(0) to y_r without
    crossing it. Hence, if 0 ≤ f_r(0) ≤ y_r on S (small init, band learned) and each off-band target
    lies between 0 and f_r(0) (off-band targets below the init scale), the on-band masses rise, the
    off-band masses fall, and H_S is non-decreasing. If an off-band target exceeds its init, H_S can
    overshoot and relax to Σ_S k y² / Σ k y² (see the tests). Balanced init a = b = sqrt(f_0) gives the
    sigmoid f_r(t) = f_0 / (e^{−2 lr k_r y_r t} + f_0 (1 − e^{−2 lr k_r y_r t}) / y_r).

Pure numpy float64; scipy is not needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from spectral_jax import spectra
from spectral_jax.toy import fourier

# ---------------------------------------------------------------------------------------- Z_n basics


def fold(n: int) -> np.ndarray:
    """fold(r) = min(r, n−r), r = 0..n−1."""
    r_N = np.arange(n)
    return np.minimum(r_N, n - r_N)


def circulant(eig_N: np.ndarray) -> np.ndarray:
    """Real circulant C = F⁻¹ diag(eig) F; C[i, j] = c[(i−j) mod n] with c = ifft(eig)."""
    eig_N = np.asarray(eig_N)
    n = eig_N.shape[0]
    c_N = np.fft.ifft(eig_N)
    if np.abs(c_N.imag).max() > 1e-9 * max(np.abs(c_N).max(), 1.0):
        raise ValueError("eigenvalues are not conjugate-symmetric: the circulant would be complex")
    i_N = np.arange(n)
    return c_N.real[(i_N[:, None] - i_N[None, :]) % n]


def circulant_eigenvalues(C_NxN: np.ndarray) -> np.ndarray:
    """Mode eigenvalues fft(first column) of a circulant matrix."""
    return np.fft.fft(np.asarray(C_NxN)[:, 0])


def shift_eigenvalues(n: int, d: int) -> np.ndarray:
    """Eigenvalues e^{2πi r d/n} of the shift (S_d x)_j = x_{(j+d) mod n}: the task's next-state rule."""
    return np.exp(2j * np.pi * np.arange(n) * d / n)


def power_law_kernel(n: int, p: float) -> np.ndarray:
    """k_r = max(fold(r), 1)^−p."""
    return np.maximum(fold(n), 1).astype(np.float64) ** -p


def rk4(f: Callable[[np.ndarray], np.ndarray], y0: np.ndarray, t_T: Sequence[float], dt: float) -> np.ndarray:
    """Classical RK4 for the autonomous ODE y' = f(y); states at the sorted times t_T (≥ 0), stacked."""
    y, t, out = np.asarray(y0, dtype=np.float64), 0.0, []
    for t_next in t_T:
        steps = int(np.ceil((t_next - t) / dt - 1e-12))
        h = (t_next - t) / steps if steps else 0.0
        for _ in range(steps):
            k1 = f(y)
            k2 = f(y + 0.5 * h * k1)
            k3 = f(y + 0.5 * h * k2)
            k4 = f(y + h * k3)
            y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t_next
        out.append(y)
    return np.stack(out)


def rank_decay_exponent(values: np.ndarray, window: tuple[int, int]) -> float:
    """α = −OLS slope of (ln j, ln λ_j), j = lo..hi (1-indexed, inclusive) of the descending values.

    spectral_jax.spectra.alpha with hi capped at the spectrum's length (as the reference toy code).
    """
    lo, hi = window
    return spectra.alpha(values, (lo, min(hi, np.size(values)))).alpha


# ------------------------------------------------------------------------ (a) one-layer linear flow


def linear_mode_solution(
    rate_N: np.ndarray, w_star_N: np.ndarray, w0_N: np.ndarray, t_T: Sequence[float]
) -> np.ndarray:
    """w_r(t) = w*_r + (w_r(0) − w*_r) e^{−ρ_r t} (T×n complex); ρ_r = lr·k_r (·P_r if preconditioned)."""
    decay_TxN = np.exp(-np.outer(np.asarray(t_T, dtype=np.float64), rate_N))
    return w_star_N + (np.asarray(w0_N) - w_star_N) * decay_TxN


def activation_moments(k_N: np.ndarray, w_TxN: np.ndarray) -> np.ndarray:
    """A_r = k_r |w_r|²: eigenvalues of the activation covariance W Σ Wᵀ per mode."""
    return k_N * np.abs(w_TxN) ** 2


def gradient_moments(
    k_N: np.ndarray, w_TxN: np.ndarray, w_star_N: np.ndarray, batch: float = np.inf, noise_var: float = 0.0
) -> np.ndarray:
    """G_r = k_r² |w_r − w*_r|² (1 + c_r/B) + σ² k_r / B (module docstring (a)); B = ∞: population."""
    n = k_N.shape[0]
    r_N = np.arange(n)
    c_N = np.where((r_N == 0) | (2 * r_N == n), 2.0, 1.0)
    signal_TxN = k_N**2 * np.abs(w_TxN - w_star_N) ** 2
    return signal_TxN * (1.0 + c_N / batch) + noise_var * k_N / batch


def simulate_linear_flow(
    sigma_NxN: np.ndarray,
    w_star_NxN: np.ndarray,
    w0_NxN: np.ndarray,
    t_T: Sequence[float],
    lr: float = 1.0,
    precond_NxN: np.ndarray | None = None,
    dt: float | None = None,
) -> np.ndarray:
    """Integrate dW/dt = −lr (W − W*) Σ P in the original coordinates with RK4; W at t_T (T×n×n).

    dt defaults to 0.02 / (lr·‖Σ P‖₂) (RK4 error ~1e-10 relative per unit time).
    """
    M_NxN = sigma_NxN if precond_NxN is None else sigma_NxN @ precond_NxN
    if dt is None:
        dt = 0.02 / (lr * np.linalg.norm(M_NxN, 2))
    return rk4(lambda W: -lr * (W - w_star_NxN) @ M_NxN, w0_NxN, t_T, dt)


# --------------------------------------------------------------------- (b) smooth power-law extension


def power_law_rates(n: int, q: float, lr: float = 1.0) -> np.ndarray:
    """Mode weighting ρ_r = lr·max(fold(r), 1)^−q."""
    return lr * power_law_kernel(n, q)


def adaptive_mode_rates(k_N: np.ndarray, batch: float, noise_var: float, lr: float = 1.0) -> np.ndarray:
    """Early-time per-mode rate of a second-moment-normalised optimizer at batch B:
    ρ_r = lr·k_r / sqrt(v_r), v_r = G_r at |Δ_r| = 1 (gradient_moments)."""
    v_N = gradient_moments(k_N, np.zeros((1, k_N.shape[0])), np.ones(k_N.shape[0]), batch, noise_var)[0]
    return lr * k_N / np.sqrt(v_N)


def batch_mode_exponent(k_N: np.ndarray, batch: float, noise_var: float, window: tuple[int, int]) -> float:
    """q_B = rank_decay_exponent(ρ(B), window) for adaptive_mode_rates (module docstring (b))."""
    return rank_decay_exponent(adaptive_mode_rates(k_N, batch, noise_var), window)


def early_activation_spectrum(
    k_N: np.ndarray, rate_N: np.ndarray, t: float, d: int = 1, dt: float | None = None
) -> np.ndarray:
    """Descending eigenvalues of W(t) Σ W(t)ᵀ from the original-coordinate flow dW/dt = −(W − S_d) Σ P,
    Σ = circulant(k), P = circulant(ρ/k), W(0) = 0, teacher the shift S_d (|w*_r| = 1)."""
    sigma_NxN = circulant(k_N)
    W_NxN = simulate_linear_flow(
        sigma_NxN,
        circulant(shift_eigenvalues(k_N.shape[0], d)),
        np.zeros_like(sigma_NxN),
        [t],
        precond_NxN=circulant(rate_N / k_N),
        dt=dt,
    )[-1]
    return np.linalg.eigvalsh(W_NxN @ sigma_NxN @ W_NxN.T)[::-1]


# ------------------------------------------------------------------ (c) two-layer diagonal factor model


def band_teacher(n: int, S: Sequence[int], on: float = 1.0, off: float = 0.0) -> np.ndarray:
    """y_r = on for r ∈ S, off elsewhere."""
    y_N = np.full(n, off, dtype=np.float64)
    y_N[np.asarray(S, dtype=np.int64)] = on
    return y_N


def simulate_factor_flow(
    y_R: np.ndarray,
    a0_R: np.ndarray,
    b0_R: np.ndarray,
    t_T: Sequence[float],
    k_R: np.ndarray | None = None,
    lr: float = 1.0,
    dt: float = 1e-2,
) -> tuple[np.ndarray, np.ndarray]:
    """RK4 of ȧ = lr k (y − ab) b, ḃ = lr k (y − ab) a; (a, b) at t_T, each T×R."""
    k_R = np.ones_like(y_R) if k_R is None else k_R

    def rhs(ab_2xR):
        a_R, b_R = ab_2xR
        residual_R = lr * k_R * (y_R - a_R * b_R)
        return np.stack([residual_R * b_R, residual_R * a_R])

    ab_Tx2xR = rk4(rhs, np.stack([a0_R, b0_R]), t_T, dt)
    return ab_Tx2xR[:, 0], ab_Tx2xR[:, 1]


def factor_sigmoid(
    y_R: np.ndarray, f0_R: np.ndarray, t_T: Sequence[float], k_R: np.ndarray | None = None, lr: float = 1.0
) -> np.ndarray:
    """Balanced-init solution f(t) = f0 / (e^{−x} + f0 (1 − e^{−x}) / y), x = 2 lr k y t (T×R)."""
    k_R = np.ones_like(y_R) if k_R is None else k_R
    t_Tx1 = np.asarray(t_T, dtype=np.float64)[:, None]
    x_TxR = 2.0 * lr * k_R * y_R * t_Tx1
    safe_y_R = np.where(y_R == 0.0, 1.0, y_R)
    growth_TxR = np.where(y_R == 0.0, 2.0 * lr * k_R * t_Tx1, -np.expm1(-x_TxR) / safe_y_R)
    return f0_R / (np.exp(-x_TxR) + f0_R * growth_TxR)


def factor_band_concentration(f_TxR: np.ndarray, S: Sequence[int], k_R: np.ndarray | None = None) -> np.ndarray:
    """H_S(t) = Σ_{r∈S} k_r f_r(t)² / Σ_r k_r f_r(t)² along a trajectory (T,)."""
    m_TxR = (np.ones(f_TxR.shape[1]) if k_R is None else k_R) * f_TxR**2
    return np.array([fourier.band_concentration(m_R, S) for m_R in m_TxR])
