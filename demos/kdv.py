r"""Dispersive waves on a coarse mesh: the Korteweg-de Vries case
=============================================================

The KdV equation on the periodic interval :math:`[0, 10)`,

.. math:: \partial_t u = -u\,\partial_x u - \delta\,\partial_x^3 u,\qquad \delta = 0.02,

starts from a modulated wave packet :math:`2(1 + 0.05e)\cos(\pi x)\,e^{-(x - 7.5)^2/s^2}`,
:math:`s = 1 + 0.1e`, :math:`e \sim N(0, 1)`, which steepens and breaks into a train of solitary
waves far shorter than the 0.5 wide cells of the coarse mesh (20 cells; the fine mesh has 1000).

Lagrange P1 has no third derivative, so the problem is written in mixed form with
:math:`w = u_{xx}`, both P1:

.. math:: (u_t, v) + (u u_x, v) + \delta (w_x, v) + (w, \phi) + (u_x, \phi_x) = 0
          \quad \forall (v, \phi).

Only :math:`u` carries a time derivative: :math:`w` is algebraic (an index-1 DAE), and only
:math:`u` is observed. The model's physics drift eliminates :math:`w` exactly as the coarse
discretisation defines it, :math:`w(u) = -J_{ww}^{-1} F_w(u, 0)`, so the learned SDE lives on
:math:`u` and the auxiliary field :math:`h` alone.

The steps every case shares (protocol, fine data, transfer, training, forecast, baselines, errors,
figure, VTK) are those of ``walkthrough.py``; this demo adds what is KdV's own. Run it as
``python demos/kdv.py`` (the real sizes of its protocol, ``firedrake_msm/configs/kdv.toml``: a
long run) or with ``--fast`` (tiny sizes for the tests, seconds, meaningless numbers).
"""
from firedrake import Function, TestFunction

import firedrake_msm as msm
from walkthrough import main


# The problem's space is the mixed :math:`W = V \times V` and its residual the mixed form above;
# the observed space is its first part. On the coarse mesh, ``PhysicsDrift`` (the torch bridge)
# turns the form into :math:`\dot u = f(u)`: ``prognostic=(0,)`` says that only the first subspace
# carries :math:`\partial_t`; the bridge finds :math:`J_{ww}` (the P1 mass matrix) invertible,
# hence index 1, and solves :math:`w` out of the second row. The model builds the same drift
# internally. The fine data come from Irksome's implicit midpoint rule on the same mixed form
# (``KdV.set_initial_state`` solves for a consistent :math:`w_0 = u_{0,xx}`), but only :math:`u`
# is stored.
def index_one(run):
    state = Function(run.W_H)
    run.drift = msm.PhysicsDrift(run.problem.residual(state, TestFunction(run.W_H)), state,
                                 prognostic=run.problem.prognostic)
    print(f"coarse DAE of index {run.drift.index}: {run.W_H.dim()} dofs of (u, w) -> a drift on the "
          f"{len(run.drift.prognostic_dofs)} dofs of u")


# The drift acts on the restricted fine state :math:`R y_0` like any function of :math:`u`. The
# baselines need no :math:`w_0` either: ``CoarseSolver`` solves the algebraic row for a
# consistent one itself, and Smagorinsky adds :math:`(\nu_t u_x, v_x)` to the :math:`u` row only.
def drift_at_the_restriction(run):
    print(f"coarse physics drift at R y0: |du/dt| = {run.drift(0.0, run.u0).norm(dim=-1).mean():.3g}")


if __name__ == "__main__":
    main("kdv", description="The KdV equation, step by step.", after_problem=index_one,
         after_transfer=drift_at_the_restriction)
