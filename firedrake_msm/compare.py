r"""The side-by-side comparison on one coarse mesh: the baselines (under-resolved DNS, LES
closures, DMD, POD-SINDy), the implicit-scale model (:math:`n_h = 0`) and the multiscale model,
against the fine DNS.

Every method starts each test trajectory from its first fine snapshot :math:`y_0`: the baselines
from the filtered restriction :math:`R y_0` (the same :math:`R` as the models'), the models from
the encoder's posterior. Errors are measured on the fine mesh, against the DNS: the baselines'
coarse states prolonged, :math:`P u_H`, the models' PoE mean averaged over the ensemble.

The baselines (:data:`~firedrake_msm.protocol.BASELINES`; a protocol may list fewer):

- ``coarse_dns``: the problem's own form on the coarse mesh, no closure;
- ``smagorinsky``: static Smagorinsky with the protocol's :math:`C_s`;
- ``smagorinsky_tuned``: the same with the :math:`C_s` of the least validation error
  (:func:`tune_constant` over :data:`C_S_RANGE`, on the validation trajectories);
- ``dynamic_smagorinsky`` and ``wale``: :class:`~firedrake_msm.les.DynamicSmagorinsky` and
  :func:`~firedrake_msm.les.wale`;
- ``dmd`` and ``pod_sindy``: :func:`~firedrake_msm.reduced.fit_dmd` and
  :func:`~firedrake_msm.reduced.fit_pod_sindy` on the training trajectories' restrictions
  :math:`R y`, forecast from :math:`R y_0`.

The LES rows apply where their eddy viscosity can act on the observed field (Smagorinsky's on a
scalar or vector, WALE's on a velocity: a vector field, or a scalar on an interval).
"""
import json
import multiprocessing
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from firedrake import COMM_SELF, ConvergenceError, Function, TestFunction, TrialFunction, assemble, dx, inner
from scipy.optimize import minimize_scalar

from firedrake_msm import checkpoint
from firedrake_msm.baselines import CoarseSolver, smagorinsky_viscosity
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.les import wale_viscosity
from firedrake_msm.metrics import diverged_at, relative_l2, relative_l2_fe, spread_skill_of_moments, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.problems import reference, resolve
from firedrake_msm.protocol import BASELINES, Protocol
from firedrake_msm.reduced import fit_dmd, fit_pod_sindy
from firedrake_msm.train import fit

#: Every row a comparison can have, in the tables' order.
METHODS = BASELINES + ("implicit_scale", "multiscale")

#: Each LES row's :class:`~firedrake_msm.baselines.CoarseSolver` closure.
CLOSURES = {"smagorinsky": "smagorinsky", "smagorinsky_tuned": "smagorinsky",
            "dynamic_smagorinsky": "dynamic", "wale": "wale"}

#: The interval searched for the tuned Smagorinsky constant: from no closure to twice the textbook
#: constants (0.1 to 0.2).
C_S_RANGE = (0.0, 0.4)


@dataclass
class Result:
    """One method on the test trajectories: ``errors`` and ``errors_fe`` ``(n, T)`` (dof-vector
    and FE :math:`L^2` norms), ``crps`` and ``spread_skill`` ``(n, T)`` (ensembles only), cost
    per simulated time unit, the fine-mesh mean (and spread) of every test trajectory,
    ``(n, T, N_h)``, the first time at which the forecast holds a non-finite value (None
    where it never does), and what the method chose or was given (a constant, a rank)."""
    errors: np.ndarray
    errors_fe: np.ndarray
    seconds_per_unit_time: float
    mean: np.ndarray
    spread: np.ndarray = None
    crps: np.ndarray = None
    spread_skill: np.ndarray = None
    diverged_at: float = None
    settings: dict = None


