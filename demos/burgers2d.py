r"""A steepening front with walls: the 2D Burgers case, step by step
==================================================================

Viscous Burgers for a scalar on the unit square with homogeneous Dirichlet data,

.. math:: \partial_t u = \nu\Delta u - u(\partial_x u + \partial_y u)\quad\text{in } [0,1]^2,
          \qquad u = 0 \text{ on } \partial\Omega,\qquad \nu = 0.005,

from a bump :math:`(1 + 0.1e)\,e^{-|x - (0.3, 0.3)|^2/(0.2 + 0.01e)^2}`, :math:`e \sim N(0, 1)`.
The bump travels towards the corner :math:`(1, 1)` and steepens into a front whose width, about
:math:`\nu/u`, is far below the coarse mesh's cells (8 × 8 squares, each cut into two P1
triangles; the fine mesh has 128 × 128). The under-resolved front oscillates; the multiscale model
learns what the coarse mesh misses, in weak form, so the same networks would run on any mesh.

What the boundary changes: the coarse state's boundary dofs are fixed by the Dirichlet condition,
so the physics drift holds them (``PhysicsDrift`` with the problem's ``bcs``), and the learned
closure and noise are masked there: only interior dofs are learned.

This demo spells out what ``firedrake-msm compare burgers2d`` does in one call. Run it as
``python demos/burgers2d.py`` (the real sizes of its protocol,
``firedrake_msm/configs/burgers2d.toml``: a long run) or with ``--fast``
(tiny sizes for the tests, seconds, meaningless numbers).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from firedrake import COMM_SELF, Function, TestFunction
from firedrake.pyplot import tripcolor
from matplotlib.figure import Figure

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.protocol import Protocol
from firedrake_msm.problems import Burgers2D
from firedrake_msm.train import fit
from firedrake_msm.transfer import Transfer, cell_width

parser = argparse.ArgumentParser(description="2D viscous Burgers, step by step.")
parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the current "
                    "folder; a temporary one with --fast)")
args = parser.parse_args()
# The case's protocol (``firedrake_msm/configs/<case>.toml``) holds what a comparison runs: ``simulate``
# keywords, the models' and the training's settings, ensemble size and Smagorinsky constant; under
# ``--fast`` (tiny sizes) everything goes into ``fast/`` subfolders.
settings = Protocol.load("burgers2d").fast() if args.fast else Protocol.load("burgers2d")
root = args.output or (Path(tempfile.mkdtemp(prefix="burgers2d-")) if args.fast else Path("."))
data, runs, results = (root / name / ("fast" if args.fast else "") for name in ("data", "runs", "results"))
out = results / "demos" / "burgers2d"
out.mkdir(parents=True, exist_ok=True)

# The problem: the residual :math:`F(u; v) = (u(u_x + u_y), v) + \nu(\nabla u, \nabla v)` in UFL,
# and ``bcs(V)``, one ``DirichletBC(V, 0, "on_boundary")``.
problem = Burgers2D()
mesh_H = problem.mesh(problem.coarse, comm=COMM_SELF)
V_H = problem.function_space(mesh_H)
F = problem.residual(Function(V_H), TestFunction(V_H))
fixed = problem.bcs(V_H)[0].nodes
print(f"{problem.name}: coarse mesh of {mesh_H.num_cells()} triangles, {V_H.dim()} P1 dofs, "
      f"{len(fixed)} of them on the boundary; F(u; v) = {F.integrals()[0].integrand()} dx")

# The fine data, made once with ``simulate`` (Irksome, implicit midpoint) and reused.
dataset = data / "burgers2d.h5"
if not dataset.exists():
    dataset.parent.mkdir(parents=True, exist_ok=True)
    simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns}, comm=COMM_SELF)
V_h, _ = load_space(dataset)
times, truth = load_trajectories(dataset, **splits(dataset)["test"])      # (n, T, N_h)
print(f"fine data: {V_h.dim()} dofs; test: {truth.shape[0]} trajectories x {len(times)} times")

# Restriction :math:`R` (Helmholtz-filtered :math:`L^2` projection) and prolongation :math:`P`
# (interpolation). The filter width is :math:`0.41\Delta`, :math:`\Delta = |K|^{1/2}` the side of a
# square of the cell's area, as the model computes it.
config = settings.model_config(settings.model["n_latent"])
transfer = Transfer(V_h, V_H, filter_width=config.filter_width * cell_width(mesh_H))
y0 = torch.as_tensor(truth[:, 0])
u0 = transfer.restrict(y0)
print(f"lost on the coarse mesh at t0: |y - PRy| / |y| = {relative_l2(y0, transfer.prolong(u0)).mean():.3f}")

# Training writes ``checkpoint.pt``, ``best.pt`` and ``log.csv``; ``resume=True`` continues an
# interrupted run and returns at once for a finished one.
best = fit(dataset, runs / f"burgers2d-n{config.n_latent}", config, settings.train, resume=True)
model = MultiscaleModel.load(best)
print(f"boundary dofs without closure or noise: {int((model.sde.mask[:model.sde.n_u] == 0).sum())}")

# Ensemble forecast from the first test snapshot, decoded to the fine mesh.
result = forecast(model, y0, times, samples=settings.samples, seed=0, truth=truth)
predictions = {"multiscale": result.mean.double().numpy()}

# Baselines on the coarse mesh from :math:`R y_0`: coarse DNS, and Smagorinsky LES with
# :math:`\nu_t = (C_s\Delta)^2|\nabla u|` added to :math:`\nu`. ``CoarseSolver`` applies the
# Dirichlet condition on every Runge-Kutta stage.
for name, closure in (("coarse DNS", None), ("Smagorinsky", "smagorinsky")):
    solver = CoarseSolver(problem, V_H, closure=closure, C_s=settings.C_s)
    coarse = np.stack([solver.forecast(u, times).states for u in u0.numpy()])
    predictions[name] = transfer.prolong(torch.as_tensor(coarse).flatten(0, 1)).reshape(truth.shape).numpy()

# Relative :math:`L^2` errors at every test time, and the ensemble's CRPS.
errors = {name: relative_l2(truth, prediction) for name, prediction in predictions.items()}
score = result.crps.mean()
for name, e in errors.items():
    print(f"{name:>12}: relative L2 error {summary(e)[0]:.3f} ± {summary(e)[1]:.3f}")
print(f"  multiscale CRPS {score:.4g}")

# The figure: the first test trajectory at the last time on the fine mesh (Firedrake's
# ``tripcolor``), the ensemble spread, and the errors against time.
fields = {"fine DNS": truth[0, -1], **{name: p[0, -1] for name, p in predictions.items()},
          "multiscale spread": result.std[0, -1].double().numpy()}
fig = Figure(figsize=(4 * len(fields), 7))
axes = fig.subplot_mosaic([list(fields), ["errors"] * len(fields)], height_ratios=[1.4, 1])
for name, values in fields.items():
    f = Function(V_h)
    f.dat.data[:] = values
    fig.colorbar(tripcolor(f, axes=axes[name]), ax=axes[name], shrink=0.8)
    axes[name].set(title=f"{name}, t = {times[-1]:.3g}", aspect="equal")
for name, e in errors.items():
    axes["errors"].semilogy(times, e.mean(0), label=name)
axes["errors"].set(xlabel="t", ylabel="relative L2 error", title="test error")
axes["errors"].legend()
fig.tight_layout()
fig.savefig(out / "burgers2d.png", dpi=120)

# ParaView: truth, ensemble mean and spread of the first test trajectory on the fine mesh.
write_vtk(out / "burgers2d.pvd", model, result, truth)
print(f"figure and VTK files in {out}/")
