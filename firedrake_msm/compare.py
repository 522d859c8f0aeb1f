r"""The side-by-side comparison on one coarse mesh: under-resolved DNS, Smagorinsky LES, the
implicit-scale model (:math:`n_h = 0`) and the multiscale model, against the fine DNS.

Every method starts each test trajectory from its first fine snapshot :math:`y_0`: the baselines
from the filtered restriction :math:`R y_0` (the same :math:`R` as the models'), the models from
the encoder's posterior. Errors are measured on the fine mesh, against the DNS: the baselines'
coarse states prolonged, :math:`P u_H`, the models' PoE mean averaged over the ensemble.
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
from firedrake import COMM_SELF, TestFunction, TrialFunction, assemble, dx, inner

from firedrake_msm import checkpoint
from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import diverged_at, relative_l2, relative_l2_fe, spread_skill_of_moments, summary
from firedrake_msm.model import MultiscaleModel
from firedrake_msm.problems import reference, resolve
from firedrake_msm.protocol import Protocol
from firedrake_msm.train import fit

METHODS = ("coarse_dns", "smagorinsky", "implicit_scale", "multiscale")


@dataclass
class Result:
    """One method on the test trajectories: ``errors`` and ``errors_fe`` ``(n, T)`` (dof-vector
    and FE :math:`L^2` norms), ``crps`` and ``spread_skill`` ``(n, T)`` (ensembles only), cost
    per simulated time unit, the fine-mesh mean (and spread) of every test trajectory,
    ``(n, T, N_h)``, and the first time at which the forecast holds a non-finite value (None
    where it never does)."""
    errors: np.ndarray
    errors_fe: np.ndarray
    seconds_per_unit_time: float
    mean: np.ndarray
    spread: np.ndarray = None
    crps: np.ndarray = None
    spread_skill: np.ndarray = None
    diverged_at: float = None


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
        jobs = {method: pool.submit(_baseline, checkpoints["implicit_scale"], times, truth, closure,
                                    protocol.C_s)
                for method, closure in (("coarse_dns", None), ("smagorinsky", "smagorinsky"))}
        jobs["implicit_scale"] = pool.submit(_learned, checkpoints["implicit_scale"], times, truth,
                                             protocol.samples)
        checkpoints["multiscale"] = trained("multiscale")
        jobs["multiscale"] = pool.submit(_learned, checkpoints["multiscale"], times, truth, protocol.samples)
        results = {method: job.result() for method, job in jobs.items()}
    model = MultiscaleModel.load(checkpoints["multiscale"])
    trainings = {method: _training(checkpoint) for method, checkpoint in checkpoints.items()}
    seconds = {method: _training_seconds(run) for method, run in learned.items()}
    fine = {**_fine_dataset(dataset), "dofs": model.transfer.V_fine.dim(), "coarse_dofs": model.V.dim()}
    fine_cost = _fine_cost(problem, model.transfer.V_fine.mesh(), dataset, fine["dt"])

    summary_ = _summary(protocol, dataset, fine, results, seconds, trainings, fine_cost, times, truth)
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


def _baseline(saved, times, truth, closure, C_s):
    """A coarse Firedrake run (in a worker process) on the model's coarse mesh, from the model's
    restriction of each first snapshot, prolonged to the fine mesh."""
    model = MultiscaleModel.load(saved)
    solver = CoarseSolver(model.problem, model.state.function_space(), closure=closure, C_s=C_s)
    transfer = model.transfer
    dtype = next(model.parameters()).dtype
    start = transfer.restrict(torch.as_tensor(truth[:, 0], dtype=dtype)).double().numpy()
    states, costs = [], []
    for u0 in start:
        result = solver.forecast(u0, times)
        states.append(result.states)
        costs.append(result.seconds_per_unit_time)
    coarse = torch.as_tensor(np.stack(states), dtype=dtype)                          # (n, T, N_H)
    mean = transfer.prolong(coarse.reshape(-1, coarse.shape[-1])).reshape(truth.shape).double().numpy()
    errors_fe = relative_l2_fe(truth, mean, _mass(transfer.V_fine))
    return Result(relative_l2(truth, mean), errors_fe, float(np.mean(costs)), mean)


def _learned(saved, times, truth, samples):
    """A learned model's ensemble forecast (in a worker process), decoded on the fine mesh."""
    model = MultiscaleModel.load(saved)
    start = time.perf_counter()
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=samples, seed=0, truth=truth)
    seconds = (time.perf_counter() - start) / (times[-1] - times[0]) / truth.shape[0]
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


def _fine_cost(problem, mesh, dataset, dt, steps=20):
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
    for name in METHODS:
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
                         "diverged_at": r.diverged_at,
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
