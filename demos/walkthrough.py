r"""From fine data to a forecast on a coarse mesh: the steps every case shares
============================================================================

Every reference case (the advected pulse, KdV, 2D Burgers, the cylinder wake) goes through the
same steps, the ones ``firedrake-msm compare <case>`` takes in one call: the case's protocol, the
problem on the coarse mesh, the fine data, the transfer between the meshes, training, an ensemble
forecast, the coarse baselines, the errors, a figure and VTK files. This demo spells them out
once, with the building blocks of ``import firedrake_msm as msm`` in the open. The case demos
(``pulse.py``, ``kdv.py``, ``burgers2d.py``, ``cylinder.py``) import it and add only what is
theirs, at the points where :func:`main` calls them back.

Run it for any case as ``python demos/walkthrough.py <case>`` (the real sizes of the case's
protocol, ``firedrake_msm/configs/<case>.toml``: a long run) or with ``--fast`` (tiny sizes for
the tests, seconds, meaningless numbers); ``--output DIR`` puts ``data/``, ``runs/`` and
``results/`` there (default: the current folder; a temporary one with ``--fast``). The case may
also be a protocol file of one's own, ``my.toml``.
"""
import argparse
import tempfile
from pathlib import Path
from textwrap import shorten
from types import SimpleNamespace

import numpy as np
import torch
from firedrake import COMM_SELF, Function, FunctionSpace, SpatialCoordinate, TestFunction, inner, sqrt
from firedrake.pyplot import tripcolor
from matplotlib.figure import Figure

import firedrake_msm as msm
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.transfer import cell_width


# The command line: the case (unless a case demo fixes it), ``--fast`` and ``--output``.
def arguments(case=None, description=None):
    parser = argparse.ArgumentParser(description=description or "One case, step by step.")
    if case is None:
        parser.add_argument("case", help="a reference case (pulse, kdv, burgers2d, cylinder) or a "
                            "protocol .toml")
    parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
    parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the "
                        "current folder; a temporary one with --fast)")
    args = parser.parse_args()
    args.case = args.case if case is None else case
    return args


# The case's protocol (``firedrake_msm/configs/<case>.toml``) holds what a comparison runs:
# ``simulate`` keywords, the models' and the training's settings, the ensemble size and the
# Smagorinsky constant. Under ``--fast`` (tiny sizes) everything goes into ``fast/`` subfolders.
# The data and the trained models go where ``compare`` keeps them, so that each reuses the other's;
# the demo's own figure and VTK files go into ``results/demos/<case>/``.
def protocol_and_folders(args):
    settings = msm.Protocol.load(args.case)
    settings = settings.fast() if args.fast else settings
    root = args.output or (Path(tempfile.mkdtemp(prefix=f"{settings.name}-")) if args.fast else Path("."))
    below = "fast" if args.fast else ""
    data, runs, results = (root / name / below for name in ("data", "runs", "results"))
    folders = SimpleNamespace(data=data, runs=runs, out=results / "demos" / settings.name)
    folders.out.mkdir(parents=True, exist_ok=True)
    return settings, folders


# The problem object holds the UFL residual :math:`F(u; v)` of the semi-discrete form
# :math:`(\partial_t u, v) + F(u; v) = 0`, its meshes, its function space, its boundary conditions
# and its random initial conditions. The same residual serves the fine DNS, the coarse baselines
# and, through the torch bridge, the physics drift :math:`-M^{-1}F_H(u)` of the model on the
# coarse mesh. On the coarse mesh there are two spaces: the state space :math:`W_H` (mixed where
# the problem has algebraic unknowns, as KdV and the cylinder) and its observed part :math:`V_H`,
# the one that the data, the transfer and the model see.
def coarse_problem(settings):
    problem = msm.resolve(settings.problem, settings.problem_options)
    mesh_H = problem.mesh(problem.coarse, comm=COMM_SELF)
    W_H = problem.function_space(mesh_H)
    V_H = problem.observed(Function(W_H)).function_space().collapse()
    F = problem.residual(Function(W_H), TestFunction(W_H))
    measures = {"cell": "dx", "exterior_facet": "ds", "interior_facet": "dS"}
    terms = " + ".join(f"[{itg.integrand()}] {measures.get(itg.integral_type(), itg.integral_type())}"
                       for itg in F.integrals())
    print(f"{problem.name}: coarse mesh of {mesh_H.num_cells()} cells, {W_H.dim()} state dofs, "
          f"{V_H.dim()} of them observed; F(u; v) = {shorten(terms, 200)}")
    return problem, W_H, V_H


