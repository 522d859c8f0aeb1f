r"""The coarse physics drift :math:`f(U) = -M^{-1}F(U)`, with Dirichlet conditions and with the
algebraic components of differential-algebraic systems eliminated."""
import numpy as np
import scipy.sparse as sp
import torch
from firedrake import Function, MixedFunctionSpace, assemble, derivative
from firedrake.ml.pytorch import to_torch

from firedrake_msm.bridge.mass import MassOperator, bc_dofs, bc_subspace, to_torch_sparse
from firedrake_msm.bridge.residual import ResidualOperator


class PhysicsDrift(torch.nn.Module):
    r"""The semi-discrete drift of :math:`(\partial_t u, v) + F(u; v) = 0` on a batch of states.

    With every component differential (``prognostic=None``),

    .. math:: \dot U = f(t, U) = -M^{-1} F(U)

    on the free dofs. Dofs fixed by Dirichlet conditions follow the boundary data instead: their
    drift is :math:`\dot g(t)`, so a state that starts on the boundary values stays on them, and
    the free rows are solved with :math:`M_{II}\dot U_I = -F_I(U) - M_{IB}\dot g_B`.

    **Algebraic components.** When only the subspaces listed in ``prognostic`` carry a time
    derivative, the mixed unknown splits into prognostic dofs :math:`U` and algebraic dofs
    :math:`a`, the residual into the rows :math:`F_p` (tested with the prognostic subspaces) and
    :math:`F_a`, and the system is the DAE :math:`M\dot U + F_p(U, a) = 0`, :math:`F_a(U, a) = 0`.
    The state of the drift is :math:`U` alone; :math:`a` is eliminated exactly as the
    semi-discretisation defines it. :math:`F_a` must be affine in :math:`a` with a constant
    Jacobian :math:`J_{aa} = \partial F_a/\partial a`, assembled once by Firedrake, which
    decides the index:

    - index 1, :math:`J_{aa}` invertible (the KdV's :math:`w = u_{xx}`): :math:`a(U)` solves
      :math:`F_a(U, a) = 0`, that is :math:`a = -J_{aa}^{-1}F_a(U, 0)` (dense LU at build time),
      and :math:`\dot U = -M^{-1}F_p(U, a(U))`. :math:`F_p` may depend on :math:`a` in any way.
    - index 2, :math:`J_{aa} = 0` (the pressure of incompressible flow): :math:`F_p` must be affine
      in :math:`a` and :math:`F_a` affine in :math:`U`, with constant Jacobians
      :math:`J_{pa} = \partial F_p/\partial a` and :math:`J_{ap} = \partial F_a/\partial U`.
      The drift is the solution of the time-differentiated (hidden) constraint

      .. math:: \begin{pmatrix} M & J_{pa} \\ J_{ap} & 0\end{pmatrix}
                \begin{pmatrix}\dot U \\ a\end{pmatrix} =
                \begin{pmatrix} -F_p(U, 0) \\ 0 \end{pmatrix},

      with the Dirichlet rows of :math:`\dot U` held at :math:`\dot g` as above. It is solved by
      eliminating :math:`\dot U`: with :math:`\hat M` the mass matrix whose fixed rows and
      columns are the identity's, :math:`\hat J_{pa}` with its fixed rows zeroed,
      :math:`y = \hat M^{-1}\hat r` (the drift without the constraint) and
      :math:`K = \hat M^{-1}\hat J_{pa}`,

      .. math:: S a = J_{ap}\, y,\qquad S = J_{ap} K,\qquad \dot U = y - K a.

      :math:`K` and the pseudo-inverse of the small dense Schur complement :math:`S` are formed at
      build time. :math:`J_{ap}\dot U = 0` (fixed rows included): the drift keeps the
      constraint, e.g. a discretely divergence-free velocity. With time-independent boundary
      data :math:`J_{ap}y` lies in the range of :math:`S`, and :math:`\dot U` is unique even where
      :math:`a` is not (a pressure defined up to a constant, in an enclosed flow: :math:`a` is then
      the minimum-norm solution).

    **Forcing.** ``drift(t, U, forcing=R)`` adds a residual :math:`R` (a dual vector on the
    prognostic dofs, e.g. a learned closure tested against the basis) to :math:`-F_p`:
    :math:`M\dot U = -F_p(U) + R`. It goes through the same mass matrix, Dirichlet rows (where it is
    ignored) and constraint, so a force never breaks them: a closure of incompressible flow is
    answered by the pressure and keeps the velocity discretely divergence-free.

    The affinity and constancy are checked numerically at build time (at random states, against
    Firedrake's assembled Jacobian), and a clear error is raised otherwise.

    Parameters
    ----------
    F : ufl.Form
        Semi-discrete residual, a 1-form in the test function of ``u``'s space.
    u : firedrake.Function
        The state ``F`` is written in (for a DAE, the whole mixed state).
    bcs : sequence of firedrake.DirichletBC
        Fixed dofs, with time-independent values taken from the conditions themselves. Only on
        the prognostic subspaces.
    prognostic : sequence of int, optional
        The subspaces of ``u``'s mixed space that carry a time derivative, e.g. ``(0,)``; the
        default ``None`` means all of them (an ODE system). The drift's state is then the
        concatenation of these subspaces' flat dofs (each in the order of its ``Function.dat``,
        the subspaces in the order of the mixed space): see :attr:`prognostic_dofs`.
    boundary_values : callable, optional
        ``g(t) -> Tensor`` of shape ``(len(self.bc_dofs),)`` or ``(B, len(self.bc_dofs))``: time-
        dependent boundary data in torch, replacing the conditions' own values; its time
        derivative is taken by autograd. In an index-2 system whose algebraic unknowns are not
        unique (an enclosed flow), the rates must keep the constraint solvable (no net inflow).
    mass : {"exact", "lumped"}
        See :class:`MassOperator` (the mass matrix of the prognostic subspaces).
    parameters, dtype, device
        As for :class:`ResidualOperator`. The constant Jacobian blocks of a DAE are assembled
        with the ``Constant`` values at build time: learnable ``parameters`` must not enter them.

    Attributes
    ----------
    prognostic_dofs, algebraic_dofs : torch.Tensor
        Positions in the flat vector of the mixed space of the state's dofs and of the eliminated
        ones: ``X[:, drift.prognostic_dofs]`` is the drift's state of the mixed states ``X``.
    bc_dofs : torch.Tensor
        Positions of the fixed dofs in the drift's state.
    index : int
        0 (no algebraic components), 1 or 2.

    Notes
    -----
    The call signature ``drift(t, U)`` is torchsde's: ``U`` of shape ``(B, N_p)``, ``N_p =
    len(prognostic_dofs)``, returns :math:`\dot U` of the same shape.
    """

    def __init__(self, F, u, bcs=(), *, prognostic=None, boundary_values=None, mass="exact",
                 parameters=None, dtype=torch.float64, device=None):
        super().__init__()
        W = u.function_space()
        bcs = tuple(bcs)
        self.residual = ResidualOperator(F, u, parameters=parameters, dtype=dtype, device=device)
        subspaces, size = _subspace_dofs(W)
        if prognostic is None:
            prognostic = range(len(subspaces))
        prognostic = tuple(sorted({int(k) for k in prognostic}))
        if not prognostic or not set(prognostic) <= set(range(len(subspaces))):
            raise ValueError(f"prognostic must name subspaces of the mixed space (0 to "
                             f"{len(subspaces) - 1}), not {prognostic}")
        self.prognostic = prognostic
        state = np.concatenate([subspaces[k] for k in prognostic])
        eliminated = np.setdiff1d(np.arange(size), state)
        if any(bc_subspace(bc) not in prognostic for bc in bcs):
            raise NotImplementedError("Dirichlet conditions on algebraic components are not supported; "
                                      "give conditions on the prognostic subspaces only")
        fixed = bc_dofs(W, bcs)
        held = Function(W)
        for bc in bcs:
            bc.apply(held)
        values = to_torch(held, batched=False)[fixed]
        as_index = dict(dtype=torch.int64, device=device)
        self.register_buffer("prognostic_dofs", torch.as_tensor(state, **as_index), persistent=False)
        self.register_buffer("algebraic_dofs", torch.as_tensor(eliminated, **as_index), persistent=False)
        # The mixed vector is cat([U, a])[:, order].
        order = np.argsort(np.concatenate([state, eliminated]))
        self.register_buffer("_order", torch.as_tensor(order, **as_index), persistent=False)
        self.register_buffer("bc_dofs", torch.as_tensor(np.searchsorted(state, fixed), **as_index),
                             persistent=False)
        self.register_buffer("bc_values", values.to(dtype=dtype, device=device), persistent=False)
        self.boundary_values = boundary_values
        if len(eliminated) == 0:
            self.mass = MassOperator(W, mass, bcs=bcs, dtype=dtype, device=device)
            self.index = 0
            return
        Vp, bcs_p = _prognostic_space(W, prognostic, bcs)
        self.mass = MassOperator(Vp, mass, bcs=bcs_p, dtype=torch.float64)
        J = _assembled_matrix(derivative(F, u))
        self._eliminate(J, state, eliminated, fixed)
        self.mass.to(dtype=dtype, device=device)
        self._check_affine(J, state, eliminated)

    def _eliminate(self, J, state, eliminated, fixed):
        """The index, and the constant matrices of the elimination (built in float64)."""
        J_aa = J[eliminated][:, eliminated]
        dtype, device = self.bc_values.dtype, self.bc_values.device
        if J_aa.nnz == 0 or np.abs(J_aa.data).max() == 0:
            self.index = 2
            J_pa = J[state][:, eliminated].tolil()
            J_pa[np.searchsorted(state, fixed)] = 0.0
            J_ap = J[eliminated][:, state]
            K_T = self.mass.solve(torch.as_tensor(J_pa.T.toarray()))           # (M^-1 J_pa)^T
            schur = torch.as_tensor(J_ap @ K_T.numpy().T)
            self.register_buffer("J_ap", to_torch_sparse(J_ap).to(dtype=dtype, device=device),
                                 persistent=False)
            self.register_buffer("K_T", K_T.to(dtype=dtype, device=device), persistent=False)
            self.register_buffer("schur_pinv", torch.linalg.pinv(schur).to(dtype=dtype, device=device),
                                 persistent=False)
        else:
            self.index = 1
            lu, pivots, info = torch.linalg.lu_factor_ex(torch.as_tensor(J_aa.toarray()))
            if info.item() != 0:
                raise ValueError("the Jacobian of the algebraic equations in the algebraic unknowns is "
                                 "neither zero (index 2) nor invertible (index 1): mixed-index systems "
                                 "are not supported")
            self.register_buffer("lu", lu.to(dtype=dtype, device=device), persistent=False)
            self.register_buffer("pivots", pivots.to(device=device), persistent=False)

    def _check_affine(self, J, state, eliminated):
        """Compare the torch residual at random states with the affine prediction from ``J``."""
        dtype, device = self.bc_values.dtype, self.bc_values.device
        generator = torch.Generator().manual_seed(0)
        U, a = (torch.randn(2, n, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
                for n in (len(state), len(eliminated)))

        def block(rows, cols):
            return torch.as_tensor(J[rows][:, cols].toarray(), dtype=dtype, device=device)

        A = self.algebraic_dofs
        R0 = self.residual(self._mixed(U, torch.zeros_like(a)))
        R1 = self.residual(self._mixed(U, a))
        if self.index == 1:
            checks = [(R1[:, A], R0[:, A], a @ block(eliminated, eliminated).T)]
            what = "F_a(U, a) is not affine in the algebraic unknowns a with a constant Jacobian"
        else:
            Rz = self.residual(self._mixed(torch.zeros_like(U), torch.zeros_like(a)))
            checks = [(R1, R0, a @ block(np.arange(J.shape[0]), eliminated).T),
                      (R0[:, A], Rz[:, A], U @ block(eliminated, state).T)]
            what = ("the residual is not affine in the algebraic unknowns a with a constant Jacobian, "
                    "or the constraint F_a is not affine in U with a constant Jacobian")
        tolerance = torch.finfo(dtype).eps ** 0.5
        for new, old, predicted in checks:
            scale = torch.stack([new.abs().max(), old.abs().max(), predicted.abs().max()]).max()
            defect = (new - old - predicted).abs().max()
            if defect > tolerance * scale:
                raise ValueError(f"cannot eliminate the algebraic components (index {self.index}): {what} "
                                 f"(relative defect {float(defect / scale):.2e} at random states)")

    def _mixed(self, U, a):
        """The flat mixed vector ``(B, N)`` with prognostic dofs ``U`` and algebraic dofs ``a``."""
        return torch.cat([U, a], dim=1)[:, self._order]

    def boundary(self, t):
        """Boundary data :math:`g(t)` at the fixed dofs."""
        if self.boundary_values is None:
            return self.bc_values
        return self.boundary_values(t)

    def apply_bcs(self, U, t=None):
        """A copy of ``U`` with its fixed dofs set to the boundary data at time ``t``."""
        U = U.clone()
        U[:, self.bc_dofs] = self.boundary(t)
        return U

    def forward(self, t, U, forcing=None):
        r""":math:`\dot U` ``(B, N_p)`` at the states ``U`` ``(B, N_p)``, with an optional
        ``forcing`` residual ``(B, N_p)`` added to the right-hand side."""
        return self._solve(t, U, forcing)[0]

    def complete(self, t, U):
        r"""The mixed states ``(B, N)`` of the prognostic states ``U`` ``(B, N_p)``, with the
        algebraic components that the drift eliminates: :math:`a(U)` (index 1), or the
        :math:`a` of the saddle-point system (index 2, e.g. the pressure)."""
        if self.index == 0:
            return U
        return self._mixed(U, self._solve(t, U)[1])

    def _solve(self, t, U, forcing=None):
        """:math:`\\dot U` and the algebraic unknowns (None for an ODE)."""
        if U.dim() != 2 or U.shape[1] != len(self.prognostic_dofs):
            raise ValueError(f"expected a batch of states of shape (B, {len(self.prognostic_dofs)}), "
                             f"got {tuple(U.shape)}")
        a = None
        if self.index == 0:
            rhs = -self.residual(U)
        else:
            zero = U.new_zeros(U.shape[0], len(self.algebraic_dofs))
            if self.index == 1:
                F_a = self.residual(self._mixed(U, zero))[:, self.algebraic_dofs]
                a = -torch.linalg.lu_solve(self.lu, self.pivots, F_a.T).T
                rhs = -self.residual(self._mixed(U, a))[:, self.prognostic_dofs]
            else:
                rhs = -self.residual(self._mixed(U, zero))[:, self.prognostic_dofs]
        if forcing is not None:
            rhs = rhs + forcing
        if len(self.bc_dofs):
            if self.boundary_values is None:
                rate = torch.zeros_like(self.bc_values)
            else:
                t = torch.as_tensor(t, dtype=U.dtype, device=U.device)
                _, rate = torch.func.jvp(self.boundary_values, (t,), (torch.ones_like(t),))
                lift = torch.zeros_like(U)
                lift[:, self.bc_dofs] = rate
                rhs = rhs - self.mass(lift)
            rhs = rhs.clone()
            rhs[:, self.bc_dofs] = rate
        dU = self.mass.solve(rhs)
        if self.index == 2:
            a = (self.J_ap @ dU.T).T @ self.schur_pinv.T
            dU = dU - a @ self.K_T
        return dU, a


def _subspace_dofs(W):
    """Each subspace's positions in the flat vector of the (mixed) space ``W``, and its length."""
    out, offset = [], 0
    for Vk in W.subspaces:
        n = Vk.node_set.size * Vk.block_size
        out.append(np.arange(offset, offset + n))
        offset += n
    return out, offset


def _prognostic_space(W, prognostic, bcs):
    """The space of the prognostic subspaces alone (dofs in the same order as their slices of
    ``W``'s flat vector), and the conditions ``bcs`` on it (only their nodes are used)."""
    spaces = [W.sub(k).collapse() for k in prognostic]
    Vp = spaces[0] if len(spaces) == 1 else MixedFunctionSpace(spaces)
    moved = []
    for bc in bcs:
        space = Vp if len(spaces) == 1 else Vp.sub(prognostic.index(bc_subspace(bc)))
        component = bc.function_space().component
        moved.append(bc.reconstruct(V=space if component is None else space.sub(component), g=0))
    return Vp, moved


def _assembled_matrix(form):
    """A bilinear form assembled by Firedrake as a scipy CSR matrix (monolithic for mixed spaces)."""
    petsc = assemble(form, mat_type="aij").petscmat
    return sp.csr_matrix(petsc.getValuesCSR()[::-1], shape=petsc.getSize())
