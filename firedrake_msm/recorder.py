"""Datasets of fine snapshots, written from any time loop: the package's DNS or a user's own.

One file holds everything: the mesh and a ``dof_index`` Function (saved by Firedrake's
``CheckpointFile``, so any process count can load them), and the group ``msm`` (written with
h5py) with

- ``snapshots``: ``(trajectories, times, N)`` observed states, in the global dof order of the
  writing run; ``dof_index`` maps a loaded space's dofs to that order;
- ``times``: ``(times,)``, the same for every trajectory; ``parameters``:
  ``(trajectories, len(parameter_names))``, the initial conditions' parameters where known;
- ``diagnostics/<name>``: ``(trajectories, times)`` scalars reported beside each snapshot;
- attributes: the problem's name and constructor options
  (:func:`~firedrake_msm.problems.reference`; empty where the data came without one), its
  parameter names, the output interval ``dt``, the resolution, the number of processes and the
  Firedrake, PETSc and firedrake-msm versions.

The file is written under a temporary name and renamed when complete, so an interrupted or
failed run leaves nothing that looks like a dataset.
"""
import json
import os
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
from firedrake import CheckpointFile, Function

from firedrake_msm.problems import reference
from firedrake_msm.stepping import Gather


class Recorder:
    r"""Write the snapshots of one or more trajectories into a dataset, from inside a time loop.

    Use it as a context manager; the dataset appears at ``path`` when the block ends without
    an error::

        with Recorder("data.h5", V, problem=MyProblem()) as recorder:
            for k, u0 in enumerate(initial_states):
                u.assign(u0)
                for step in range(steps + 1):
                    if step:
                        stepper.advance()
                    recorder.write(u, step * dt, trajectory=k)

    Every trajectory must be written at the same times, in order, and trajectories one after
    the other (``0, 1, 2, ...``).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.h5`` file (replaced when the recorder completes).
    space : firedrake.FunctionSpace
        The observed space of the fine snapshots (a subspace of a mixed space is collapsed).
    problem : Problem, optional
        What the data are of: stored by name and options, so that training and comparisons
        can rebuild it. Without one, a problem must be named when a model is built.
    parameter_names : sequence of str, optional
        The random parameters of each initial condition (default: the problem's).
    attributes : dict, optional
        More attributes of the ``msm`` group (the DNS stores its ``seed`` and ``resolution``).
    """

    def __init__(self, path, space, *, problem=None, parameter_names=None, attributes=None):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no folder {self.path.parent} to write the dataset {self.path.name} "
                                    "into")
        self.space = space.collapse() if space.index is not None else space
        self.comm = self.space.comm
        name, options = reference(problem) if problem is not None else ("", {})
        if parameter_names is None:
            parameter_names = problem.parameter_names if problem is not None else ()
        self.parameter_names = list(parameter_names)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.gather = Gather(Function(self.space))
        self.times, self.trajectory, self.written = [], -1, 0
        self.parameters = {}
        with CheckpointFile(str(self.partial), "w", comm=self.comm) as checkpoint:
            checkpoint.save_mesh(self.space.mesh())
            index = Function(self.space, name="dof_index")
            with index.dat.vec_wo as vec:
                vec.array[:] = np.arange(*vec.getOwnershipRange())
            checkpoint.save_function(index)
        self.group = None
        if self.comm.rank == 0:
            self.group = h5py.File(self.partial, "a").create_group("msm")
            size = self.gather.size
            self.group.create_dataset("snapshots", (0, 0, size), maxshape=(None, None, size), dtype="f8",
                                      chunks=(1, 64, size))
            self.group.attrs.update(problem=name, problem_options=json.dumps(options),
                                    parameter_names=self.parameter_names, processes=self.comm.size,
                                    firedrake=version("firedrake"), petsc=version("petsc"),
                                    firedrake_msm=version("firedrake-msm"), **(attributes or {}))

    def write(self, u, t, *, trajectory=0, diagnostics=None):
        """Store the snapshot ``u`` at time ``t`` of ``trajectory``.

        Parameters
        ----------
        u : firedrake.Function
            A Function of :attr:`space` (or the subfunction of a mixed state that it collapses).
        t : float
        trajectory : int
            The current trajectory, or the next one.
        diagnostics : dict, optional
            Scalars to store beside the snapshot (name to value).
        """
        if u.function_space().ufl_element() != self.space.ufl_element() or \
                u.function_space().mesh() is not self.space.mesh():
            raise ValueError(f"the snapshot is in {u.function_space()}, not in the recorder's space "
                             f"{self.space}")
        t = float(t)
        if trajectory == self.trajectory + 1 and (self.trajectory < 0 or self.written == len(self.times)):
            self.trajectory, self.written = trajectory, 0
        elif trajectory != self.trajectory:
            raise ValueError(f"trajectory {trajectory} written after trajectory {self.trajectory}"
                             + (f" with {self.written} of its {len(self.times)} times" if self.trajectory >= 0
                                else "") + ": write trajectories 0, 1, 2, ... each at every time in turn")
        k = self.written
        if self.trajectory == 0:
            if self.times and t <= self.times[-1]:
                raise ValueError(f"time {t} written after {self.times[-1]}: times must increase")
            self.times.append(t)
        elif k >= len(self.times) or not np.isclose(t, self.times[k], rtol=1e-12, atol=1e-14):
            expected = "no more times" if k >= len(self.times) else f"time {self.times[k]}"
            raise ValueError(f"trajectory {trajectory} written at time {t} where trajectory 0 has {expected}")
        values = self.gather(u)
        if self.group is not None:
            snapshots = self.group["snapshots"]
            if self.trajectory >= snapshots.shape[0]:
                snapshots.resize(self.trajectory + 1, axis=0)
            if k >= snapshots.shape[1]:
                snapshots.resize(k + 1, axis=1)
            snapshots[self.trajectory, k] = values
            for name, value in (diagnostics or {}).items():
                series = self.group.require_group("diagnostics")
                if name not in series:
                    series.create_dataset(name, (0, 0), maxshape=(None, None), dtype="f8")
                series[name].resize((max(series[name].shape[0], self.trajectory + 1),
                                     max(series[name].shape[1], k + 1)))
                series[name][self.trajectory, k] = value
        self.written += 1

    def set_parameters(self, trajectory, values):
        """Record the parameters (name to value, :attr:`parameter_names`) of a trajectory's
        initial condition."""
        missing = set(self.parameter_names) - set(values)
        if missing:
            raise ValueError(f"parameters {sorted(missing)} of trajectory {trajectory} missing")
        self.parameters[trajectory] = [float(values[name]) for name in self.parameter_names]

    def close(self):
        """Complete the dataset and move it to :attr:`path`."""
        if self.trajectory < 0 or self.written != len(self.times):
            raise ValueError(f"{self.path}: the last trajectory has {self.written} of {len(self.times)} times"
                             if self.trajectory >= 0 else f"{self.path}: no snapshot was written")
        if self.group is not None:
            n = self.trajectory + 1
            times = np.asarray(self.times)
            self.group["times"] = times
            parameters = np.full((n, len(self.parameter_names)), np.nan)
            for k, values in self.parameters.items():
                parameters[k] = values
            self.group["parameters"] = parameters
            if "dt" not in self.group.attrs:
                steps = np.diff(times)
                self.group.attrs["dt"] = float(steps.mean()) if len(steps) else 0.0
            self.group.file.close()
            os.replace(self.partial, self.path)
        self.comm.barrier()

    def abort(self):
        """Remove the partial file."""
        if self.group is not None:
            self.group.file.close()
        if self.comm.rank == 0:
            self.partial.unlink(missing_ok=True)
        self.comm.barrier()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()
        return False
