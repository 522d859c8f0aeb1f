r"""A steepening front with walls: the 2D Burgers case
===================================================

Viscous Burgers for a scalar on the unit square with homogeneous Dirichlet data,

.. math:: \partial_t u = \nu\Delta u - u(\partial_x u + \partial_y u)\quad\text{in } [0,1]^2,
          \qquad u = 0 \text{ on } \partial\Omega,\qquad \nu = 0.005,

from a bump :math:`(1 + 0.1e)\,e^{-|x - (0.3, 0.3)|^2/(0.2 + 0.01e)^2}`, :math:`e \sim N(0, 1)`.
The bump travels towards the corner :math:`(1, 1)` and steepens into a front whose width, about
:math:`\nu/u`, is far below the coarse mesh's cells (8 × 8 squares, each cut into two P1
triangles; the fine mesh has 128 × 128). The under-resolved front oscillates; the multiscale model
learns what the coarse mesh misses, in weak form, so the same networks would run on any mesh.

The steps every case shares (protocol, fine data, transfer, training, forecast, baselines, errors,
figure, VTK) are those of ``walkthrough.py``; this demo adds what the boundary changes. Run it as
``python demos/burgers2d.py`` (the real sizes of its protocol,
``firedrake_msm/configs/burgers2d.toml``: a long run) or with ``--fast`` (tiny sizes for the
tests, seconds, meaningless numbers).
"""
from walkthrough import main


# The residual is :math:`F(u; v) = (u(u_x + u_y), v) + \nu(\nabla u, \nabla v)` and
# ``problem.bcs(V)`` one ``DirichletBC(V, 0, "on_boundary")``. The coarse state's boundary dofs
# are fixed by it: the physics drift holds them (``PhysicsDrift`` with the problem's ``bcs``), and
# ``CoarseSolver`` applies the condition on every Runge-Kutta stage of the baselines.
def boundary(run):
    fixed = run.problem.bcs(run.V_H)[0].nodes
    print(f"{len(fixed)} of the {run.V_H.dim()} coarse dofs lie on the boundary")


# The learned closure and noise are masked on the boundary too: only interior dofs are learned,
# and the forecast keeps the wall at zero in every ensemble member.
def masked(run):
    sde = run.model.sde
    print(f"boundary dofs without closure or noise: {int((sde.mask[:sde.n_u] == 0).sum())}")


if __name__ == "__main__":
    main("burgers2d", description="2D viscous Burgers, step by step.", after_problem=boundary,
         after_training=masked)