# The fine data: ``simulate`` runs the DNS with Irksome (the problem's Runge-Kutta scheme) from
# seeded initial conditions into one HDF5 file (mesh, snapshots, times). It is made once and
# reused; a protocol that names data recorded elsewhere (its ``dataset``) uses those instead.
# ``splits`` divides a dataset into train, validation and test parts (by trajectory; one long
# trajectory in time), and ``load_trajectories`` reads the test part in the dof order of the fine
# space ``load_space`` rebuilds from the file.
def fine_data(problem, settings, folders):
    dataset = Path(settings.dataset) if settings.dataset else folders.data / f"{settings.name}.h5"
    if not dataset.exists():
        dataset.parent.mkdir(parents=True, exist_ok=True)
        msm.simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns},
                     comm=COMM_SELF)
    return dataset


def held_out(dataset):
    V_h, _ = msm.load_space(dataset)
    times, truth = msm.load_trajectories(dataset, **msm.splits(dataset)["test"])      # (n, T, N_h)
    print(f"fine data: {V_h.dim()} dofs; test: {truth.shape[0]} trajectories x {len(times)} times")
    return V_h, times, truth


# Between the meshes: the prolongation :math:`P` interpolates a coarse field on the fine mesh
# (the meshes need not be nested); the restriction :math:`R` is the Helmholtz-filtered
# :math:`L^2` projection, :math:`(Ry, v) + \alpha^2(\nabla Ry, \nabla v) = (y, v)`, with
# :math:`\alpha = 0.41\Delta` and :math:`\Delta = |K|^{1/d}` the local coarse cell size, as the
# model computes it (on a graded mesh the width follows the cells). :math:`PRy` is all a coarse
# field can say about :math:`y`.
def transfer_between(V_h, V_H, config, y0):
    transfer = msm.Transfer(V_h, V_H, filter_width=config.filter_width * cell_width(V_H.mesh()))
    u0 = transfer.restrict(y0)
    lost = relative_l2(y0, transfer.prolong(u0)).mean()
    print(f"lost on the coarse mesh at t0: |y - PRy| / |y| = {lost:.3f}")
    return transfer, u0


# Training maximises the ELBO over windows of consecutive snapshots; no solver runs in the loop.
# ``fit`` writes ``checkpoint.pt`` (everything needed to resume exactly), ``best.pt`` (the best
# validation forecast) and ``log.csv`` (ELBO, KL, learning rate, validation error per step) into
# the run folder; ``resume=True`` continues an interrupted run and returns at once for a finished
# one, so running a demo again reuses its model. The checkpoint holds the meshes: loading it needs
# no dataset.
def train(dataset, settings, folders, config):
    best = msm.fit(dataset, folders.runs / f"{settings.name}-n{config.n_latent}", config, settings.train,
                   resume=True)
    return msm.MultiscaleModel.load(best)


# An ensemble forecast from the first snapshot of each test trajectory: the encoder gives the
# posterior of :math:`z = (u, h)`, torchsde integrates the learned SDE for each member, and the
# decoder maps each path back to the fine mesh (``result.mean``, ``result.std``:
# ``(n, T, N_h)``; ``result.crps`` against the truth).
#
# The baselines run on the same coarse mesh from the same :math:`R y_0`: the coarse DNS (the
# problem's residual, nothing else) and Smagorinsky LES (plus :math:`(\nu_t\nabla u, \nabla v)`
# in the observed field's equation, :math:`\nu_t = (C_s\Delta)^2|\nabla u|`). ``CoarseSolver``
# steps them with Irksome on the whole state space :math:`W_H`, applying the boundary
# conditions; given only the observed :math:`u_0`, it makes the rest of a mixed state consistent
# with it. The coarse states are prolonged to compare on the fine mesh.
def predictions(problem, W_H, model, transfer, y0, u0, times, truth, settings):
    result = msm.forecast(model, y0, times, samples=settings.samples, seed=0, truth=truth)
    predicted = {"multiscale": result.mean.double().numpy()}
    for name, closure in (("coarse DNS", None), ("Smagorinsky", "smagorinsky")):
        solver = msm.CoarseSolver(problem, W_H, closure=closure, C_s=settings.C_s)
        coarse = np.stack([solver.forecast(u, times).states for u in u0.numpy()])
        predicted[name] = transfer.prolong(torch.as_tensor(coarse).flatten(0, 1)).reshape(truth.shape).numpy()
    return result, predicted


# Errors: the relative :math:`L^2` error of the dof vector at every test time, and for the
# ensemble the CRPS (lower is better; it rewards a spread that covers the truth).
def errors_of(truth, predicted, result):
    errors = {name: relative_l2(truth, prediction) for name, prediction in predicted.items()}
    for name, e in errors.items():
        print(f"{name:>12}: relative L2 error {summary(e)[0]:.3f} ± {summary(e)[1]:.3f}")
    print(f"  multiscale CRPS {result.crps.mean():.4g}")
    return errors


