r"""A vortex street on 349 vertices: the cylinder wake, step by step
==================================================================

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

This demo spells out what ``firedrake-msm compare cylinder`` does in one call. Run it as
``python demos/cylinder.py`` (the real sizes of its protocol,
``firedrake_msm/configs/cylinder.toml``: a long run) or with ``--fast``
(tiny sizes for the tests: the coarse mesh stands in for the fine one, 0.3 time units from rest,
meaningless numbers).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from firedrake import COMM_SELF, Function, FunctionSpace, inner, sqrt
from firedrake.pyplot import tripcolor
from matplotlib.figure import Figure

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.protocol import Protocol
from firedrake_msm.problems import Cylinder
from firedrake_msm.train import fit
from firedrake_msm.transfer import Transfer, cell_width


parser = argparse.ArgumentParser(description="The cylinder wake, step by step.")
parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the current "
                    "folder; a temporary one with --fast)")
args = parser.parse_args()
# The case's protocol (``firedrake_msm/configs/<case>.toml``) holds what a comparison runs: ``simulate``
# keywords, the models' and the training's settings, ensemble size and Smagorinsky constant; under
# ``--fast`` (tiny sizes) everything goes into ``fast/`` subfolders.
settings = Protocol.load("cylinder").fast() if args.fast else Protocol.load("cylinder")
root = args.output or (Path(tempfile.mkdtemp(prefix="cylinder-")) if args.fast else Path("."))
data, runs, results = (root / name / ("fast" if args.fast else "") for name in ("data", "runs", "results"))
out = results / "demos" / "cylinder"
out.mkdir(parents=True, exist_ok=True)

# The problem reads the physical names of ``firedrake_msm/meshes/cylinder_coarse.msh`` (both
# meshes come from one ``.geo``), so its boundary conditions say
# ``DirichletBC(V, 0, names["cylinder"])``. Its space is the mixed Taylor-Hood space
# :math:`W = [P_2]^2 \times P_1`, its residual
# :math:`((\nabla u)u, v) + \nu(\nabla u, \nabla v) - (p, \nabla\cdot v) + (q, \nabla\cdot u)`.
problem = Cylinder()
mesh_H = problem.mesh(problem.coarse, comm=COMM_SELF)
W_H = problem.function_space(mesh_H)
V_H = W_H.sub(0).collapse()                  # the observed velocity
print(f"{problem.name}: physical names {problem.names.tags}")
print(f"coarse mesh: {mesh_H.num_vertices()} vertices; {V_H.dim()} velocity + "
      f"{W_H.sub(1).dim()} pressure dofs")

# The fine data: one trajectory, made once with ``simulate`` (Irksome's Radau IIA, stiffly
# accurate, so that the pressure is the last stage's) and reused. ``splits`` sees a single
# trajectory and splits it in time: ``{"time_range": (t0, t1)}`` for each part.
dataset = data / "cylinder.h5"
if not dataset.exists():
    dataset.parent.mkdir(parents=True, exist_ok=True)
    simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns}, comm=COMM_SELF)
parts = splits(dataset)
print("split in time:", {name: tuple(round(t, 3) for t in part["time_range"])
      for name, part in parts.items()})
V_h, _ = load_space(dataset)
times, truth = load_trajectories(dataset, **parts["test"])        # (1, T, N_h)
print(f"fine data: {V_h.dim()} velocity dofs; test: {len(times)} times")

# Restriction :math:`R` (Helmholtz-filtered :math:`L^2` projection, filter width :math:`0.41\Delta`
# with :math:`\Delta = |K|^{1/2}` the local cell size, as the model computes it: the graded mesh's
# cells near the cylinder are a thousandth of the mean's area) and prolongation :math:`P`
# (interpolation). The meshes are not nested; :math:`P` interpolates anyway.
config = settings.model_config(settings.model["n_latent"])
transfer = Transfer(V_h, V_H, filter_width=config.filter_width * cell_width(mesh_H))
y0 = torch.as_tensor(truth[:, 0])
u0 = transfer.restrict(y0)
print(f"lost on the coarse mesh at t0: |y - PRy| / |y| = {relative_l2(y0, transfer.prolong(u0)).mean():.3f}")

# Training writes ``checkpoint.pt``, ``best.pt`` and ``log.csv``; ``resume=True`` continues an
# interrupted run and returns at once for a finished one. The model's physics drift is the bridge's
# ``PhysicsDrift`` with ``prognostic=(0,)``: it finds the pressure block of the Jacobian zero, hence
# index 2, and solves the saddle point for the velocity rate.
best = fit(dataset, runs / f"cylinder-n{config.n_latent}", config, settings.train, resume=True)
model = MultiscaleModel.load(best)
drift = model.sde.physics
print(f"physics drift: index {drift.index}, {len(drift.algebraic_dofs)} pressure dofs eliminated")

# Ensemble forecast from the first test snapshot, decoded to the fine mesh.
result = forecast(model, y0, times, samples=settings.samples, seed=0, truth=truth)
predictions = {"multiscale": result.mean.double().numpy()}

# Baselines on the coarse mesh from :math:`R y_0`. ``CoarseSolver`` takes the observed velocity
# and leaves the pressure at zero: the Radau IIA stages never read it, and the first step makes the
# velocity discretely divergence free. Smagorinsky adds :math:`(\nu_t\nabla u, \nabla v)`,
# :math:`\nu_t = (C_s\Delta)^2\sqrt{2S:S}`, to the momentum equation.
for name, closure in (("coarse DNS", None), ("Smagorinsky", "smagorinsky")):
    solver = CoarseSolver(problem, W_H, closure=closure, C_s=settings.C_s)
    coarse = np.stack([solver.forecast(u, times).states for u in u0.numpy()])
    predictions[name] = transfer.prolong(torch.as_tensor(coarse).flatten(0, 1)).reshape(truth.shape).numpy()

# Relative :math:`L^2` errors at every test time, and the ensemble's CRPS.
errors = {name: relative_l2(truth, prediction) for name, prediction in predictions.items()}
score = result.crps.mean()
for name, e in errors.items():
    print(f"{name:>12}: relative L2 error {summary(e)[0]:.3f} ± {summary(e)[1]:.3f}")
print(f"  multiscale CRPS {score:.4g}")

# The figure: the speed :math:`|u|` at the last test time (interpolated into P1 for Firedrake's
# ``tripcolor``, on one colour scale), and the errors against time.
fields = {"fine DNS": truth[0, -1], **{name: p[0, -1] for name, p in predictions.items()}}
speed = Function(FunctionSpace(V_h.mesh(), "CG", 1))
fig = Figure(figsize=(12, 9))
names = list(fields)
axes = fig.subplot_mosaic([names[:2], names[2:], ["errors", "errors"]])
top = np.linalg.norm(truth[0, -1].reshape(-1, 2), axis=1).max()      # one colour scale
for name, values in fields.items():
    u = Function(V_h)
    u.dat.data[:] = values.reshape(u.dat.data_ro.shape)
    artist = tripcolor(speed.interpolate(sqrt(inner(u, u))), axes=axes[name], vmin=0, vmax=top)
    fig.colorbar(artist, ax=axes[name], shrink=0.8)
    axes[name].set(title=f"|u|, {name}, t = {times[-1]:.3g}", aspect="equal")
for name, e in errors.items():
    axes["errors"].semilogy(times, e.mean(0), label=name)
axes["errors"].set(xlabel="t", ylabel="relative L2 error", title="test error")
axes["errors"].legend()
fig.tight_layout()
fig.savefig(out / "cylinder.png", dpi=100)

# ParaView: truth, ensemble mean and spread of the velocity on the fine mesh.
write_vtk(out / "cylinder.pvd", model, result, truth)
print(f"figure and VTK files in {out}/")
