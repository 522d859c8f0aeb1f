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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from firedrake import COMM_SELF, TestFunction, TrialFunction, assemble, dx, inner

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.metrics import diverged_at, relative_l2, relative_l2_fe, summary
from firedrake_msm.model import ModelConfig
from firedrake_msm.problems import PROBLEMS
from firedrake_msm.train import TrainConfig, load, train

METHODS = ("coarse_dns", "smagorinsky", "implicit_scale", "multiscale")

# DESIGN.md §4: relative L2 test errors from the authors' released results for arXiv:2506.22655.
REFERENCE = {"pulse": {"coarse_dns": 1.381, "implicit_scale": 0.565, "multiscale": 0.079},
             "kdv": {"coarse_dns": 0.523, "implicit_scale": 0.324, "multiscale": 0.042},
             "burgers2d": {"coarse_dns": 0.560, "implicit_scale": 0.141, "multiscale": 0.028},
             "cylinder": {"coarse_dns": 0.130, "implicit_scale": 0.063, "multiscale": 0.009}}


# Where a case departs from DESIGN.md §4's protocol: keywords of ``dns.simulate``, ``ModelConfig``
# and ``TrainConfig``. The 1D periodic cases keep the free flux: the coarse pulse and wave train
# need its sharpening, which the dissipative flux cannot give (pulse validation error after 1500
# steps: free 0.66, dissipative 3.3 and rising; KdV: free 0.185 after 2000 steps, dissipative 0.45
# after 1500).
# The pulse's table was measured at KdV's data noise, 0.01. KdV's data noise is the reference's.
# The 1D cases average their parameters. Without the average the pulse's validation error swung
# between 0.35 and 0.80 over steps 1500-9000; with it, 0.25-0.36 over steps 3000-6000, and its best
# (step 4000) forecasts the test set to 0.197, against 0.234 (both stepped at 0.001). KdV's,
# resumed with the average from step 12 000, fell at every validation, 0.0585 to 0.0479 by step
# 20 000 (without: 0.062-0.075 over steps 9000-12 000), and forecasts the test set to 0.038
# against 0.053.
# Burgers' fine mesh is 64², not 128²: 30 trajectories at 128² would be 4 GB and about 3 s a
# training step here. Its table's models continued from the shared decoder's best with local
# decoders fitted to the trained encoder (train's warm start; the commands are in the README), the
# multiscale one with its parameters averaged: test errors 0.141 -> 0.104 (multiscale; 0.109
# without the average) and 0.198 -> 0.133 (implicit-scale).
# A cylinder window is 64 snapshots of 16 694 fine dofs and each residual sample 3888 quadrature
# points: 2 windows and 8 residual times a step (16x fewer samples) keep a step near 2 s on a CPU.
# The cylinder's decoder has weights per stencil entry: its boundary layer is tied to the geometry
# (model.Decoder).
# The pulse's validation error swings from one checkpoint to the next (0.191, 0.208, 0.255, 0.291
# at steps 3250-4000 of the table's run): it validates every 250 steps, not 1000, to keep the best
# of more of them.
PROTOCOL = {"pulse": {"model": {"flux": "free"},
                      "train": {"noise_std": 0.01, "average": 0.999, "validate_every": 250}},
            "kdv": {"model": {"flux": "free"}, "train": {"noise_std": 0.01, "average": 0.999}},
            "burgers2d": {"dns": {"resolution": 64}},
            "cylinder": {"model": {"local_decoder": True}, "train": {"batch_size": 2, "residual_times": 8}}}


@dataclass
class Settings:
    """What a comparison runs: the dataset, the two models' training and the forecasts.

    ``for_case()`` gives the settings to report, ``fast()`` seconds-long ones for tests only.
    """
    dns: dict = field(default_factory=dict)              # keywords of dns.simulate
    model: dict = field(default_factory=dict)            # keywords of ModelConfig
    # A validation forecast (5 trajectories, 8 members) costs KdV about 100 training steps.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, validate_every=1000))
    n_latent: int = 5
    samples: int = 64
    C_s: float = 0.17

    @classmethod
    def for_case(cls, case):
        """DESIGN.md §4's protocol (training data noise of std 0.001), with the case's
        departures from it in :data:`PROTOCOL`."""
        departures = PROTOCOL.get(case, {})
        return cls(dns=dict(departures.get("dns", {})), model=dict(departures.get("model", {})),
                   train=replace(cls().train, **{"noise_std": 0.001, **departures.get("train", {})}))

    @classmethod
    def fast(cls, case):
        dns = {"trajectories": 4, "t_end": 0.1, "dt": 0.01,
               "resolution": {"burgers2d": 16, "cylinder": "coarse"}.get(case, 100)}
        if case == "cylinder":     # one trajectory, from rest: the coarse mesh as the fine one
            dns.update(trajectories=1, t_end=0.3, spin_up=0.0)
        return cls(dns=dns,
                   train=TrainConfig(steps=4, batch_size=2, window=8, beta_warmup=2, residual_times=4,
                                     validate_every=2, checkpoint_every=4, validation_samples=2),
                   n_latent=2, samples=4)


