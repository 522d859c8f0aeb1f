r"""A pulse narrower than a coarse cell: the advected-pulse case, step by step
===========================================================================

The simplest reference case is pure advection on the periodic unit interval,

.. math:: \partial_t u + c\,\partial_x u = 0,\qquad x \in [0, 1),\quad c = 1,

of a Gaussian pulse :math:`u_0 = e^{-((x - 1/2)/w)^2}`, its width :math:`w \sim U(0.01, 0.02)`
drawn per trajectory. The exact solution only moves the pulse. The fine mesh (1000 P1 cells)
resolves it; the coarse one (20 cells, :math:`H = 0.05`) cannot: the pulse is narrower than one
coarse cell, so its best coarse representation is a low, wide bump, and the coarse Galerkin scheme,
which has no dissipation, disperses that bump into trailing wiggles. A stochastic multiscale model
on the same 20 cells carries what the mesh cannot see in an auxiliary field :math:`h` and decodes it
back to the fine mesh.

This demo spells out what ``firedrake-msm compare pulse`` does in one call: problem, fine data,
transfer, training, ensemble forecast, baselines, metrics, a figure and VTK files. Run it as
``python demos/pulse.py`` (the real sizes of its protocol,
``firedrake_msm/configs/pulse.toml``: a long run) or with ``--fast`` (tiny
sizes for the tests, seconds, meaningless numbers).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from firedrake import COMM_SELF, Function, SpatialCoordinate, TestFunction
from matplotlib.figure import Figure

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.protocol import Protocol
from firedrake_msm.problems import AdvectedPulse
from firedrake_msm.train import fit
from firedrake_msm.transfer import Transfer

parser = argparse.ArgumentParser(description="The advected pulse, step by step.")
parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the current "
                    "folder; a temporary one with --fast)")
args = parser.parse_args()
# The case's protocol (``firedrake_msm/configs/<case>.toml``) holds what a comparison runs: ``simulate``
# keywords, the models' and the training's settings, ensemble size and Smagorinsky constant; under
# ``--fast`` (tiny sizes) everything goes into ``fast/`` subfolders.
settings = Protocol.load("pulse").fast() if args.fast else Protocol.load("pulse")
root = args.output or (Path(tempfile.mkdtemp(prefix="pulse-")) if args.fast else Path("."))
data, runs, results = (root / name / ("fast" if args.fast else "") for name in ("data", "runs", "results"))
out = results / "demos" / "pulse"
out.mkdir(parents=True, exist_ok=True)

# The problem object holds the UFL residual :math:`F(u; v) = (c\,u_x, v)` of the semi-discrete
# form :math:`(\partial_t u, v) + F(u; v) = 0`, its meshes (periodic intervals) and the random
# initial conditions. The same residual serves the fine DNS, the coarse baselines and, through the
# torch bridge, the physics drift :math:`-M^{-1}F_H(u)` of the model on the coarse mesh.
problem = AdvectedPulse()
mesh_H = problem.mesh(problem.coarse, comm=COMM_SELF)
V_H = problem.function_space(mesh_H)
F = problem.residual(Function(V_H), TestFunction(V_H))
print(f"{problem.name}: coarse mesh of {problem.coarse} cells; F(u; v) = {F.integrals()[0].integrand()} dx")

# The fine data: ``simulate`` runs the DNS with Irksome (the implicit midpoint rule) from seeded
# initial conditions into one HDF5 file (mesh, snapshots, times). It is made once and reused.
dataset = data / "pulse.h5"
if not dataset.exists():
    dataset.parent.mkdir(parents=True, exist_ok=True)
    simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns}, comm=COMM_SELF)
V_h, _ = load_space(dataset)
times, truth = load_trajectories(dataset, **splits(dataset)["test"])      # (n, T, N_h)
print(f"fine data: {V_h.dim()} dofs; test: {truth.shape[0]} trajectories x {len(times)} times")

# Between the meshes: the prolongation :math:`P` interpolates a coarse field on the fine mesh; the
# restriction :math:`R` is the Helmholtz-filtered :math:`L^2` projection,
# :math:`(Ry, v) + \alpha^2(\nabla Ry, \nabla v) = (y, v)`, with :math:`\alpha = 0.41 H` as the
# model uses. :math:`PRy` is all a coarse field can say about :math:`y`: for this narrow pulse,
# little.
config = settings.model_config(settings.model["n_latent"])
transfer = Transfer(V_h, V_H, filter_width=config.filter_width / problem.coarse)
y0 = torch.as_tensor(truth[:, 0])
u0 = transfer.restrict(y0)
print(f"lost on the coarse mesh at t0: |y - PRy| / |y| = {relative_l2(y0, transfer.prolong(u0)).mean():.3f}")

# Training maximises the ELBO over windows of consecutive snapshots; no solver runs in the loop.
# ``train`` writes ``checkpoint.pt`` (everything needed to resume exactly), ``best.pt`` (the best
# validation forecast) and ``log.csv`` (ELBO, KL, learning rate, validation error per step) into
# the run folder; ``resume=True`` continues an interrupted run and does nothing for a finished one,
# so running the demo again reuses the model (the folder is the one ``compare`` uses).
best = fit(dataset, runs / f"pulse-n{config.n_latent}", config, settings.train, resume=True)
model = MultiscaleModel.load(best)

# An ensemble forecast from the first test snapshot: the encoder gives the posterior of
# :math:`z = (u, h)`, torchsde integrates the learned SDE for each member, and the decoder maps
# each path back to the fine mesh (``result.mean``, ``result.std``: ``(n, T, N_h)``).
result = forecast(model, y0, times, samples=settings.samples, seed=0, truth=truth)
predictions = {"multiscale": result.mean.double().numpy()}

# The baselines on the same 20 cells, from the same :math:`R y_0`: the coarse DNS (the problem's
# residual, nothing else) and Smagorinsky LES (plus :math:`(\nu_t u_x, v_x)`,
# :math:`\nu_t = (C_s H)^2 |u_x|`). ``CoarseSolver`` steps them with Irksome; we prolong the
# coarse states to compare on the fine mesh.
for name, closure in (("coarse DNS", None), ("Smagorinsky", "smagorinsky")):
    solver = CoarseSolver(problem, V_H, closure=closure, C_s=settings.C_s)
    coarse = np.stack([solver.forecast(u, times).states for u in u0.numpy()])
    predictions[name] = transfer.prolong(torch.as_tensor(coarse).flatten(0, 1)).reshape(truth.shape).numpy()

# Errors: the relative :math:`L^2` error of the dof vector at every test time, and for the
# ensemble the CRPS (lower is better; it rewards a spread that covers the truth).
errors = {name: relative_l2(truth, prediction) for name, prediction in predictions.items()}
score = result.crps.mean()
for name, e in errors.items():
    print(f"{name:>12}: relative L2 error {summary(e)[0]:.3f} ± {summary(e)[1]:.3f}")
print(f"  multiscale CRPS {score:.4g}")

# The figure: the first test trajectory at the last time (dofs sorted by :math:`x`; the ensemble's
# two-sigma band shaded) and the errors against time.
x = Function(V_h).interpolate(SpatialCoordinate(V_h.mesh())[0]).dat.data_ro
order = np.argsort(x)
fig = Figure(figsize=(11, 4))
left, right = fig.subplots(1, 2)
left.plot(x[order], truth[0, -1, order], "k", lw=2, label="fine DNS")
for name, prediction in predictions.items():
    left.plot(x[order], prediction[0, -1, order], lw=1, label=name)
band = 2 * result.std[0, -1].double().numpy()
mean = predictions["multiscale"][0, -1]
left.fill_between(x[order], (mean - band)[order], (mean + band)[order], alpha=0.3, color="C0")
left.set(xlabel="x", title=f"t = {times[-1]:.3g}")
left.legend()
for name, e in errors.items():
    right.semilogy(times, e.mean(0), label=name)
right.set(xlabel="t", ylabel="relative L2 error", title="test error")
fig.tight_layout()
fig.savefig(out / "pulse.png", dpi=120)

# ParaView: truth, ensemble mean and spread of the first test trajectory on the fine mesh.
write_vtk(out / "pulse.pvd", model, result, truth)
print(f"figure and VTK files in {out}/")
