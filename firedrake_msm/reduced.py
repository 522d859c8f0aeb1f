r"""Data-driven baselines on the coarse states: dynamic mode decomposition (DMD) and POD-SINDy.

Both are fitted on trajectories of coarse dof vectors :math:`x_k \in \mathbb{R}^N` sampled at a
uniform interval :math:`\Delta t` (in a comparison, the training data restricted to the coarse
space, :math:`x_k = R y_k`), and forecast from one state :math:`x_0` alone, as the coarse solvers
do:

- DMD (:func:`fit_dmd`, with PyDMD): a linear map :math:`x_{k+1} \approx A x_k` fitted to every
  pair of consecutive snapshots, of low rank, :math:`A = \Phi \Lambda \Phi^+`;
- POD-SINDy (:func:`fit_pod_sindy`, with PySINDy): a sparse polynomial ODE for the first
  :math:`r` POD coefficients of the states.

Each fit returns an object whose ``forecast(x0, times)`` gives the states ``(T, N)`` at the
times; a forecast that leaves the range of the data is not finite from where it leaves it
(:func:`~firedrake_msm.metrics.diverged_at` finds where).
"""
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp


def _sampling(snapshots, times):
    """The trajectories as an array ``(n, T, N)`` and their uniform sampling interval."""
    snapshots, times = np.asarray(snapshots, dtype=float), np.asarray(times, dtype=float)
    if snapshots.ndim != 3 or snapshots.shape[1] != len(times) or len(times) < 3:
        raise ValueError(f"expected trajectories of shape (n, T, N) at T >= 3 times, got snapshots of shape "
                         f"{snapshots.shape} at {len(times)} times")
    steps = np.diff(times)
    if np.any(steps <= 0) or not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        raise ValueError("the snapshots must be sampled at a uniform, increasing interval")
    return snapshots, float(steps[0])


def _elapsed(times):
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be a non-empty increasing 1D sequence")
    return times - times[0]


@dataclass(frozen=True)
class DMD:
    r"""A fitted DMD model (:func:`fit_dmd`): :math:`x(t) = \Re\, \Phi\, \Lambda^{t/\Delta t}\, b`.

    Attributes
    ----------
    modes : numpy.ndarray
        :math:`\Phi`, ``(N, r)`` complex, the exact DMD modes.
    eigenvalues : numpy.ndarray
        :math:`\lambda_j`, ``(r,)`` complex, per sampling interval.
    dt : float
        :math:`\Delta t`, the sampling interval of the fitted data.
    """
    modes: np.ndarray
    eigenvalues: np.ndarray
    dt: float

    @property
    def rank(self):
        return len(self.eigenvalues)

    def forecast(self, x0, times):
        r"""The states from ``x0`` at ``times[0]``: the amplitudes :math:`b = \Phi^+ x_0`, the
        least-squares fit of the modes to :math:`x_0`, then
        :math:`x(t) = \Re\, \Phi \operatorname{diag}(\lambda_j^{(t - t_0)/\Delta t})\, b`
        (the principal power between samples).

        Parameters
        ----------
        x0 : array_like
            ``(N,)``.
        times : array_like
            ``(T,)`` increasing.

        Returns
        -------
        numpy.ndarray
            ``(T, N)``; infinite where a mode of :math:`|\lambda| > 1` has overflowed.
        """
        steps = _elapsed(times) / self.dt
        b = np.linalg.lstsq(self.modes, np.asarray(x0, dtype=float), rcond=None)[0]
        with np.errstate(over="ignore", invalid="ignore"):
            dynamics = self.eigenvalues[None, :] ** steps[:, None] * b             # (T, r)
            return (dynamics @ self.modes.T).real