@dataclass
class Result:
    """One method on the test trajectories: ``errors`` and ``errors_fe`` ``(n, T)`` (dof-vector
    and FE :math:`L^2` norms), ``crps`` ``(n, T)`` (ensembles only), cost per simulated time
    unit, the fine-mesh mean (and spread) of every test trajectory, ``(n, T, N_h)``, and the time
    at which the forecast blew up, if it did."""
    errors: np.ndarray
    errors_fe: np.ndarray
    seconds_per_unit_time: float
    mean: np.ndarray
    spread: np.ndarray = None
    crps: np.ndarray = None
    diverged_at: float = None


def compare(case, *, folder="results", data="data", runs="runs", settings=None, retrain=False, progress=True,
            workers=2):
    """Run the comparison for ``case`` and write ``folder/<case>/``: ``summary.json``, ``table.md``,
    ``table.csv``, plots (PNG) and VTK files of the first test trajectory.

    The dataset ``data/<case>.h5`` and the trained models ``runs/<case>-n0`` and
    ``runs/<case>-n<n_h>`` are made when missing (or when ``retrain``), else reused; a model with
    fewer steps than ``settings.train.steps`` (an interrupted run, or a longer budget) resumes.
    ``workers`` processes share out the DNS's trajectories, train the two models and run the
    forecasts.

    Returns the summary (a dict, as written to ``summary.json``).
    """
    settings = settings or Settings.for_case(case)
    problem = PROBLEMS[case]()
    out = Path(folder) / case
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(data) / f"{case}.h5"
    if not dataset.exists():
        dataset.parent.mkdir(parents=True, exist_ok=True)
        simulate(problem, dataset, **{"trajectories": problem.trajectories, **settings.dns},
                 progress=progress, comm=COMM_SELF, workers=workers)
    times, truth = load_trajectories(dataset, **splits(dataset)["test"])
    n_latent = {"implicit_scale": 0, "multiscale": settings.n_latent}
    learned = {method: Path(runs) / f"{case}-n{n}" for method, n in n_latent.items()}
    configs = {method: ModelConfig(case, n_latent=n, **settings.model) for method, n in n_latent.items()}
    # Spawned, not forked: a forked child would share PETSc's and torch's state with this process.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = {method: 0 if retrain else _trained_steps(run) for method, run in learned.items()}
        running = {method: pool.submit(train, dataset, run, configs[method], settings.train,
                                       resume=done[method] > 0, progress=progress, position=position)
                   for position, (method, run) in enumerate(learned.items())
                   if done[method] < settings.train.steps}

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
        jobs = {name: pool.submit(_baseline, case, checkpoints["implicit_scale"], times, truth, closure,
                                  settings.C_s)
                for name, closure in (("coarse_dns", None), ("smagorinsky", "smagorinsky"))}
        jobs["implicit_scale"] = pool.submit(_learned, checkpoints["implicit_scale"], times, truth,
                                             settings.samples)
        checkpoints["multiscale"] = trained("multiscale")
        jobs["multiscale"] = pool.submit(_learned, checkpoints["multiscale"], times, truth, settings.samples)
        results = {name: job.result() for name, job in jobs.items()}
    model = load(checkpoints["multiscale"])[0]
    protocol = {method: _protocol(checkpoint) for method, checkpoint in checkpoints.items()}
    training = {method: _training_seconds(run) for method, run in learned.items()}
    fine = _fine_dataset(dataset)
    fine_cost = _fine_cost(problem, model.transfer.V_fine.mesh(), dataset, fine["dt"])

    summary_ = _summary(case, dataset, fine, results, training, protocol, fine_cost, times, truth)
    (out / "summary.json").write_text(json.dumps(summary_, indent=2))
    _tables(out, summary_)
    from firedrake_msm.plots import plot_comparison
    plot_comparison(out, problem, model, times, truth, results)
    write_vtk(out / "multiscale.pvd", model, _as_forecast(times, results["multiscale"]), truth)
    return summary_


def _trained_steps(run):
    """The steps ``run/checkpoint.pt`` holds (0 when there is none)."""
    checkpoint = run / "checkpoint.pt"
    if not checkpoint.exists():
        return 0
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["step"]


def _baseline(case, checkpoint, times, truth, closure, C_s):
    """A coarse Firedrake run (in a worker process) on the model's coarse mesh, from the model's
    restriction of each first snapshot, prolonged to the fine mesh."""
    problem, model = PROBLEMS[case](), load(checkpoint)[0]
    solver = CoarseSolver(problem, model.state.function_space(), closure=closure, C_s=C_s)
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


