"""Fine-mesh direct numerical simulation of a :class:`~firedrake_msm.problems.Problem`, written
to an HDF5 dataset.

One file holds everything: the mesh and a ``dof_index`` Function (saved by Firedrake's
``CheckpointFile``, so any process count can load them), and the group ``msm`` (written with
h5py) with

- ``snapshots``: ``(trajectories, times, N)`` observed states, in the global dof order of the
  writing run; ``dof_index`` maps a loaded space's dofs to that order;
- ``times``: ``(times,)``; ``parameters``: ``(trajectories, len(parameter_names))``;
- ``diagnostics/<name>``: ``(trajectories, times)`` scalars the problem reports (a lift coefficient);
- attributes: the problem, its parameter names, the seed, resolution, time step and the
  Firedrake, PETSc and firedrake-msm versions.

The file is written under a temporary name and renamed when complete, so an interrupted or
failed run leaves nothing that looks like a dataset.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
from firedrake import COMM_SELF, COMM_WORLD, CheckpointFile, Constant, Function
from tqdm import tqdm

from firedrake_msm.problems import PROBLEMS
from firedrake_msm.stepping import Gather, time_stepper

def simulate(problem, path, *, trajectories, seed=0, resolution=None, dt=None, t_end=None, spin_up=None,
             comm=COMM_WORLD, workers=1, progress=True):
    """Run ``trajectories`` fine simulations from seeded random initial conditions into ``path``.

    Parameters
    ----------
    problem : Problem or str
        The problem, or its name in :data:`firedrake_msm.problems.PROBLEMS`.
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

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if isinstance(problem, str):
        try:
            problem = PROBLEMS[problem]()
        except KeyError:
            raise ValueError(f"unknown problem {problem!r}; known: {', '.join(sorted(PROBLEMS))}") from None
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
    run = dict(seed=seed, resolution=resolution, dt=dt, steps=steps, first=first)
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


def _run(problem, path, draws, *, seed, resolution, dt, steps, first, comm=COMM_SELF, progress=True,
         position=None):
    """The DNS of each of ``draws`` (initial-condition parameters) into the dataset ``path``."""
    trajectories = len(draws)
    partial = path.with_name(path.name + ".partial")
    mesh = problem.mesh(resolution, comm=comm)
    V = problem.function_space(mesh)
    state = Function(V)
    t = Constant(0.0)
    stepper = time_stepper(problem, state, t, Constant(dt))
    parameters = {name: Constant(0.0) for name in problem.parameter_names}
    observed = problem.observed(state)
    V_obs = observed.function_space().collapse()
    gather = Gather(Function(V_obs))

    try:
        with CheckpointFile(str(partial), "w", comm=comm) as checkpoint:
            checkpoint.save_mesh(mesh)
            index = Function(V_obs, name="dof_index")
            with index.dat.vec_wo as vec:
                vec.array[:] = np.arange(*vec.getOwnershipRange())
            checkpoint.save_function(index)
        n_times = steps - first + 1
        group = _open(partial, problem, trajectories, n_times, gather.size, seed, resolution, dt, comm)
        bar = tqdm(total=trajectories * steps, desc=f"DNS {problem.name}", unit="step",
                   disable=not progress or comm.rank != 0, position=position)
        for k, draw in enumerate(draws):
            for name, value in draw.items():
                parameters[name].assign(value)
            problem.set_initial_state(state, parameters)
            for step in range(steps + 1):
                if step:
                    stepper.advance()
                    bar.update()
                t.assign(step * dt)
                if step >= first:
                    _store(group, k, step - first, gather(observed), problem.diagnostics(state), n_times)
        bar.close()
        if comm.rank == 0:
            group["parameters"][:] = [[d[name] for name in problem.parameter_names] for d in draws]
            group["times"][:] = dt * np.arange(first, steps + 1)
            group.file.close()
            os.replace(partial, path)
    except BaseException:
        if comm.rank == 0 and partial.exists():
            partial.unlink()
        raise
    comm.barrier()


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
                target = group.create_dataset(name, (total, *like.shape[1:]), dtype=like.dtype,
                                              chunks=like.chunks)
                for j, source in enumerate(sources):
                    for k, rows in enumerate(source["msm"][name]):
                        target[j + k * n] = rows
        os.replace(partial, path)
    finally:
        for source in sources:
            source.close()
        partial.unlink(missing_ok=True)


def _open(path, problem, trajectories, times, size, seed, resolution, dt, comm):
    """Create the ``msm`` group on rank 0 and return it (None elsewhere)."""
    if comm.rank != 0:
        return None
    group = h5py.File(path, "a").create_group("msm")
    group.create_dataset("snapshots", (trajectories, times, size), dtype="f8",
                         chunks=(1, min(times, 64), size))
    group.create_dataset("times", (times,), dtype="f8")
    group.create_dataset("parameters", (trajectories, len(problem.parameter_names)), dtype="f8")
    group.attrs.update(problem=problem.name, parameter_names=list(problem.parameter_names), seed=seed,
                       resolution=resolution, dt=dt, processes=comm.size,
                       firedrake=version("firedrake"), petsc=version("petsc"),
                       firedrake_msm=version("firedrake-msm"))
    return group


def _store(group, trajectory, index, values, diagnostics, n_times):
    if group is None:
        return
    group["snapshots"][trajectory, index] = values
    for name, value in diagnostics.items():
        shape = (group["snapshots"].shape[0], n_times)
        group.require_dataset(f"diagnostics/{name}", shape, dtype="f8")[trajectory, index] = value
