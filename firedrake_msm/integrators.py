r"""Implicit-explicit integrators for stiff SDEs with additive noise.

.. math:: dX = [-A X + f(t, X)]\,dt + \Sigma\,dW,

with a linear stiff operator :math:`A` treated implicitly and the rest of the drift, :math:`f`,
and the noise explicitly. Each step solves with :math:`I + c\,h A` for one constant :math:`c` of
the scheme, so :math:`I + c\,hA` is factorised once per step size :math:`h` and every member of
an ensemble, every step and every stage is a right-hand side of the same factors
(:class:`ImplicitOperator`).

The schemes (:data:`SCHEMES`), of step :math:`h` from :math:`t_n`, with
:math:`\Delta W_c = W(t_n + c h) - W(t_n)`:

``"euler"``, semi-implicit Euler-Maruyama:

.. math:: (I + hA)\,X_{n+1} = X_n + h f(t_n, X_n) + \Sigma\,\Delta W_1.

``"ars222"``, the IMEX Runge-Kutta scheme ARS(2,2,2) of Ascher, Ruuth & Spiteri (1997),
L-stable, stiffly accurate and second order in its deterministic part, with the noise added
to each stage up to the stage's time. With :math:`\gamma = 1 - 1/\sqrt2` and
:math:`\delta = 1 - 1/(2\gamma)`,

.. math::

    (I + \gamma hA)\,Y &= X_n + \gamma h f(t_n, X_n) + \Sigma\,\Delta W_\gamma,\\
    (I + \gamma hA)\,X_{n+1} &= X_n - (1 - \gamma) hAY + h[\delta f(t_n, X_n)
        + (1 - \delta) f(t_n + \gamma h, Y)] + \Sigma\,\Delta W_1.

The stage reads the path at its own time, and that makes the scheme weakly second order.
Expanded, a step passes the noise to the drift as :math:`\tfrac12 hA\Sigma\Delta W_1` through the
implicit part (weight :math:`(1 - \gamma)\gamma + \gamma`) and as
:math:`\tfrac12 hf'\Sigma\Delta W_1` through the explicit part (weight :math:`(1 - \delta)\gamma`),
since :math:`\gamma(2 - \gamma) = (1 - \delta)\gamma = \tfrac12`: the mean and the covariance with
:math:`\Delta W_1` of the Itô-Taylor term :math:`(f' - A)\Sigma\int_0^h (W(t_n + s) - W(t_n))\,ds`,
which is what a weakly second-order step must match. And the stage's variance, :math:`\gamma h`,
gives the Itô correction :math:`\tfrac14 h^2\,\Sigma\Sigma^T : f''` its weight,
:math:`(1 - \delta)\gamma h \cdot h/2 = h^2/4`; with :math:`\gamma\Delta W_1` in the stage instead
(the path's conditional mean there) it would be :math:`\gamma h^2/4`, and the scheme weakly
first order on nonlinear drifts.

The schemes' orders (``tests/test_integrators.py`` checks them on a stiff non-diagonal
Ornstein-Uhlenbeck process whose stiff part is implicit and whose coupling is explicit):

=========== ====== ==== ==================================================================
scheme      strong weak per step
=========== ====== ==== ==================================================================
``euler``   1      1    one evaluation of :math:`f`, one solve
``ars222``  1      2    two evaluations of :math:`f`, two solves
=========== ====== ==== ==================================================================

Neither is strongly of order 1.5, as torchsde's SRA1 is: that needs the time integral of the
Brownian path over each step (a space-time Lévy area) in the stages, where a point value of the
path serves the weak order. The implicit part of both is L-stable: a stiff mode is damped at any
step, not left to ring as the trapezoidal rule leaves it, so the step is set by the explicit part
alone. The stationary variance of a mode of rate :math:`\lambda` is the exact
:math:`\sigma^2/2\lambda` to the weak order while :math:`\lambda h` is small; beyond, semi-implicit
Euler's, :math:`\sigma^2/\lambda(2 + \lambda h)`, is below it, and ARS(2,2,2)'s up to 1.3 times it
(at :math:`\lambda h \approx 6`) and below it from :math:`\lambda h \approx 17`, a variance that
is small either way.

For a drift that is not split by hand, :func:`linearised_sdeint` takes :math:`A` as minus the
drift's Jacobian at a reference state (:func:`jacobian`; for the learned model,
:func:`multiscale_operator`): the whole stiff linear part is implicit (the coarse physics,
exactly so where it is linear, as in advection-diffusion), and only what the linearisation
misses is explicit.
"""
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