def fit_dmd(snapshots, times, *, svd_rank=0.9999):
    r"""Exact DMD (PyDMD's :class:`pydmd.DMD`) of trajectories, from all their pairs of
    consecutive snapshots.

    The pairs of every trajectory form :math:`X = [x_0, \dots, x_{T-2}]` and
    :math:`Y = [x_1, \dots, x_{T-1}]`, side by side; with the truncated SVD
    :math:`X \approx U_r \Sigma_r V_r^*`, the reduced operator
    :math:`\tilde A = U_r^* Y V_r \Sigma_r^{-1}` has eigenvalues :math:`\lambda_j` and
    eigenvectors :math:`w_j`, and the exact modes are :math:`\phi_j = Y V_r \Sigma_r^{-1} w_j`
    (Tu et al. 2014). No pair straddles two trajectories.

    Parameters
    ----------
    snapshots : array_like
        ``(n, T, N)``: ``n`` trajectories of ``T`` states.
    times : array_like
        ``(T,)``, uniformly spaced.
    svd_rank : int or float
        The rank :math:`r`, by PyDMD's rule: a float in (0, 1) for the fewest singular values of
        :math:`X` whose squares hold that fraction of :math:`\|X\|_F^2` (default 0.9999), an
        integer for that many, -1 for all of them, 0 for the optimal hard threshold of Gavish &
        Donoho (2014), which assumes noisy data (on clean restricted DNS it can keep a single
        mode).

    Returns
    -------
    DMD
    """
    from pydmd import DMD as PyDMD    # here: PyDMD imports scikit-learn and xarray, seconds' worth

    snapshots, dt = _sampling(snapshots, times)
    X = np.concatenate(snapshots[:, :-1]).T                                   # (N, n (T - 1))
    Y = np.concatenate(snapshots[:, 1:]).T
    with warnings.catch_warnings():
        # PyDMD warns of the condition number of X, which low-rank data always have: the
        # truncation to rank r is what makes the fit well posed.
        warnings.filterwarnings("ignore", "Input data condition number", UserWarning)
        fitted = PyDMD(svd_rank=svd_rank, exact=True).fit(X, Y)
    return DMD(np.asarray(fitted.modes), np.asarray(fitted.eigs), dt)


@dataclass(frozen=True)
class PODSINDy:
    r"""A fitted POD-SINDy model (:func:`fit_pod_sindy`): the states
    :math:`x = \bar x + s\, \Psi a`, the coefficients :math:`\dot a = \Xi\, \theta(a)`.

    Attributes
    ----------
    mean : numpy.ndarray
        :math:`\bar x`, ``(N,)``, the training states' mean.
    basis : numpy.ndarray
        :math:`\Psi`, ``(N, r)``, orthonormal POD modes (the Euclidean inner product of dof vectors).
    scale : float
        :math:`s`, the root-mean-square norm of the training fluctuations :math:`\Psi^T (x - \bar x)`:
        the coefficients :math:`a` are of order one.
    model : pysindy.SINDy
        The identified ODE for :math:`a`.
    bound : float
        Where a forecast is taken to have blown up: :math:`|a|` above ten times the largest of the
        training data.
    """
    mean: np.ndarray
    basis: np.ndarray
    scale: float
    model: object
    bound: float

    @property
    def rank(self):
        return self.basis.shape[1]

    def coefficients(self, x):
        r"""The scaled POD coefficients :math:`a = \Psi^T (x - \bar x) / s` of states ``(..., N)``."""
        return (np.asarray(x, dtype=float) - self.mean) @ self.basis / self.scale

    def states(self, a):
        r"""The states :math:`\bar x + s\, \Psi a` of coefficients ``(..., r)``."""
        return self.mean + self.scale * np.asarray(a) @ self.basis.T

    def forecast(self, x0, times, *, rtol=1e-8, atol=1e-10):
        r"""Integrate the ODE from the coefficients of ``x0`` at ``times[0]`` (SciPy's LSODA, which
        switches to a stiff method where it must) and return the states at ``times``.

        Parameters
        ----------
        x0 : array_like
            ``(N,)``.
        times : array_like
            ``(T,)`` increasing.
        rtol, atol : float
            The integrator's tolerances, on the order-one coefficients.

        Returns
        -------
        numpy.ndarray
            ``(T, N)``; NaN from the first time after the coefficients pass :attr:`bound` or the
            integrator fails.
        """
        elapsed = _elapsed(times)
        a0 = self.coefficients(x0)

        def rhs(t, a):
            return self.model.predict(a[None, :])[0]

        def escapes(t, a):
            return self.bound - np.linalg.norm(a)
        escapes.terminal = True

        a = np.full((len(elapsed), self.rank), np.nan)
        if len(elapsed) == 1:
            a[0] = a0
        else:
            solution = solve_ivp(rhs, (0.0, elapsed[-1]), a0, method="LSODA", t_eval=elapsed, events=escapes,
                                 rtol=rtol, atol=atol)
            a[:solution.y.shape[1]] = solution.y.T      # the outputs before a stop at the bound or a failure
        return self.states(a)