def compare(protocol, *, folder="results", data="data", runs="runs", retrain=False, progress=True, workers=2):
    """Run a comparison and write ``folder/<name>/``: ``summary.json``, ``table.md``,
    ``table.csv``, plots (PNG) and VTK files of the first test trajectory.

    Parameters
    ----------
    protocol : Protocol or str
        What to run (:class:`~firedrake_msm.protocol.Protocol`), or what names it: a reference
        case (``"kdv"``), a ``.toml`` file, or a problem.
    folder, data, runs : str or pathlib.Path
        Where the results, the dataset (unless the protocol names one) and the trained models go.
        The dataset ``data/<name>.h5`` and the models ``runs/<name>-n0`` and
        ``runs/<name>-n<n_h>`` are made when missing (or when ``retrain``), else reused; a model
        with fewer steps than the protocol's (an interrupted run, or a longer budget) resumes.
    workers : int
        Processes that share out the DNS's trajectories, train the two models and run the
        forecasts. They are spawned, and import the calling script again: a script that calls
        ``compare`` with ``workers > 1`` keeps its work under ``if __name__ == "__main__":``.
        With one, everything runs in this process, one step after the other.

    Returns
    -------
    dict
        The summary, as written to ``summary.json``.
    """
    protocol = protocol if isinstance(protocol, Protocol) else Protocol.load(protocol)
    problem = resolve(protocol.problem, protocol.problem_options)
    # Named, not pickled, for the worker processes: each rebuilds the problem from its reference.
    name, options = reference(problem)
    protocol = replace(protocol, problem=name, problem_options=options)
    out = Path(folder) / protocol.name
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(protocol.dataset) if protocol.dataset is not None else Path(data) / f"{protocol.name}.h5"
    if not dataset.exists():
        if protocol.dataset is not None:
            raise FileNotFoundError(f"no dataset at {dataset} (the protocol's 'dataset')")
        dataset.parent.mkdir(parents=True, exist_ok=True)
        simulate(problem, dataset, **{"trajectories": problem.trajectories, **protocol.dns},
                 progress=progress, comm=COMM_SELF, workers=workers)
    baselines = _baselines(protocol, dataset)
    times, truth = load_trajectories(dataset, **splits(dataset)["test"])
    n_latent = {"implicit_scale": 0, "multiscale": protocol.model["n_latent"]}
    learned = {method: Path(runs) / f"{protocol.name}-n{n}" for method, n in n_latent.items()}
    configs = {method: protocol.model_config(n) for method, n in n_latent.items()}
    with _executor(workers) as pool:
        done = {method: 0 if retrain else _trained_steps(run) for method, run in learned.items()}
        running = {method: pool.submit(fit, dataset, run, configs[method], protocol.train,
                                       resume=done[method] > 0, progress=progress, position=position)
                   for position, (method, run) in enumerate(learned.items())
                   if done[method] < protocol.train.steps}

        def trained(method):
            """The checkpoint to forecast with, once the model's training (if any) is over."""
            if method in running:
                running[method].result()
            run = learned[method]
            return run / "best.pt" if (run / "best.pt").exists() else run / "checkpoint.pt"

        # Each forecast starts once its model is trained, each loading what it needs: the baselines
        # and the implicit-scale model's run while the multiscale model still trains. The baselines
        # restrict with the implicit-scale model's transfer, the same as the multiscale model's.
        checkpoints = {"implicit_scale": trained("implicit_scale")}
        saved = checkpoints["implicit_scale"]
        jobs = {}
        for method in baselines:
            if method == "smagorinsky_tuned":
                jobs[method] = pool.submit(_tuned_smagorinsky, saved, dataset, times, truth)
            elif method in ("dmd", "pod_sindy"):
                jobs[method] = pool.submit(_reduced, saved, dataset, times, truth, method,
                                           getattr(protocol, method))
            else:
                jobs[method] = pool.submit(_baseline, saved, times, truth, CLOSURES.get(method),
                                           protocol.C_s if method == "smagorinsky" else None)
        jobs["implicit_scale"] = pool.submit(_learned, checkpoints["implicit_scale"], times, truth,
                                             protocol.samples)
        checkpoints["multiscale"] = trained("multiscale")
        jobs["multiscale"] = pool.submit(_learned, checkpoints["multiscale"], times, truth, protocol.samples)
        results = {method: job.result() for method, job in jobs.items()}
    model = MultiscaleModel.load(checkpoints["multiscale"])
    trainings = {method: _training(checkpoint) for method, checkpoint in checkpoints.items()}
    seconds = {method: _training_seconds(run) for method, run in learned.items()}
    fine = {**_fine_dataset(dataset), "dofs": model.transfer.V_fine.dim(), "coarse_dofs": model.V.dim()}
    fine_seconds = fine_cost(problem, model.transfer.V_fine.mesh(), dataset, fine["dt"])

    summary_ = _summary(protocol, dataset, fine, results, seconds, trainings, fine_seconds, times, truth)
    (out / "summary.json").write_text(json.dumps(summary_, indent=2))
    _tables(out, summary_)
    from firedrake_msm.plots import plot_comparison
    plot_comparison(out, problem, model, times, truth, results)
    write_vtk(out / "multiscale.pvd", model, _as_forecast(times, results["multiscale"]), truth)
    return summary_


