r"""Dispersive waves on a coarse mesh: the Korteweg-de Vries case, step by step
============================================================================

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

This demo spells out what ``firedrake-msm compare kdv`` does in one call. Run it as
``python demos/kdv.py`` (the real sizes of its protocol,
``firedrake_msm/configs/kdv.toml``: a long run) or with ``--fast`` (tiny
sizes for the tests, seconds, meaningless numbers).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from firedrake import COMM_SELF, Function, SpatialCoordinate, TestFunction
from matplotlib.figure import Figure

from firedrake_msm.bridge import PhysicsDrift
from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.protocol import Protocol
from firedrake_msm.problems import KdV
from firedrake_msm.train import fit
from firedrake_msm.transfer import Transfer

parser = argparse.ArgumentParser(description="The KdV equation, step by step.")
parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the current "
                    "folder; a temporary one with --fast)")
args = parser.parse_args()
# The case's protocol (``firedrake_msm/configs/<case>.toml``) holds what a comparison runs: ``simulate``
# keywords, the models' and the training's settings, ensemble size and Smagorinsky constant; under
# ``--fast`` (tiny sizes) everything goes into ``fast/`` subfolders.
settings = Protocol.load("kdv").fast() if args.fast else Protocol.load("kdv")
root = args.output or (Path(tempfile.mkdtemp(prefix="kdv-")) if args.fast else Path("."))
data, runs, results = (root / name / ("fast" if args.fast else "") for name in ("data", "runs", "results"))
out = results / "demos" / "kdv"
out.mkdir(parents=True, exist_ok=True)

# The problem's space is the mixed :math:`W = V \times V` and its residual the mixed form above.
# On the coarse mesh, ``PhysicsDrift`` (the torch bridge) turns it into :math:`\dot u = f(u)`:
# ``prognostic=(0,)`` says that only the first subspace carries :math:`\partial_t`; the bridge finds
# :math:`J_{ww}` (the P1 mass matrix) invertible, hence index 1, and solves :math:`w` out of the
# second row. The model builds the same drift internally.
problem = KdV()
mesh_H = problem.mesh(problem.coarse, comm=COMM_SELF)
W_H = problem.function_space(mesh_H)
V_H = W_H.sub(0).collapse()                  # the observed u
state = Function(W_H)
drift = PhysicsDrift(problem.residual(state, TestFunction(W_H)), state, prognostic=problem.prognostic)
print(f"{problem.name}: coarse mesh of {problem.coarse} cells; coarse DAE of index {drift.index}, "
      f"{W_H.dim()} dofs of (u, w) -> a drift on the {len(drift.prognostic_dofs)} dofs of u")

# The fine data, made once with ``simulate`` (Irksome's implicit midpoint rule on the mixed form;
# ``KdV.set_initial_state`` solves for a consistent :math:`w_0 = u_{0,xx}`), then reused.
dataset = data / "kdv.h5"
if not dataset.exists():
    dataset.parent.mkdir(parents=True, exist_ok=True)
    simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns}, comm=COMM_SELF)
V_h, _ = load_space(dataset)                 # only u was stored
times, truth = load_trajectories(dataset, **splits(dataset)["test"])      # (n, T, N_h)
print(f"fine data: {V_h.dim()} dofs; test: {truth.shape[0]} trajectories x {len(times)} times")

# Restriction :math:`R` (Helmholtz-filtered :math:`L^2` projection, width :math:`0.41 H`) and
# prolongation :math:`P` (interpolation) between the observed spaces; :math:`PRy` is the part of
# :math:`y` the coarse mesh can hold.
config = settings.model_config(settings.model["n_latent"])
transfer = Transfer(V_h, V_H, filter_width=config.filter_width * problem.length / problem.coarse)
y0 = torch.as_tensor(truth[:, 0])
u0 = transfer.restrict(y0)
print(f"lost on the coarse mesh at t0: |y - PRy| / |y| = {relative_l2(y0, transfer.prolong(u0)).mean():.3f}")
print(f"coarse physics drift at R y0: |du/dt| = {drift(0.0, u0).norm(dim=-1).mean():.3g}")

# Training (solver-free ELBO on windows of snapshots) writes ``checkpoint.pt``, ``best.pt`` and
# ``log.csv`` into the run folder; ``resume=True`` continues an interrupted run and returns at
# once for a finished one, so a second run of the demo reuses the model.
best = fit(dataset, runs / f"kdv-n{config.n_latent}", config, settings.train, resume=True)
model = MultiscaleModel.load(best)

# Ensemble forecast from the first test snapshot, decoded to the fine mesh.
result = forecast(model, y0, times, samples=settings.samples, seed=0, truth=truth)
predictions = {"multiscale": result.mean.double().numpy()}

# Baselines on the coarse mesh from :math:`R y_0`. ``CoarseSolver`` needs only the observed
# :math:`u_0`: it solves the algebraic row for a consistent :math:`w_0` itself. Smagorinsky adds
# :math:`(\nu_t u_x, v_x)` to the :math:`u` row only.
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

# The figure: the first test trajectory at the last time, with the ensemble's two-sigma band, and
# the errors against time.
x = Function(V_h).interpolate(SpatialCoordinate(V_h.mesh())[0]).dat.data_ro
order = np.argsort(x)
fig = Figure(figsize=(11, 4))
left, right = fig.subplots(1, 2)
left.plot(x[order], truth[0, -1, order], "k", lw=2, label="fine DNS")
for name, prediction in predictions.items():
    left.plot(x[order], prediction[0, -1, order], lw=1, label=name)
band, mean = 2 * result.std[0, -1].double().numpy(), predictions["multiscale"][0, -1]
left.fill_between(x[order], (mean - band)[order], (mean + band)[order], alpha=0.3, color="C0")
left.set(xlabel="x", title=f"t = {times[-1]:.3g}")
left.legend()
for name, e in errors.items():
    right.semilogy(times, e.mean(0), label=name)
right.set(xlabel="t", ylabel="relative L2 error", title="test error")
fig.tight_layout()
fig.savefig(out / "kdv.png", dpi=120)

# ParaView: truth, ensemble mean and spread of the first test trajectory on the fine mesh.
write_vtk(out / "kdv.pvd", model, result, truth)
print(f"figure and VTK files in {out}/")
