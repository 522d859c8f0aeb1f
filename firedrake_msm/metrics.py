r"""Forecast metrics: pure functions of dof vectors.

Inputs are numpy arrays or torch tensors (moved to the CPU and converted; the results are
numpy). Shapes: ``N`` dofs last, ``T`` time steps before them, any batch dimensions (trajectories)
before those, and for ensembles the ``S`` members first.
"""
import numpy as np
import scipy.sparse as sp


def _numpy(x):
    if hasattr(x, "detach"):                    # a (dense) torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def relative_l2(truth, prediction):
    r"""Relative error per time step in the Euclidean norm of the dof vector,

    .. math:: e = \frac{\|y - \hat y\|_2}{\|y\|_2},

    the reference's metric (arXiv:2506.22655).

    Parameters
    ----------
    truth, prediction : array_like
        ``(..., T, N)``.

    Returns
    -------
    numpy.ndarray
        ``(..., T)``. A zero ``truth`` gives ``inf`` (or ``nan``).
    """
    y, y_hat = _numpy(truth), _numpy(prediction)
    return np.linalg.norm(y - y_hat, axis=-1) / np.linalg.norm(y, axis=-1)


def _matrix(M):
    """A mass matrix as something numpy arrays can be multiplied by (sparse stays sparse)."""
    if hasattr(M, "petscmat"):                  # an assembled Firedrake matrix
        petsc = M.petscmat
        return sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())
    if hasattr(M, "detach"):                    # torch: densifying a large sparse M could take gigabytes
        M = M.detach().cpu()
        if M.layout == _torch_strided():
            return M.numpy()
        M = M.to_sparse_coo().coalesce()
        return sp.csr_matrix((M.values().numpy(), tuple(M.indices().numpy())), shape=tuple(M.shape))
    return M


def _torch_strided():
    import torch        # only when handed a tensor: the metrics need no torch otherwise
    return torch.strided


def fe_norm(u, M):
    r"""The finite-element :math:`L^2` norm :math:`\|u\|_{L^2} = \sqrt{u^T M u}` of dof vectors.

    Parameters
    ----------
    u : array_like
        ``(..., N)`` dof vectors.
    M : scipy.sparse matrix, numpy array, torch tensor (dense or sparse) or Firedrake Matrix
        ``(N, N)``: the mass matrix :math:`M_{ij} = (\phi_j, \phi_i)` of the space.

    Returns
    -------
    numpy.ndarray
        ``(...)``.
    """
    u = _numpy(u)
    flat = u.reshape(-1, u.shape[-1])
    Mu = np.asarray((_matrix(M) @ flat.T).T)
    return np.sqrt(np.maximum(np.einsum("bi,bi->b", flat, Mu), 0.0)).reshape(u.shape[:-1])


def relative_l2_fe(truth, prediction, M):
    r"""Relative error per time step in the finite-element :math:`L^2` norm,

    .. math:: e = \frac{\|y - \hat y\|_{L^2}}{\|y\|_{L^2}}
                = \sqrt{\frac{(y - \hat y)^T M (y - \hat y)}{y^T M y}}.

    Unlike :func:`relative_l2` it weighs each dof by the size of its support, so it does not
    depend on how the mesh is graded.

    Parameters
    ----------
    truth, prediction : array_like
        ``(..., T, N)``.
    M
        ``(N, N)`` mass matrix (see :func:`fe_norm`).

    Returns
    -------
    numpy.ndarray
        ``(..., T)``.
    """
    y, y_hat = _numpy(truth), _numpy(prediction)
    return fe_norm(y - y_hat, M) / fe_norm(y, M)


def summary(errors):
    """Mean and standard deviation (population, ``ddof=0``) over all steps of all trajectories.

    Parameters
    ----------
    errors : array_like
        Any shape, e.g. ``(trajectories, T)`` from :func:`relative_l2`.

    Returns
    -------
    (float, float)
        ``(mean, std)``.
    """
    errors = _numpy(errors)
    return float(errors.mean()), float(errors.std())


def diverged_at(times, prediction):
    """The first of ``times`` ``(T,)`` at which a forecast ``(n, T, N)`` holds a value that is not
    finite, or None: a forecast that blew up has no error to average."""
    finite = np.isfinite(_numpy(prediction)).all(axis=(0, 2))
    return None if finite.all() else float(np.asarray(times)[np.argmin(finite)])


