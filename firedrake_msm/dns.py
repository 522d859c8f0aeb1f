"""Fine-mesh direct numerical simulation of a :class:`~firedrake_msm.problems.Problem`, written
to a dataset (the format of :mod:`firedrake_msm.recorder`)."""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from firedrake import COMM_SELF, COMM_WORLD, Constant, Function
from tqdm import tqdm

from firedrake_msm.problems import resolve
from firedrake_msm.recorder import Recorder
from firedrake_msm.stepping import restart, time_stepper


def simulate(problem, path, *, trajectories, seed=0, resolution=None, dt=None, t_end=None, spin_up=None,
             comm=COMM_WORLD, workers=1, progress=True, resume=False):
    """Run ``trajectories`` fine simulations from seeded random initial conditions into ``path``.

    Parameters
    ----------
    problem : Problem, type or str
        The problem, or what names it (:func:`~firedrake_msm.problems.resolve`).
    path : str or pathlib.Path
        The ``.h5`` file to write (replaced if it exists).
    trajectories : int
        How many initial conditions.
    seed : int
        Seeds the draws of the initial-condition parameters.
    resolution, dt, t_end, spin_up : optional
        Override the problem's fine resolution, time step (also the output interval), end time
        and the time simulated before the first stored snapshot.
    comm : mpi4py.MPI.Comm
        Where to run; results do not depend on the number of processes.
    workers : int
        Processes that share out the trajectories, each running its own on one core (``comm``
        must then be a single process); the dataset is the one a single process writes, to
        round-off.
    progress : bool
        Show a progress bar (on rank 0).
    resume : bool
        Continue an interrupted run of the same settings after its last complete trajectory
        (:class:`~firedrake_msm.recorder.Recorder`'s ``resume``); the dataset is the one an
        uninterrupted run writes.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    problem = resolve(problem)
    if trajectories < 1:
        raise ValueError(f"trajectories must be at least 1, not {trajectories}")
    dt = problem.dt if dt is None else dt
    t_end = problem.t_end if t_end is None else t_end
    spin_up = problem.spin_up if spin_up is None else spin_up
    steps, first = int(round(t_end / dt)), int(round(spin_up / dt))
    if steps < 1 or not np.isclose(steps * dt, t_end) or not np.isclose(first * dt, spin_up):
        raise ValueError(f"t_end = {t_end} and spin_up = {spin_up} must be multiples of dt = {dt}")
    if not 0 <= first < steps:
        raise ValueError(f"spin_up = {spin_up} must lie in [0, t_end = {t_end})")
    if workers > 1 and comm.size > 1:
        raise ValueError(f"workers = {workers} share out whole trajectories: run on one process, "
                         f"not {comm.size}")
    resolution = problem.fine if resolution is None else resolution
    path = Path(path)
    rng = np.random.default_rng(seed)
    draws = [problem.draw(rng) for _ in range(trajectories)]
    run = dict(seed=seed, resolution=resolution, dt=dt, steps=steps, first=first, resume=resume)
    workers = min(workers, trajectories)
    if workers == 1:
        _run(problem, path, draws, comm=comm, progress=progress, **run)
        return path
    # Worker j runs trajectories j, j + workers, ...: the long and the short ones spread evenly.
    parts = [path.with_name(f"{path.name}.part{j}") for j in range(workers)]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_run, problem, part, draws[j::workers], progress=progress, position=j, **run)
                    for j, part in enumerate(parts)]
            for job in jobs:
                job.result()
        _merge(parts, path)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return path


def _run(problem, path, draws, *, seed, resolution, dt, steps, first, resume, comm=COMM_SELF, progress=True,
         position=None):
    """The DNS of each of ``draws`` (initial-condition parameters) into the dataset ``path``."""
    mesh = problem.mesh(resolution, comm=comm)
    state = Function(problem.function_space(mesh))
    t = Constant(0.0)
    stepper = time_stepper(problem, state, t, Constant(dt))
    parameters = {name: Constant(0.0) for name in problem.parameter_names}
    observed = problem.observed(state)
    attributes = {"seed": seed, "resolution": resolution, "dt": dt, "trajectories": len(draws)}
    with Recorder(path, observed.function_space(), problem=problem, attributes=attributes,
                  resume=resume) as recorder:
        bar = tqdm(total=len(draws) * steps, initial=recorder.completed * steps, desc=f"DNS {problem.name}",
                   unit="step", disable=not progress or comm.rank != 0, position=position)
        for k, draw in enumerate(draws):
            if k < recorder.completed:
                continue
            for name, value in draw.items():
                parameters[name].assign(value)
            recorder.set_parameters(k, draw)
            problem.set_initial_state(state, parameters)
            # Every trajectory's first Newton iteration starts from the same guess, so that none
            # depends on the one before: a resumed or shared-out run writes the same bits.
            restart(stepper)
            for step in range(steps + 1):
                if step:
                    stepper.advance()
                    bar.update()
                t.assign(step * dt)
                if step >= first:
                    recorder.write(observed, step * dt, trajectory=k, diagnostics=problem.diagnostics(state))
    bar.close()


def _merge(parts, path):
    """One dataset from the files of :func:`simulate`'s workers: part ``j`` of ``n`` holds the
    trajectories ``j, j + n, ...``. The mesh and ``dof_index`` are copied from the first part (all
    parts have the same)."""
    partial = path.with_name(path.name + ".partial")
    n = len(parts)
    sources = [h5py.File(part, "r") for part in parts]
    try:
        with h5py.File(partial, "w") as out:
            first = sources[0]
            out.attrs.update(first.attrs)
            for key in first:
                if key != "msm":
                    first.copy(first[key], out, name=key)
            group = out.create_group("msm")
            group.attrs.update(first["msm"].attrs)
            group["times"] = first["msm/times"][...]
            names = ["snapshots", "parameters"]
            names += [f"diagnostics/{name}" for name in first["msm"].get("diagnostics", {})]
            total = sum(source["msm/snapshots"].shape[0] for source in sources)
            for name in names:
                like = first["msm"][name]
                shape = (total, *like.shape[1:])
                chunks = tuple(max(1, min(c, s)) for c, s in zip(like.chunks, shape)) if like.chunks else None
                target = group.create_dataset(name, shape, dtype=like.dtype, chunks=chunks)
                for j, source in enumerate(sources):
                    for k, rows in enumerate(source["msm"][name]):
                        target[j + k * n] = rows
        os.replace(partial, path)
    finally:
        for source in sources:
            source.close()
        partial.unlink(missing_ok=True)