def _executor(workers):
    """Where the trainings and forecasts run: ``workers`` spawned processes, or this one."""
    if workers > 1:
        # Spawned, not forked: a forked child would share PETSc's and torch's state with this one.
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _InProcess()


class _InProcess(Executor):
    """Runs each job at once, in this process."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def _trained_steps(run):
    """The steps ``run/checkpoint.pt`` holds (0 when there is none)."""
    last = run / "checkpoint.pt"
    return checkpoint.read(last)["state"]["step"] if last.exists() else 0


def _baselines(protocol, dataset):
    """The baselines to run: the protocol's, or every one that applies to the observed field."""
    V, _ = load_space(dataset)
    if protocol.baselines is None:
        return [method for method in BASELINES if baseline_applies(method, V)]
    wrong = [method for method in protocol.baselines if not baseline_applies(method, V)]
    if wrong:
        raise ValueError(f"protocol {protocol.name!r}: the baselines {wrong} do not apply to the observed "
                         f"field ({V.ufl_element()} on a mesh of dimension {V.mesh().geometric_dimension})")
    return [method for method in BASELINES if method in protocol.baselines]


def baseline_applies(method, V):
    """Whether a baseline (of :data:`~firedrake_msm.protocol.BASELINES`) applies to an observed
    field in ``V`` (fine or coarse): an LES row where its eddy viscosity can be built on the field
    (the closures raise ValueError for a field they cannot act on), the others always."""
    if method not in CLOSURES:
        return True
    viscosity = wale_viscosity if CLOSURES[method] == "wale" else smagorinsky_viscosity
    try:
        viscosity(Function(V), 0.1)
    except ValueError:
        return False
    return True


def _baseline(saved, times, truth, closure, C_s):
    """A coarse Firedrake run (in a worker process) on the model's coarse mesh, from the model's
    restriction of each first snapshot, prolonged to the fine mesh."""
    model = MultiscaleModel.load(saved)
    solver = CoarseSolver(model.problem, model.state.function_space(), closure=closure, C_s=C_s)
    constant = {"smagorinsky": "C_s", "wale": "C_w"}.get(closure)
    settings = None if constant is None else {constant: float(solver.C_s)}
    return _coarse_result(solver, model.transfer, times, truth, settings)


def _coarse_result(solver, transfer, times, truth, settings=None):
    mean, cost = _coarse_forecasts(solver, transfer, times, truth)
    errors_fe = relative_l2_fe(truth, mean, _mass(transfer.V_fine))
    return Result(relative_l2(truth, mean), errors_fe, cost, mean, diverged_at=diverged_at(times, mean),
                  settings=settings)