#: The :math:`\gamma` of ARS(2,2,2), its implicit stages' diagonal and its stage's time.
GAMMA = 1.0 - 1.0 / math.sqrt(2.0)
#: The :math:`\delta` of ARS(2,2,2), the explicit weight of :math:`f(t_n, X_n)`.
DELTA = 1.0 - 1.0 / (2.0 * GAMMA)


class ImplicitOperator:
    r"""A linear operator :math:`A` to be treated implicitly: its action, and solves with
    :math:`I + cA` factorised once for each :math:`c`.

    :math:`A = \mathrm{diag}(A_k, \mathrm{diag}\,d)`: a matrix :math:`A_k` on the leading
    :math:`k` dofs and, optionally, a diagonal :math:`d` on the others (the damping of a
    model's auxiliary channels, say), so that a state is ``(B, k + len(d))``.

    Parameters
    ----------
    A : torch.Tensor or scipy.sparse matrix
        ``(k, k)``. A dense tensor is factorised by torch's LU, on its own device and in its
        own dtype (which the states must share). A coarse model's :math:`A` is dense anyway (it
        holds :math:`M^{-1}`), and small: the factorisation costs :math:`O(k^3)` once, each
        solve :math:`O(k^2 B)` for a batch of :math:`B` as one triangular solve with :math:`B`
        right-hand sides, on a GPU too. A scipy sparse matrix is factorised by SuperLU
        (:func:`scipy.sparse.linalg.splu`), on the CPU in float64, for operators too large to
        hold densely; the states then go through NumPy.
    diagonal : torch.Tensor, optional
        ``(D - k,)``: :math:`d`.
    """

    def __init__(self, A, diagonal=None):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square (k, k) matrix, not of shape {tuple(A.shape)}")
        self.sparse = sp.issparse(A)
        self.A = sp.csr_matrix(A) if self.sparse else A
        self.diagonal = diagonal
        self._inverses = {}

    @property
    def k(self):
        return self.A.shape[0]

    def __call__(self, X):
        """:math:`AX` on a batch ``(B, D)``, row by row."""
        lead = X[:, :self.k]
        if self.sparse:
            lead = _from_numpy((self.A @ _to_numpy(lead).T).T, X)
        else:
            lead = lead @ self.A.T
        return lead if self.diagonal is None else torch.cat([lead, X[:, self.k:] * self.diagonal], dim=1)

    def shifted_inverse(self, c):
        r"""The map ``(B, D) -> (B, D)``, :math:`X \mapsto (I + cA)^{-1}X` row by row, factorised
        at the first call for this :math:`c` and kept."""
        # Steps of a uniform grid of times differ in their last bits: one factorisation
        # serves the steps that agree to 12 digits.
        key = float(f"{c:.12g}")
        if key not in self._inverses:
            self._inverses[key] = self._factorise(c)
        return self._inverses[key]

    def _factorise(self, c):
        if self.sparse:
            lu = spla.splu((sp.identity(self.k, format="csc") + c * self.A).tocsc())

            def lead(X):
                return _from_numpy(lu.solve(np.ascontiguousarray(_to_numpy(X).T)).T, X)
        else:
            eye = torch.eye(self.k, dtype=self.A.dtype, device=self.A.device)
            LU, pivots = torch.linalg.lu_factor(eye + c * self.A)

            def lead(X):
                # X (I + cA)^{-T}: the batch of the solutions, without transposing the batch.
                return torch.linalg.lu_solve(LU, pivots, X, left=False, adjoint=True)
        if self.diagonal is None:
            return lead
        scale = 1.0 / (1.0 + c * self.diagonal)
        return lambda X: torch.cat([lead(X[:, :self.k]), X[:, self.k:] * scale], dim=1)