def _learned(checkpoint, times, truth, samples):
    """A learned model's ensemble forecast (in a worker process), decoded on the fine mesh."""
    model = load(checkpoint)[0]
    start = time.perf_counter()
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=samples, seed=0, truth=truth)
    seconds = (time.perf_counter() - start) / (times[-1] - times[0]) / truth.shape[0]
    mean, spread = result.mean.double().numpy(), result.std.double().numpy()
    errors_fe = relative_l2_fe(truth, mean, _mass(model.transfer.V_fine))
    return Result(relative_l2(truth, mean), errors_fe, seconds, mean, spread, result.crps,
                  diverged_at(times, mean))


def _mass(V):
    return assemble(inner(TrialFunction(V), TestFunction(V)) * dx)


def _fine_dataset(dataset):
    """What the fine DNS was: its resolution (a number, or a mesh name), trajectories and step."""
    with h5py.File(dataset, "r") as f:
        attrs = f["msm"].attrs
        resolution = attrs["resolution"]
        return {"resolution": resolution.item() if isinstance(resolution, np.generic) else str(resolution),
                "trajectories": int(f["msm/snapshots"].shape[0]), "dt": float(attrs["dt"])}


def _fine_cost(problem, mesh, dataset, dt, steps=20):
    """Seconds per simulated time unit of the fine DNS, timed over ``steps`` steps (after one)."""
    solver = CoarseSolver(problem, problem.function_space(mesh), dt=dt)
    _, truth = load_trajectories(dataset, trajectories=[0])
    return solver.forecast(truth[0, 0], dt * np.arange(steps + 1)).seconds_per_unit_time


def _training_seconds(run):
    log = np.genfromtxt(run / "log.csv", delimiter=",", names=True)
    return float(np.atleast_1d(log["seconds"])[-1])


def _protocol(checkpoint):
    """How a checkpoint was trained: its step, the training data noise, the run's step budget, the
    decay of its parameter average (0: none; a run resumed with one has it since the resume) and
    whether its decoder is local."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = saved["train_config"]
    return {"step": saved["state"]["step"], "steps": config["steps"], "noise_std": config["noise_std"],
            "average": config.get("average", 0.0),
            "local_decoder": saved["model_config"].get("local_decoder", False)}


def _summary(case, dataset, fine, results, training, protocol, fine_cost, times, truth):
    methods = {}
    for name in METHODS:
        r = results[name]
        mean, std = summary(r.errors)
        mean_fe, std_fe = summary(r.errors_fe)
        methods[name] = {"rel_l2_mean": mean, "rel_l2_std": std, "rel_l2_fe_mean": mean_fe,
                         "rel_l2_fe_std": std_fe,
                         "crps": None if r.crps is None else float(np.mean(r.crps)),
                         "seconds_per_unit_time": r.seconds_per_unit_time,
                         "training_seconds": training.get(name), "training": protocol.get(name),
                         "diverged_at": r.diverged_at,
                         "reference_rel_l2": REFERENCE.get(case, {}).get(name)}
    return {"case": case, "dataset": str(dataset), "fine": fine, "test_trajectories": int(truth.shape[0]),
            "test_times": int(len(times)), "fine_dns": {"seconds_per_unit_time": fine_cost},
            "methods": methods}


def _tables(out, summary_):
    header = ["method", "rel. L2 (mean ± std)", "rel. L2, FE norm", "CRPS", "s / unit time", "training s",
              "reference rel. L2"]
    rows = []
    for name, m in summary_["methods"].items():
        diverged = None if m["diverged_at"] is None else f"blew up at t = {m['diverged_at']:.4g}"
        rows.append([name, diverged or f"{m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f}",
                     diverged or f"{m['rel_l2_fe_mean']:.4f} ± {m['rel_l2_fe_std']:.4f}",
                     "" if m["crps"] is None else f"{m['crps']:.4g}", f"{m['seconds_per_unit_time']:.3g}",
                     "" if m["training_seconds"] is None else f"{m['training_seconds']:.0f}",
                     "" if m["reference_rel_l2"] is None else f"{m['reference_rel_l2']:.3f}"])
    rows.append(["fine DNS", "", "", "", f"{summary_['fine_dns']['seconds_per_unit_time']:.3g}", "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    fine = summary_["fine"]
    (out / "table.md").write_text(f"# {summary_['case']}: {summary_['test_trajectories']} test trajectories, "
                                  f"{summary_['test_times']} times\n\n"
                                  f"Fine DNS: resolution {fine['resolution']}, "
                                  f"{fine['trajectories']} trajectories, dt {fine['dt']:g}.\n\n"
                                  + "\n".join(lines) + "\n")
    (out / "table.csv").write_text("\n".join(",".join(cell.replace(",", ";") for cell in row)
                                             for row in [header] + rows) + "\n")


def _as_forecast(times, result):
    from firedrake_msm.forecast import Forecast
    return Forecast(times, None, torch.as_tensor(result.mean), torch.as_tensor(result.spread))