def _coarse_forecasts(solver, transfer, times, truth):
    """The prolonged coarse forecasts ``(n, T, N_h)`` from the restrictions of ``truth[:, 0]``,
    and their mean cost per simulated time unit."""
    dtype = transfer.cholesky.dtype
    start = transfer.restrict(torch.as_tensor(truth[:, 0], dtype=dtype)).double().numpy()
    states, costs = [], []
    for u0 in start:
        result = solver.forecast(u0, times)
        states.append(result.states)
        costs.append(result.seconds_per_unit_time)
    return _prolonged(transfer, np.stack(states), truth.shape), float(np.mean(costs))


def _prolonged(transfer, coarse, shape):
    """Coarse states ``(n, T, N_H)`` on the fine mesh, ``shape`` ``(n, T, N_h)``."""
    coarse = torch.as_tensor(coarse, dtype=transfer.cholesky.dtype)
    return transfer.prolong(coarse.reshape(-1, coarse.shape[-1])).reshape(shape).double().numpy()


def tune_constant(error, bounds, *, points=9, xatol=0.005):
    r"""The constant of least ``error(c)`` in ``bounds``: the best of ``points`` equally spaced
    values, refined by Brent's bounded method (SciPy's ``minimize_scalar``) between its two
    neighbours, to ``xatol``.

    The grid first, because an error need not be unimodal (a closure too weak to keep a run
    finite, ``inf``, beside one that does); the refinement then needs about ten more evaluations.

    Returns
    -------
    (float, float, int)
        The constant, its error and the number of evaluations.
    """
    grid = np.linspace(*bounds, points)
    values = [error(c) for c in grid]
    best = int(np.argmin(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, points - 1)]
    evaluations = points
    if np.isfinite(values[best]):
        refined = minimize_scalar(error, bounds=(low, high), method="bounded", options={"xatol": xatol})
        evaluations += refined.nfev
        if refined.fun < values[best]:
            return float(refined.x), float(refined.fun), evaluations
    return float(grid[best]), float(values[best]), evaluations


def _tuned_smagorinsky(saved, dataset, times, truth):
    """Smagorinsky (in a worker process) with the constant of least mean error over the validation
    trajectories (:func:`tune_constant` over :data:`C_S_RANGE`), then on the test trajectories."""
    model = MultiscaleModel.load(saved)
    solver = CoarseSolver(model.problem, model.state.function_space(), closure="smagorinsky")
    validation_times, validation = load_trajectories(dataset, **splits(dataset)["validation"])

    def error(C_s):
        solver.C_s.assign(C_s)
        try:
            mean, _ = _coarse_forecasts(solver, model.transfer, validation_times, validation)
        except ConvergenceError:            # Newton failed: the run blew up
            return np.inf
        e = np.mean(relative_l2(validation, mean))
        return float(e) if np.isfinite(e) else np.inf

    C_s, validation_error, evaluations = tune_constant(error, C_S_RANGE)
    solver.C_s.assign(C_s)
    return _coarse_result(solver, model.transfer, times, truth,
                          {"C_s": C_s, "validation_rel_l2": validation_error, "evaluations": evaluations})


