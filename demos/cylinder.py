r"""A vortex street on 349 vertices: the cylinder wake
===================================================

Incompressible Navier-Stokes past a cylinder of diameter :math:`D = 0.1` at :math:`Re = 160`,

.. math:: \partial_t u + (u\cdot\nabla)u - \nu\Delta u + \nabla p = 0,\qquad \nabla\cdot u = 0,

in the box :math:`[-1, 2.2]\times[-0.9, 0.9]` (uniform inflow, free-slip sides, no slip on the
cylinder, do-nothing outflow), on unstructured Gmsh meshes refined on the cylinder and in the wake,
with Taylor-Hood elements (P2 velocity, P1 pressure). The wake sheds a von Kármán street; the coarse
mesh (349 vertices) sheds too, but weakly. Only the velocity is observed.

Three things differ from the other cases.

- The pressure has no time derivative and does not even appear in its own equation
  :math:`(q, \nabla\cdot u) = 0`: an index-2 DAE. The model's physics drift eliminates it with the
  time-differentiated constraint (a Schur complement built once), so the coarse drift keeps the
  velocity discretely divergence free and the learned SDE lives on the velocity and :math:`h`.
- There is one long trajectory (after a spin-up), split in time: train on the first 13/15 of the
  stored interval, validate on the next 1/15, test on the last 1/15.
- The boundaries are Gmsh physical groups, addressed by name (``inlet``, ``walls``, ``cylinder``,
  ...) rather than by tag.

The steps every case shares (protocol, fine data, transfer, training, forecast, baselines, errors,
figure, VTK) are those of ``walkthrough.py``; this demo adds what is the wake's own. Run it as
``python demos/cylinder.py`` (the real sizes of its protocol,
``firedrake_msm/configs/cylinder.toml``: a long run) or with ``--fast`` (tiny sizes for the tests:
the coarse mesh stands in for the fine one, 0.3 time units from rest, meaningless numbers).
"""
import h5py

import firedrake_msm as msm
from walkthrough import main


# The problem reads the physical names of ``firedrake_msm/meshes/cylinder_coarse.msh`` (both
# meshes come from one ``.geo``), so its boundary conditions say
# ``DirichletBC(V, 0, names["cylinder"])``. Its space is the mixed Taylor-Hood space
# :math:`W = [P_2]^2 \times P_1`, its residual
# :math:`((\nabla u)u, v) + \nu(\nabla u, \nabla v) - (p, \nabla\cdot v) + (q, \nabla\cdot u)`;
# the observed space is the velocity's.
def taylor_hood(run):
    print(f"physical names {run.problem.names.tags}")
    print(f"coarse mesh: {run.V_H.mesh().num_vertices()} vertices; {run.V_H.dim()} velocity + "
          f"{run.W_H.sub(1).dim()} pressure dofs")


# The fine data are one trajectory, simulated with Irksome's Radau IIA (stiffly accurate, so that
# the pressure is the last stage's). Beside each snapshot, ``simulate`` stores the problem's
# ``diagnostics``: the drag and lift coefficients :math:`2F/(\bar U^2 D)` of the force on the
# cylinder, :math:`F = -\int_{\text{cylinder}} \sigma n\,ds`, an integral over the ``cylinder``
# physical name (``msm/diagnostics/lift`` in the file, one row per trajectory). The lift
# oscillates once per shed vortex pair: ``Cylinder.strouhal`` turns its period :math:`T` into
# :math:`St = D/(\bar U T)`, which the fine mesh resolves at Williamson's value for the unconfined
# cylinder, about 0.19 at :math:`Re = 160`. ``splits`` sees a single trajectory and splits it in
# time: ``{"time_range": (t0, t1)}`` for each part.
def shedding(run):
    with h5py.File(run.dataset, "r") as f:
        times, lift = f["msm/times"][...], f["msm/diagnostics/lift"][0]
    try:
        print(f"fine data: lift coefficient {lift.min():.3g} to {lift.max():.3g}, "
              f"Strouhal number {run.problem.strouhal(times, lift):.3f}")
    except ValueError as error:       # --fast: 0.3 time units from rest, before any shedding
        print(f"fine data: lift coefficient {lift.min():.3g} to {lift.max():.3g}; {error}")
    parts = msm.splits(run.dataset)
    print("split in time:", {name: tuple(round(t, 3) for t in part["time_range"])
                             for name, part in parts.items()})


# The model's physics drift is the bridge's ``PhysicsDrift`` with ``prognostic=(0,)``: it finds
# the pressure block of the Jacobian zero, hence index 2, and solves the saddle point for the
# velocity rate. The baselines' ``CoarseSolver`` takes the observed velocity and leaves the
# pressure at zero: the Radau IIA stages never read it, and the first step makes the velocity
# discretely divergence free; Smagorinsky adds :math:`(\nu_t\nabla u, \nabla v)`,
# :math:`\nu_t = (C_s\Delta)^2\sqrt{2S:S}`, to the momentum equation. The figure shows the speed
# :math:`|u|`.
def index_two(run):
    drift = run.model.sde.physics
    print(f"physics drift: index {drift.index}, {len(drift.algebraic_dofs)} pressure dofs eliminated")


if __name__ == "__main__":
    main("cylinder", description="The cylinder wake, step by step.", after_problem=taylor_hood,
         after_data=shedding, after_training=index_two)