def _to_numpy(X):
    return X.detach().to(device="cpu", dtype=torch.float64).numpy()


def _from_numpy(array, like):
    return torch.as_tensor(array).to(dtype=like.dtype, device=like.device)


def semi_implicit_euler_step(f, solve, noise, t, h, X, W):
    r"""One step of semi-implicit Euler-Maruyama, ``(B, D) -> (B, D)``:
    :math:`(I + hA)X_{n+1} = X_n + hf(t_n, X_n) + \Sigma\Delta W_1`.

    Parameters
    ----------
    f : callable
        ``f(t, X)``, the explicit drift ``(B, D) -> (B, D)``.
    solve : callable
        :math:`(I + hA)^{-1}` on a batch (:meth:`ImplicitOperator.shifted_inverse` of :math:`h`).
    noise : callable
        ``noise(dW)``: :math:`\Sigma\,dW`, ``(B, m) -> (B, D)``.
    t, h : float
        Time and step.
    X : torch.Tensor
        ``(B, D)`` states at :math:`t`.
    W : tuple of torch.Tensor
        ``(W(t + h) - W(t),)``, ``(B, m)``.
    """
    (W1,) = W
    return solve(X + h * f(t, X) + noise(W1))


def ars222_step(f, solve, noise, t, h, X, W):
    r"""One step of the IMEX scheme ARS(2,2,2) (see the module), ``(B, D) -> (B, D)``.

    Parameters as :func:`semi_implicit_euler_step`, but ``solve`` is :math:`(I + \gamma hA)^{-1}`
    and ``W`` is ``(W(t + γh) - W(t), W(t + h) - W(t))``.
    """
    W_gamma, W1 = W
    F0 = f(t, X)
    rhs = X + GAMMA * h * F0 + noise(W_gamma)
    Y = solve(rhs)
    # The stage's implicit rate -AY from its own equation, without a product with A.
    K = (Y - rhs) / (GAMMA * h)
    return solve(X + h * ((1 - GAMMA) * K + DELTA * F0 + (1 - DELTA) * f(t + GAMMA * h, Y)) + noise(W1))


@dataclass(frozen=True)
class Scheme:
    r"""An IMEX scheme: its step, the times within a step at which it reads the Brownian path
    (``nodes``, fractions of the step, the last one 1) and the constant :math:`c` of its solves
    with :math:`I + c\,hA` (``diagonal``)."""
    step: object
    nodes: tuple
    diagonal: float
    strong_order: float
    weak_order: float


#: The schemes by name, for :func:`sdeint`.
SCHEMES = {"euler": Scheme(semi_implicit_euler_step, (1.0,), 1.0, 1.0, 1.0),
           "ars222": Scheme(ars222_step, (GAMMA, 1.0), GAMMA, 1.0, 2.0)}


def brownian_increments(bm, t, h, nodes):
    r""":math:`W(t + c h) - W(t)` for each node :math:`c` of a step, from a Brownian motion
    ``bm(ta, tb)`` (a ``torchsde.BrownianInterval``, say) queried on consecutive intervals."""
    out, W, start = [], 0.0, t
    for c in nodes:
        end = t + c * h
        W = W + bm(start, end)
        out.append(W)
        start = end
    return tuple(out)