def crps(ensemble, truth, *, fair=False):
    r"""Continuous ranked probability score of an ensemble, averaged over dofs.

    For members :math:`x_1, \dots, x_S` and the truth :math:`y`, per dof,

    .. math:: \mathrm{CRPS} = \frac1S \sum_i |x_i - y|
              - \frac{1}{2 S^2} \sum_{i,j} |x_i - x_j|,

    the CRPS :math:`E|X - y| - \tfrac12 E|X - X'|` of the ensemble's empirical distribution
    (the default). With ``fair=True`` the second sum is divided by :math:`2S(S - 1)` instead,
    the unbiased estimate of the CRPS of the distribution the members are drawn from (Ferro
    2014), which needs :math:`S \ge 2`. The default exceeds it by
    :math:`\sum_{i,j}|x_i - x_j| / (2S^2(S-1))`, on average :math:`E|X - X'|/(2S)`
    (:math:`\sigma/(S\sqrt\pi)` for a Gaussian), which vanishes as :math:`S \to \infty`.
    For one member the default is the absolute error. Lower is better; it has the units of
    :math:`y`.

    The double sum costs :math:`O(S \log S)`: with the members sorted,
    :math:`\sum_{i,j} |x_i - x_j| = 2 \sum_{i=1}^S (2i - S - 1) x_{(i)}`.

    Parameters
    ----------
    ensemble : array_like
        ``(S, ..., N)``.
    truth : array_like
        ``(..., N)``.
    fair : bool

    Returns
    -------
    numpy.ndarray
        ``(...)``: the mean over the ``N`` dofs.
    """
    x, y = _numpy(ensemble), _numpy(truth)
    S = x.shape[0]
    if fair and S < 2:
        raise ValueError("the fair CRPS needs at least two members")
    skill = np.abs(x - y).mean(axis=0)
    # The sum over i, j of |x_i - x_j|.
    pairs = 2 * np.tensordot(2 * np.arange(1, S + 1) - S - 1, np.sort(x, axis=0), axes=1)
    return (skill - pairs / (2 * S * (S - 1) if fair else 2 * S**2)).mean(axis=-1)


def spread_skill(ensemble, truth):
    r"""Spread-skill ratio: ensemble spread over the RMSE of the ensemble mean, per
    :math:`(\dots)`, pooled over dofs,

    .. math:: \frac{\sqrt{\frac{S+1}{S}\,\overline{s^2}}}{\sqrt{\overline{(\bar x - y)^2}}},
       \qquad s^2 = \frac{1}{S-1}\sum_i (x_i - \bar x)^2,

    the bars being means over the ``N`` dofs. It is about 1 for a calibrated ensemble, below
    for an over-confident one. The factor :math:`(S+1)/S`: when the truth is one more draw from
    the members' distribution (variance :math:`\sigma^2`), :math:`E(\bar x - y)^2 =
    \sigma^2 (1 + 1/S)` while :math:`E s^2 = \sigma^2`; without it a calibrated ensemble of
    :math:`S` members would score :math:`\sqrt{S/(S+1)}`.

    Parameters
    ----------
    ensemble : array_like
        ``(S, ..., N)``, :math:`S \ge 2`.
    truth : array_like
        ``(..., N)``.

    Returns
    -------
    numpy.ndarray
        ``(...)``.
    """
    x = _numpy(ensemble)
    if x.shape[0] < 2:
        raise ValueError("the spread of an ensemble needs at least two members")
    return spread_skill_of_moments(x.mean(axis=0), x.var(axis=0, ddof=1), truth, x.shape[0])


def spread_skill_of_moments(mean, variance, truth, members):
    """:func:`spread_skill` from an ensemble's mean and unbiased (``ddof=1``) variance
    ``(..., N)`` of ``members`` members, for ensembles too large to keep."""
    mean, variance, y = _numpy(mean), _numpy(variance), _numpy(truth)
    spread = np.sqrt((members + 1) / members * variance.mean(axis=-1))
    return spread / np.sqrt(((mean - y) ** 2).mean(axis=-1))


def energy_spectrum(u, length):
    r"""Energy per wavenumber of a periodic field sampled at uniform points.

    With :math:`u_j = u(x_j)`, :math:`x_j = jL/N`, and the Fourier coefficients
    :math:`\hat u_m = \frac1N \sum_j u_j e^{-2\pi i m j / N}`,

    .. math:: E(k_m) = \tfrac12 |\hat u_m|^2 + \tfrac12 |\hat u_{-m}|^2 = |\hat u_m|^2
              \quad (0 < m < N/2), \qquad k_m = m / L,

    and :math:`\tfrac12|\hat u_m|^2` for :math:`m = 0` and, :math:`N` even, :math:`m = N/2`.
    Parseval: :math:`\sum_m E(k_m) = \frac1N \sum_j \tfrac12 u_j^2`, the mean kinetic energy
    (:math:`\frac1L \int \tfrac12 u^2` for P1 nodal values, with the trapezoidal rule).

    Parameters
    ----------
    u : array_like
        ``(..., N)``, ordered by :math:`x` (periodic P1 dofs: sort them by their coordinate
        first; Firedrake's dof order is not the coordinate order).
    length : float
        The period :math:`L`.

    Returns
    -------
    k : numpy.ndarray
        ``(N // 2 + 1,)`` wavenumbers in cycles per unit length: :math:`\sin(2\pi k_0 x)`
        peaks at :math:`k_0`.
    E : numpy.ndarray
        ``(..., N // 2 + 1)``.
    """
    u = _numpy(u)
    N = u.shape[-1]
    u_hat = np.fft.rfft(u, axis=-1) / N
    E = np.abs(u_hat) ** 2
    E[..., 0] /= 2
    if N % 2 == 0:
        E[..., -1] /= 2
    return np.arange(N // 2 + 1) / length, E