def fit_pod_sindy(snapshots, times, *, rank=None, energy=0.999, max_rank=6, degree=2, threshold=0.1,
                  alpha=0.05):
    r"""POD-SINDy: a sparse polynomial ODE (PySINDy, sequentially thresholded least squares) for
    the first POD coefficients of trajectories.

    The POD modes :math:`\Psi` are the leading left singular vectors of the fluctuations
    :math:`x - \bar x` of every training state; the coefficients
    :math:`a = \Psi^T (x - \bar x) / s` (:class:`PODSINDy`) and their time derivatives (PySINDy's
    second-order finite differences, trajectory by trajectory) give the regression
    :math:`\dot a = \Xi\, \theta(a)` over the monomials :math:`\theta` of degree at most
    ``degree``; STLSQ (Brunton et al. 2016) solves it by ridge regression, zeroes the
    coefficients below a threshold and refits on the rest until the support settles. The threshold
    is a fraction ``threshold`` of the largest linear coefficient of the ridge fit without one (the
    fastest linear rate), so that it depends on neither the unit of time nor the size of the
    states.

    Parameters
    ----------
    snapshots : array_like
        ``(n, T, N)``: ``n`` trajectories of ``T`` states.
    times : array_like
        ``(T,)``, uniformly spaced.
    rank : int, optional
        :math:`r`, the POD modes kept; default: the fewest whose singular values' squares hold
        the fraction ``energy`` of the fluctuations' :math:`\|\cdot\|_F^2`, at most ``max_rank``
        (the library grows as :math:`r^{degree}`).
    energy : float
    max_rank : int
    degree : int
        The polynomial library's degree (2: the quadratic nonlinearity of advection).
    threshold : float
        STLSQ's threshold on the coefficients :math:`\Xi`, relative to the largest linear one of the
        unthresholded fit.
    alpha : float
        STLSQ's ridge penalty.

    Returns
    -------
    PODSINDy
    """
    import pysindy                     # here: PySINDy imports scikit-learn, seconds' worth

    snapshots, dt = _sampling(snapshots, times)
    n, T, N = snapshots.shape
    mean = snapshots.reshape(-1, N).mean(axis=0)
    U, s, _ = np.linalg.svd((snapshots.reshape(-1, N) - mean).T, full_matrices=False)
    if rank is None:
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], not {energy}")
        fraction = np.cumsum(s**2) / np.sum(s**2)
        rank = min(int(np.searchsorted(fraction, energy * (1 - 1e-12))) + 1, max_rank)
    if not 1 <= rank <= len(s):
        raise ValueError(f"rank must be between 1 and {len(s)} (the states' dimension or count), not {rank}")
    basis = U[:, :rank]
    a = (snapshots - mean) @ basis
    scale = float(np.sqrt(np.mean(np.sum(a**2, axis=-1))))
    if scale == 0:
        raise ValueError("the training states do not vary: POD-SINDy has nothing to fit")
    a /= scale
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is relative to the largest linear rate: in [0, 1), not {threshold}")

    def sindy(cut):
        optimizer = pysindy.STLSQ(threshold=cut, alpha=alpha)
        return pysindy.SINDy(optimizer=optimizer, feature_library=pysindy.PolynomialLibrary(degree=degree)
                             ).fit(list(a), t=dt)

    linear = sindy(0.0).coefficients()[:, 1:rank + 1]        # the library: 1, a_1 .. a_r, then products
    model = sindy(threshold * np.abs(linear).max())
    bound = 10 * float(np.max(np.linalg.norm(a, axis=-1)))
    return PODSINDy(mean, basis, scale, model, bound)
