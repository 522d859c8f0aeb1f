"""The radial dam break of PDEBench: the nonlinear shallow-water equations in conservative
variables on a square, by finite volumes."""
from firedrake import (COMM_WORLD, FacetNormal, RectangleMesh, VectorFunctionSpace, as_matrix, as_vector,
                       conditional, dot, dS, ds, inner, jump, max_value, sqrt)
from irksome import SSPButcherTableau

from firedrake_msm.problems.base import Problem


class ShallowWater(Problem):
    r"""Shallow water over a flat bottom, :math:`U = (\eta, hu, hv)` with the depth
    :math:`h = H + \eta`:

    .. math:: \partial_t U + \nabla\cdot F(U) = 0,\qquad
              F(U) = \begin{pmatrix} h\mathbf u^T \\ h\mathbf u\,\mathbf u^T + p\,I\end{pmatrix},
              \qquad p = \tfrac{g}{2}(h^2 - H^2),

    :math:`g = 1`, on :math:`[-2.5, 2.5]^2`, the set-up of PDEBench's radial dam break (2D
    SWE): still water of depth :math:`H = 1`, raised to 2 inside a circle of radius
    :math:`r \sim U(0.3, 0.7)` about the centre, at rest; :math:`t \in [0, 1]`, a snapshot every
    0.01; fine :math:`128^2` cells, coarse :math:`8^2`. The pressure is taken relative to the
    still water (:math:`\int_{\partial K} \tfrac g2 H^2 n = 0` on every cell), so that the lake
    at rest has no flux to cancel.

    **Discretisation.** Cell averages (DG0 on a grid of squares): the finite-volume scheme of
    PDEBench's grid, whose data are the cell averages of :math:`h` too. Each facet carries the
    local Lax-Friedrichs (Rusanov) flux

    .. math:: \hat F(U^-, U^+; n) = \tfrac12\bigl(F(U^-) + F(U^+)\bigr)n
              + \tfrac12\lambda\,(U^- - U^+),\qquad
              \lambda = \max_\pm\bigl(|\mathbf u^\pm\cdot n| + \sqrt{g h^\pm}\bigr),

    so the residual is :math:`F(U; v) = \int_{\mathcal F_i} \hat F\cdot[\![v]\!]\,dS +
    \int_{\partial\Omega} \hat F(U, U^*; n)\cdot v\,ds` (the cell integral of
    :math:`F : \nabla v` vanishes on DG0). Why cell averages: the dam's edge is a shock. The
    first-order scheme is monotone and keeps :math:`h > 0` without a limiter, which neither
    Irksome's stages nor the torch bridge could express, at both resolutions, and it is
    conservative cell by cell: :math:`\int\eta` is constant to round-off in a closed box. The
    price is the numerical diffusion of a first-order scheme: the fine solution's fronts spread
    over a few of its cells, the coarse one's over the whole dam. And a cell average has no
    gradient inside its cell: a learned weak-form closure
    (:class:`~firedrake_msm.model.NeuralWeakForm`) has no flux on this space, and its source
    reads the cell's own state alone.

    **Time stepping.** The strong-stability-preserving Runge-Kutta scheme of Shu and Osher
    (``SSPButcherTableau(3, 3)``, explicit, a solve with the diagonal mass matrix per stage):
    it keeps the forward Euler step's monotonicity under the CFL condition
    :math:`\Delta t\,\lambda\,(1/\Delta x + 1/\Delta y) \le 1`, which the output interval 0.01
    meets at :math:`128^2` (:math:`\lambda \lesssim 2`, :math:`\Delta x = 5/128`). A finer
    mesh needs a shorter step.

    **Boundary.** ``boundary="open"`` (default), PDEBench's extrapolation (zero-gradient)
    condition: the ghost state is the cell's own, :math:`U^* = U`, and the flux through the
    boundary is :math:`F(U)n`. ``"wall"``: reflection, :math:`U^* = (\eta, m - 2(m\cdot n)n)`,
    no mass through the boundary. Over :math:`t \le 1` the waves do not reach the boundary
    (the shock leaves :math:`r \le 0.7` at 1.34, the speed of the 1D dam break's shock between
    these depths, and slows as it spreads), so both give the same solution but for what the
    scheme's diffusion carries ahead of the shock.

    **Observed field.** The whole state :math:`U`: the coarse physics prior advances all of
    it, and the learned model's state is what it observes. :math:`\eta`, not :math:`h`: the
    relative :math:`L^2` error of :math:`h` would be that of a field which is 1 nearly
    everywhere, small for a forecast that never moves.
    """
    name = "shallow_water"
    gravity = 1.0
    depth = 1.0            # H, the still water outside the dam
    dam = 1.0              # the water stands at H + dam inside it
    half_width = 2.5
    parameter_names = ("radius",)
    t_end, dt = 1.0, 0.01
    fine, coarse = 128, 8
    scheme, stage_type = SSPButcherTableau(3, 3), "explicit"
    lu = "petsc"           # the mass matrix is diagonal

    def __init__(self, boundary="open"):
        if boundary not in ("open", "wall"):
            raise ValueError(f"boundary must be 'open' (PDEBench's extrapolation) or 'wall', "
                             f"not {boundary!r}")
        self.boundary = boundary

    def mesh(self, resolution, comm=COMM_WORLD):
        a = self.half_width          # Firedrake's rectangle runs from the origin to (Lx, Ly)
        return RectangleMesh(resolution, resolution, a, a, originX=-a, originY=-a, quadrilateral=True,
                             comm=comm)

    def function_space(self, mesh):
        return VectorFunctionSpace(mesh, "DG", 0, dim=3)

    def flux(self, U):
        r""":math:`F(U)`, ``(3, 2)``."""
        eta, m = U[0], as_vector((U[1], U[2]))
        u = m / (self.depth + eta)
        p = self.gravity * (self.depth + eta / 2) * eta
        return as_matrix([[m[0], m[1]],
                          [m[0] * u[0] + p, m[0] * u[1]],
                          [m[1] * u[0], m[1] * u[1] + p]])

    def wave_speed(self, U, n):
        r""":math:`|\mathbf u\cdot n| + \sqrt{gh}`, the fastest wave across a facet of normal ``n``."""
        h = self.depth + U[0]
        return abs((U[1] * n[0] + U[2] * n[1]) / h) + sqrt(self.gravity * h)

    def rusanov(self, left, right, n):
        r"""The numerical flux :math:`\hat F` from ``left`` to ``right`` along ``n``, ``(3,)``."""
        speed = max_value(self.wave_speed(left, n), self.wave_speed(right, n))
        return (dot(self.flux(left), n) + dot(self.flux(right), n)) / 2 + speed * (left - right) / 2

    def ghost(self, U, n):
        """The state beyond the boundary (see the class's docstring)."""
        if self.boundary == "open":
            return U
        normal = U[1] * n[0] + U[2] * n[1]
        return as_vector((U[0], U[1] - 2 * normal * n[0], U[2] - 2 * normal * n[1]))

    def residual(self, U, v):
        n = FacetNormal(U.function_space().mesh())
        interior = inner(self.rusanov(U("+"), U("-"), n("+")), jump(v)) * dS
        return interior + inner(self.rusanov(U, self.ghost(U, n), n), v) * ds

    def draw(self, rng):
        return {"radius": rng.uniform(0.3, 0.7)}

    def initial_condition(self, x, p):
        """The raised water inside the dam, at rest (evaluated at the cell centres, as PDEBench
        sets its cells)."""
        inside = conditional(x[0] ** 2 + x[1] ** 2 <= p["radius"] ** 2, self.dam, 0.0)
        return as_vector((inside, 0.0, 0.0))