def _reduced(saved, dataset, times, truth, method, settings):
    """DMD or POD-SINDy (in a worker process) fitted on the training trajectories' restrictions,
    forecast from the restriction of each test trajectory's first snapshot."""
    model = MultiscaleModel.load(saved)
    transfer, dtype = model.transfer, model.transfer.cholesky.dtype
    split = splits(dataset)["train"]
    coarse = []
    for k in split.get("trajectories", [None]):         # one at a time: the fine data may be large
        train_times, fine = load_trajectories(dataset, trajectories=None if k is None else [k],
                                              time_range=split.get("time_range"))
        coarse.append(transfer.restrict(torch.as_tensor(fine.reshape(-1, fine.shape[-1]), dtype=dtype))
                      .double().numpy().reshape(*fine.shape[:2], -1))
    fit_reduced = {"dmd": fit_dmd, "pod_sindy": fit_pod_sindy}[method]
    fitted = fit_reduced(np.concatenate(coarse), train_times, **settings)
    start = transfer.restrict(torch.as_tensor(truth[:, 0], dtype=dtype)).double().numpy()
    began = time.perf_counter()
    states = np.stack([fitted.forecast(u0, times) for u0 in start])
    seconds = (time.perf_counter() - began) / (times[-1] - times[0]) / truth.shape[0]
    mean = _prolonged(transfer, states, truth.shape)
    errors_fe = relative_l2_fe(truth, mean, _mass(transfer.V_fine))
    chosen = {"rank": fitted.rank}
    if method == "pod_sindy":
        chosen["terms"] = int(np.count_nonzero(fitted.model.coefficients()))
    return Result(relative_l2(truth, mean), errors_fe, seconds, mean, diverged_at=diverged_at(times, mean),
                  settings=chosen)


def _learned(saved, times, truth, samples):
    """A learned model's ensemble forecast (in a worker process), decoded on the fine mesh."""
    model = MultiscaleModel.load(saved)
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=samples, seed=0, truth=truth)
    seconds = result.seconds / (times[-1] - times[0]) / truth.shape[0]
    mean, spread = result.mean.double().numpy(), result.std.double().numpy()
    errors_fe = relative_l2_fe(truth, mean, _mass(model.transfer.V_fine))
    ratio = spread_skill_of_moments(mean, spread**2, truth, samples) if samples > 1 else None
    return Result(relative_l2(truth, mean), errors_fe, seconds, mean, spread, result.crps, ratio,
                  diverged_at(times, mean))


def _mass(V):
    return assemble(inner(TrialFunction(V), TestFunction(V)) * dx)


def _fine_dataset(dataset):
    """What the fine DNS was: its resolution (a number, or a mesh name), trajectories and step."""
    with h5py.File(dataset, "r") as f:
        attrs = f["msm"].attrs
        resolution = attrs.get("resolution", "")
        return {"resolution": resolution.item() if isinstance(resolution, np.generic) else str(resolution),
                "trajectories": int(f["msm/snapshots"].shape[0]), "dt": float(attrs.get("dt", 0.0))}


def fine_cost(problem, mesh, dataset, dt, steps=20):
    """Seconds per simulated time unit of the fine DNS, timed over ``steps`` steps (after one)."""
    solver = CoarseSolver(problem, problem.function_space(mesh), dt=dt)
    _, truth = load_trajectories(dataset, trajectories=[0])
    return solver.forecast(truth[0, 0], dt * np.arange(steps + 1)).seconds_per_unit_time


def _training_seconds(run):
    log = np.genfromtxt(run / "log.csv", delimiter=",", names=True)
    return float(np.atleast_1d(log["seconds"])[-1])


def _training(saved):
    """How a checkpoint was trained: its step, the training data noise, the run's step budget, the
    decay of its parameter average (0: none; a run resumed with one has it since the resume) and
    whether its decoder is local."""
    contents = checkpoint.read(saved)
    config = contents["train_config"]
    return {"step": contents["state"]["step"], "steps": config["steps"], "noise_std": config["noise_std"],
            "average": config["average"], "local_decoder": contents["model_config"]["local_decoder"]}


def break_even(training_seconds, seconds_per_unit_time, fine_seconds_per_unit_time, horizon):
    r"""How many forecasts of length ``horizon`` a learned model must make before its training
    and forecasts cost less than a fine DNS of each,
    :math:`n^* = t_{train} / ((c_{fine} - c)\,T)` with the costs :math:`c` per unit time (None
    where a forecast costs at least the fine DNS: never)."""
    saved = (fine_seconds_per_unit_time - seconds_per_unit_time) * horizon
    return training_seconds / saved if saved > 0 else None


