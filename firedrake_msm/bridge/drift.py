"""The coarse physics drift :math:`f(u) = -M^{-1}F(u)` with Dirichlet conditions."""
import torch
from firedrake import Function
from firedrake.ml.pytorch import to_torch

from firedrake_msm.bridge.mass import MassOperator, bc_dofs
from firedrake_msm.bridge.residual import ResidualOperator


class PhysicsDrift(torch.nn.Module):
    r"""The semi-discrete drift of :math:`(\partial_t u, v) + F(u; v) = 0` on a batch of states.

    .. math:: \dot U = f(t, U) = -M^{-1} F(U)

    on the free dofs. Dofs fixed by Dirichlet conditions follow the boundary data instead: their
    drift is :math:`\dot g(t)`, so a state that starts on the boundary values stays on them, and
    the free rows are solved with :math:`M_{II}\dot U_I = -F_I(U) - M_{IB}\dot g_B`.

    Parameters
    ----------
    F : ufl.Form
        Semi-discrete residual, a 1-form in the test function of ``u``'s space.
    u : firedrake.Function
        The state ``F`` is written in.
    bcs : sequence of firedrake.DirichletBC
        Fixed dofs, with time-independent values taken from the conditions themselves.
    boundary_values : callable, optional
        ``g(t) -> Tensor`` of shape ``(len(self.bc_dofs),)`` or ``(B, len(self.bc_dofs))``: time-
        dependent boundary data in torch, replacing the conditions' own values; its time
        derivative is taken by autograd.
    mass : {"exact", "lumped"}
        See :class:`MassOperator`.
    parameters, dtype, device
        As for :class:`ResidualOperator`.

    The call signature ``drift(t, U)`` is torchsde's.
    """

    def __init__(self, F, u, bcs=(), *, boundary_values=None, mass="exact", parameters=None,
                 dtype=torch.float64, device=None):
        super().__init__()
        V = u.function_space()
        self.residual = ResidualOperator(F, u, parameters=parameters, dtype=dtype, device=device)
        self.mass = MassOperator(V, mass, bcs=bcs, dtype=dtype, device=device)
        dofs = bc_dofs(V, bcs)
        held = Function(V)
        for bc in bcs:
            bc.apply(held)
        values = to_torch(held, batched=False)[dofs]
        self.register_buffer("bc_dofs", torch.as_tensor(dofs, device=device), persistent=False)
        self.register_buffer("bc_values", values.to(dtype=dtype, device=device),
                             persistent=False)
        self.boundary_values = boundary_values

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

    def forward(self, t, U):
        rhs = -self.residual(U)
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
        return self.mass.solve(rhs)