def sdeint(f, A, sigma, x0, ts, bm, *, dt, scheme="ars222"):
    r"""Integrate :math:`dX = [-AX + f(t, X)]\,dt + \Sigma\,dW` from ``x0`` at ``ts[0]``.

    Each output interval is split into equal steps of at most ``dt`` (so the outputs fall on
    steps); equal intervals share one factorisation of the implicit operator.

    Parameters
    ----------
    f : callable
        ``f(t, X)``: the explicit drift, ``(B, D) -> (B, D)``.
    A : torch.Tensor, scipy.sparse matrix or ImplicitOperator
        ``(D, D)``, the implicit part (see :class:`ImplicitOperator`).
    sigma : float, torch.Tensor or callable
        :math:`\Sigma`: a multiple of the identity, ``(D,)`` diagonal, ``(D, m)``, or a map
        ``(B, m) -> (B, D)`` of the Brownian increments.
    x0 : torch.Tensor
        ``(B, D)`` initial states.
    ts : array_like
        ``(T,)`` increasing output times.
    bm : callable
        ``bm(ta, tb)``: the increments :math:`W(t_b) - W(t_a)`, ``(B, m)``, of one Brownian
        path per member, e.g. a seeded ``torchsde.BrownianInterval`` over ``[ts[0], ts[-1]]``:
        the same seed gives the same ensemble.
    dt : float
        The largest step.
    scheme : str
        A key of :data:`SCHEMES`: ``"ars222"`` (default) or ``"euler"``.

    Returns
    -------
    torch.Tensor
        ``(T, B, D)``: the states at ``ts`` (torchsde's layout).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, not {scheme!r}")
    scheme = SCHEMES[scheme]
    operator = A if isinstance(A, ImplicitOperator) else ImplicitOperator(A)
    noise = _noise(sigma)
    ts = [float(t) for t in ts]
    if not dt > 0 or any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"the step must be positive and the times increasing, not dt={dt!r} and {ts}")
    X, out = x0, [x0]
    for start, end in zip(ts, ts[1:]):
        n = max(1, math.ceil((end - start) / dt * (1 - 1e-12)))
        h = (end - start) / n
        solve = operator.shifted_inverse(scheme.diagonal * h)
        for k in range(n):
            t = start + k * h
            X = scheme.step(f, solve, noise, t, h, X, brownian_increments(bm, t, h, scheme.nodes))
        out.append(X)
    return torch.stack(out)


def _noise(sigma):
    if callable(sigma):
        return sigma
    if torch.is_tensor(sigma) and sigma.ndim == 2:
        return lambda dW: dW @ sigma.T
    return lambda dW: sigma * dW


def jacobian(drift, x, *, rows=None, chunk=256):
    r"""The leading ``rows`` rows (default all ``D``) of the Jacobian
    :math:`\partial a/\partial x`, ``(rows, D)``, of a drift on batches at one state ``x``
    ``(D,)``.

    ``drift`` maps ``(B, D) -> (B, D)`` row by row (as torchsde's drifts do), so one reverse
    pass through a batch of copies of ``x``, each weighted by a unit vector, gives as many rows
    of the Jacobian; ``chunk`` rows at a time bound the memory of the graph.
    """
    D = x.numel()
    eye = torch.eye(D if rows is None else rows, D, dtype=x.dtype, device=x.device)
    out = []
    with torch.enable_grad():
        for start in range(0, len(eye), chunk):
            weights = eye[start:start + chunk]
            X = x.detach().expand(len(weights), D).clone().requires_grad_()
            (block,) = torch.autograd.grad(drift(X), X, grad_outputs=weights)
            out.append(block)
    return torch.cat(out)


@torch.no_grad()
def multiscale_operator(sde, t, z):
    r"""The implicit operator of a :class:`~firedrake_msm.model.MultiscaleSDE` at the state
    ``z`` ``(D,)``: minus the Jacobian of the coarse physics drift
    :math:`-M^{-1}F_H(u)` (dense, :math:`N_u^2`), and the auxiliary channels' damping
    :math:`\kappa` (diagonal).

    That is where the stiffness is: the physics' viscous and pressure terms and its advection on
    the smallest cells, and a damping that may be learned fast. The rest is explicit: the
    closure, the coupling of :math:`u` and :math:`h`, what the linearisation misses, and
    :math:`h`'s forcing, which is bounded (:math:`|a\tanh(G/a)| \le a`) and so cannot make a
    step of any size unstable. A closure whose eddy diffusivity grows past the physics'
    viscosity on the smallest cells brings an explicit step limit back; linearising it too
    would take the Jacobian through the network, many times the cost of the physics' (its
    :math:`N_u` rows by autograd, through the torch bridge).
    Without physics (a purely learned drift), :math:`u`'s rate in :math:`u` is the drift's own.
    """
    n_u = sde.n_u
    if sde.physics is None:
        J = jacobian(lambda Z: sde.f(t, Z), z, rows=n_u)[:, :n_u]
    else:
        J = jacobian(lambda U: sde.physics(t, U), z[:n_u])
    # -kappa h is linear in h: its rate at h = 1 is -kappa, per dof.
    probe = z.clone()[None]
    probe[:, n_u:] = 1.0
    damping = -sde.parts(t, probe)["latent damping"][0] * sde.mask[n_u:]
    return ImplicitOperator(-J, damping)


@torch.no_grad()
def linearised_sdeint(sde, z0, ts, bm, *, dt, scheme="ars222", operator=None):
    r"""Integrate an additive-noise SDE in torchsde's interface with its stiff linear part
    implicit.

    The drift :math:`a(t, z)` (``sde.f``) is split about a linear operator :math:`A`,

    .. math:: a(t, z) = -Az + [a(t, z) + Az],

    and integrated by :func:`sdeint` with :math:`-Az` implicit and the bracket explicit. The
    split is exact whatever :math:`A`; the choice decides only how much of the stiffness is
    implicit. The default is minus the drift's Jacobian at :math:`(t_0, \bar z_0)`, the mean
    initial state (:func:`jacobian`), which makes all of it implicit where the stiff part is
    linear (the coarse physics of advection-diffusion); for a
    :class:`~firedrake_msm.model.MultiscaleSDE`, :func:`multiscale_operator` needs fewer of its
    rows. Taken from the drift itself, :math:`A` holds whatever the drift holds:

    - Dirichlet dofs (and every other dof the drift leaves at rest, such as the auxiliary
      channels of a :class:`~firedrake_msm.model.MultiscaleSDE` on fully prescribed nodes)
      have zero rows in the Jacobian: identity rows in :math:`I + c\,hA`, so they keep their
      values (to round-off).
    - Algebraic constraints that the drift eliminates, such as the pressure of incompressible
      flow (:class:`~firedrake_msm.bridge.PhysicsDrift`, index 2): the drift lies in the
      constrained subspace (a discretely divergence-free velocity) at every state, so its
      Jacobian :math:`J` maps into it, and so does :math:`(I - c\,hJ)^{-1}` on it
      (:math:`x = y + c\,hJx` lies in the subspace with :math:`y`). The scheme keeps the
      constraint as the explicit schemes do; the noise, added as it is, breaks it equally in
      both.

    Parameters
    ----------
    sde : torch.nn.Module
        ``f(t, z)`` ``(B, D) -> (B, D)``, row by row, and ``g_prod(t, z, v)``, :math:`\Sigma v`
        for a constant :math:`\Sigma` (additive noise, as
        :class:`~firedrake_msm.model.MultiscaleSDE`).
    z0 : torch.Tensor
        ``(B, D)`` initial states.
    ts, bm, dt, scheme
        As for :func:`sdeint`.
    operator : ImplicitOperator, optional
        :math:`A` (default: minus the drift's Jacobian at the mean initial state).

    Returns
    -------
    torch.Tensor
        ``(T, B, D)``.
    """
    t0 = float(ts[0])
    A = ImplicitOperator(-jacobian(lambda z: sde.f(t0, z), z0.mean(0))) if operator is None else operator
    return sdeint(lambda t, z: sde.f(t, z) + A(z), A, lambda dW: sde.g_prod(t0, z0, dW), z0, ts, bm,
                  dt=dt, scheme=scheme)