# The figure: the first test trajectory at the last time, and the errors against time. On an
# interval, the fields as curves (dofs sorted by :math:`x`) with the ensemble's two-sigma band
# shaded; in 2D, one panel per field on the fine mesh (Firedrake's ``tripcolor``, one colour scale
# for the states; a vector field as its magnitude, interpolated into P1) and one for the spread.
def draw(path, V_h, times, truth, predicted, result, errors):
    fields = {"fine DNS": truth[0, -1], **{name: p[0, -1] for name, p in predicted.items()}}
    spread = result.std[0, -1].double().numpy()
    if V_h.mesh().geometric_dimension == 1:
        x = Function(V_h).interpolate(SpatialCoordinate(V_h.mesh())[0]).dat.data_ro
        order = np.argsort(x)
        fig = Figure(figsize=(11, 4))
        left, error_axes = fig.subplots(1, 2)
        for name, values in fields.items():
            style = {"color": "k", "lw": 2} if name == "fine DNS" else {"lw": 1}
            left.plot(x[order], values[order], label=name, **style)
        mean = fields["multiscale"]
        band = 2 * spread
        left.fill_between(x[order], (mean - band)[order], (mean + band)[order], alpha=0.3, color="C0")
        left.set(xlabel="x", title=f"t = {times[-1]:.3g}")
        left.legend()
    else:
        vector = len(V_h.value_shape) == 1
        P1 = FunctionSpace(V_h.mesh(), "CG", 1)

        def plotted(values):
            f = Function(V_h)
            f.dat.data[:] = values.reshape(f.dat.data_ro.shape)
            return Function(P1).interpolate(sqrt(inner(f, f))) if vector else f

        states = {name: plotted(values) for name, values in fields.items()}
        low, high = (0 if vector else truth[0, -1].min()), states["fine DNS"].dat.data_ro.max()
        panels = {**{(f"|u|, {name}" if vector else name): (f, low, high) for name, f in states.items()},
                  "multiscale spread": (plotted(spread), None, None)}
        xy = V_h.mesh().coordinates.dat.data_ro
        aspect = np.ptp(xy[:, 1]) / np.ptp(xy[:, 0])
        fig = Figure(figsize=(4 * len(panels), 4 * aspect + 4.5))
        axes = fig.subplot_mosaic([list(panels), ["errors"] * len(panels)],
                                  height_ratios=[4 * aspect + 1, 3.5])
        for name, (f, vmin, vmax) in panels.items():
            fig.colorbar(tripcolor(f, axes=axes[name], vmin=vmin, vmax=vmax), ax=axes[name], shrink=0.8)
            axes[name].set(title=f"{name}, t = {times[-1]:.3g}", aspect="equal")
        error_axes = axes["errors"]
    for name, e in errors.items():
        error_axes.semilogy(times, e.mean(0), label=name)
    error_axes.set(xlabel="t", ylabel="relative L2 error", title="test error")
    error_axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# The steps in order. A case demo calls ``main("<case>", ...)`` with its own additions: each
# ``after_*`` function is called with the run so far (a namespace of everything above: ``settings``,
# ``config``, ``problem``, ``W_H``, ``V_H``, ``dataset``, ``V_h``, ``times``, ``truth``, ``transfer``,
# ``y0``, ``u0``, ``model``, ...) once that step is done, and may add to it. Last, ParaView files:
# truth, ensemble mean and spread of the first test trajectory on the fine mesh.
def main(case=None, *, description=None, after_problem=None, after_data=None, after_transfer=None,
         after_training=None):
    def then(step):
        if step is not None:
            step(run)

    run = SimpleNamespace()
    run.settings, run.folders = protocol_and_folders(arguments(case, description))
    run.config = run.settings.model_config(run.settings.model["n_latent"])
    run.problem, run.W_H, run.V_H = coarse_problem(run.settings)
    then(after_problem)
    run.dataset = fine_data(run.problem, run.settings, run.folders)
    run.V_h, run.times, run.truth = held_out(run.dataset)
    then(after_data)
    run.y0 = torch.as_tensor(run.truth[:, 0])
    run.transfer, run.u0 = transfer_between(run.V_h, run.V_H, run.config, run.y0)
    then(after_transfer)
    run.model = train(run.dataset, run.settings, run.folders, run.config)
    then(after_training)
    run.result, run.predicted = predictions(run.problem, run.W_H, run.model, run.transfer, run.y0, run.u0,
                                            run.times, run.truth, run.settings)
    run.errors = errors_of(run.truth, run.predicted, run.result)
    name = run.settings.name
    draw(run.folders.out / f"{name}.png", run.V_h, run.times, run.truth, run.predicted, run.result,
         run.errors)
    msm.write_vtk(run.folders.out / f"{name}.pvd", run.model, run.result, run.truth)
    print(f"figure and VTK files in {run.folders.out}/")
    return run


if __name__ == "__main__":
    main()