def _summary(protocol, dataset, fine, results, seconds, trainings, fine_cost, times, truth):
    methods = {}
    for name in (name for name in METHODS if name in results):
        r = results[name]
        mean, std = summary(r.errors)
        mean_fe, std_fe = summary(r.errors_fe)
        training_seconds = seconds.get(name)
        methods[name] = {"rel_l2_mean": mean, "rel_l2_std": std, "rel_l2_fe_mean": mean_fe,
                         "rel_l2_fe_std": std_fe,
                         "crps": None if r.crps is None else float(np.mean(r.crps)),
                         # After the first time, where the posterior, not the SDE, gives the spread.
                         "spread_skill": None if r.spread_skill is None
                         else float(np.mean(r.spread_skill[:, 1:])),
                         "break_even_forecasts": None if training_seconds is None else break_even(
                             training_seconds, r.seconds_per_unit_time, fine_cost, times[-1] - times[0]),
                         "seconds_per_unit_time": r.seconds_per_unit_time,
                         "training_seconds": training_seconds, "training": trainings.get(name),
                         "diverged_at": r.diverged_at, "settings": r.settings,
                         "reference_rel_l2": protocol.reference.get(name)}
    return {"case": protocol.name, "problem": protocol.problem, "problem_options": protocol.problem_options,
            "dataset": str(dataset), "fine": fine, "test_trajectories": int(truth.shape[0]),
            "test_times": int(len(times)), "fine_dns": {"seconds_per_unit_time": fine_cost},
            "methods": methods}


def _tables(out, summary_):
    header = ["method", "rel. L2 (mean ± std)", "rel. L2, FE norm", "CRPS", "spread/skill", "s / unit time",
              "training s", "break-even forecasts", "reference rel. L2"]
    rows = []
    for name, m in summary_["methods"].items():
        diverged = None if m["diverged_at"] is None else f"blew up at t = {m['diverged_at']:.4g}"
        trained = m["training_seconds"] is not None
        rows.append([name, diverged or f"{m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f}",
                     diverged or f"{m['rel_l2_fe_mean']:.4f} ± {m['rel_l2_fe_std']:.4f}",
                     "" if m["crps"] is None else f"{m['crps']:.4g}",
                     "" if m["spread_skill"] is None else f"{m['spread_skill']:.3g}",
                     f"{m['seconds_per_unit_time']:.3g}",
                     f"{m['training_seconds']:.0f}" if trained else "",
                     "" if not trained else "never" if m["break_even_forecasts"] is None
                     else f"{m['break_even_forecasts']:.3g}",
                     "" if m["reference_rel_l2"] is None else f"{m['reference_rel_l2']:.3f}"])
    fine_cost = f"{summary_['fine_dns']['seconds_per_unit_time']:.3g}"
    rows.append(["fine DNS", "", "", "", "", fine_cost, "", "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    settings = [f"- {name}: " + ", ".join(f"{key} {value:.4g}" for key, value in m["settings"].items())
                for name, m in summary_["methods"].items() if m["settings"]]
    if settings:
        lines += ["", "Constants and ranks (the tuned C_s: of the least validation error):", ""] + settings
    fine = summary_["fine"]
    (out / "table.md").write_text(f"# {summary_['case']}: {summary_['test_trajectories']} test trajectories, "
                                  f"{summary_['test_times']} times\n\n"
                                  f"Fine data: {fine['dofs']} dofs (resolution {fine['resolution'] or '-'}), "
                                  f"{fine['trajectories']} trajectories, dt {fine['dt']:g}; coarse space: "
                                  f"{fine['coarse_dofs']} dofs.\n\n"
                                  + "\n".join(lines) + "\n")
    (out / "table.csv").write_text("\n".join(",".join(cell.replace(",", ";") for cell in row)
                                             for row in [header] + rows) + "\n")


def _as_forecast(times, result):
    from firedrake_msm.forecast import Forecast
    return Forecast(times, None, torch.as_tensor(result.mean), torch.as_tensor(result.spread))
