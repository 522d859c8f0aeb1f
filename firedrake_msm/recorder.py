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

The file is written under a temporary name (``<name>.partial``) and renamed when complete, so an
interrupted or failed run leaves nothing that looks like a dataset. The partial file is flushed
after each trajectory: a recorder made with ``resume=True`` continues an interrupted one after its
last complete trajectory.
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
        More attributes of the ``msm`` group (the DNS stores its ``seed``, ``resolution`` and
        ``dt``).
    resume : bool
        Continue the partial file of an interrupted recorder with the same attributes and
        process count, after its :attr:`completed` trajectories (which the caller then skips);
        a partial file that does not match, or cannot be read, is started afresh.

    Attributes
    ----------
    completed : int
        The trajectories kept from an interrupted recorder (0 for a new one).
    """

    def __init__(self, path, space, *, problem=None, parameter_names=None, attributes=None, resume=False):
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
        self.attributes = {"problem": name, "problem_options": json.dumps(options),
                           "parameter_names": self.parameter_names, "processes": self.comm.size,
                           **(attributes or {})}
        self.group = None
        kept = self._reopen() if resume and self.comm.rank == 0 else None
        kept = self.comm.bcast(kept, root=0)
        if kept is None:
            self._create()
            self.completed, self.times = 0, []
        else:
            self.completed, self.times = kept
        self.trajectory, self.written = self.completed - 1, len(self.times)

    def _create(self):
        """A new partial file: the mesh and ``dof_index`` (collectively), then the ``msm`` group."""
        with CheckpointFile(str(self.partial), "w", comm=self.comm) as checkpoint:
            checkpoint.save_mesh(self.space.mesh())
            index = Function(self.space, name="dof_index")
            with index.dat.vec_wo as vec:
                vec.array[:] = np.arange(*vec.getOwnershipRange())
            checkpoint.save_function(index)
        if self.comm.rank == 0:
            self.group = h5py.File(self.partial, "a").create_group("msm")
            size, n = self.gather.size, len(self.parameter_names)
            self.group.create_dataset("snapshots", (0, 0, size), maxshape=(None, None, size), dtype="f8",
                                      chunks=(1, 64, size))
            self.group.create_dataset("times", (0,), maxshape=(None,), dtype="f8")
            self.group.create_dataset("parameters", (0, n), maxshape=(None, n), dtype="f8")
            self.group.attrs.update(completed=0, firedrake=version("firedrake"), petsc=version("petsc"),
                                    firedrake_msm=version("firedrake-msm"), **self.attributes)

    def _reopen(self):
        """On rank 0: the partial file's completed trajectories and times, truncated to them, or
        None when there is nothing to continue."""
        if not self.partial.exists():
            return None
        try:
            f = h5py.File(self.partial, "a")
        except OSError:                         # killed mid-write: start afresh
            return None
        try:
            group = f["msm"]
            same = all(_plain(group.attrs.get(key)) == _plain(value)
                       for key, value in self.attributes.items())
            completed = int(group.attrs["completed"])
            usable = same and completed > 0 and group["snapshots"].shape[2] == self.gather.size
        except (OSError, KeyError):
            usable = False
        if not usable:
            f.close()
            return None
        for name in ["snapshots", "parameters"] + [f"diagnostics/{d}" for d in group.get("diagnostics", {})]:
            group[name].resize(completed, axis=0)
        self.group = group
        return completed, group["times"][...].tolist()

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
            if self.trajectory >= 0:
                self._completed(trajectory)
            self.trajectory, self.written = trajectory, 0
        elif trajectory != self.trajectory:
            raise ValueError(f"trajectory {trajectory} written after trajectory {self.trajectory}"
                             + (f" with {self.written} of its {len(self.times)} times" if self.trajectory >= 0
                                else "") + ": write trajectories 0, 1, 2, ... each at every time in turn")
        k = self.written
        if self.trajectory == 0:
            if self.times and t <= self.times[-1]:
                raise ValueError(f"time {t} written after {self.times[-1]}: times must increase")
        elif k >= len(self.times) or not np.isclose(t, self.times[k], rtol=1e-12, atol=1e-14):
            expected = "no more times" if k >= len(self.times) else f"time {self.times[k]}"
            raise ValueError(f"trajectory {trajectory} written at time {t} where trajectory 0 has {expected}")
        values = self.gather(u)
        finite = self.comm.bcast(bool(np.isfinite(values).all()) if self.comm.rank == 0 else None, root=0)
        if not finite:
            raise ValueError(f"the snapshot of trajectory {trajectory} at time {t:g} is not finite: the "
                             "simulation blew up (nothing is written)")
        if self.trajectory == 0:
            self.times.append(t)
        if self.group is not None:
            snapshots = self.group["snapshots"]
            snapshots.resize((max(snapshots.shape[0], self.trajectory + 1), max(snapshots.shape[1], k + 1),
                              snapshots.shape[2]))
            snapshots[self.trajectory, k] = values
            if self.trajectory == 0:
                self.group["times"].resize(k + 1, axis=0)
                self.group["times"][k] = t
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
        if self.group is not None:
            parameters = self.group["parameters"]
            if trajectory >= parameters.shape[0]:
                rows = parameters.shape[0]
                parameters.resize(trajectory + 1, axis=0)
                parameters[rows:] = np.nan
            parameters[trajectory] = [float(values[name]) for name in self.parameter_names]

    def _completed(self, n):
        """Mark ``n`` trajectories complete, on disk too, for a later ``resume``."""
        if self.group is not None:
            self.group.attrs["completed"] = n
            self.group.file.flush()

    def close(self):
        """Complete the dataset and move it to :attr:`path`."""
        if self.trajectory < 0 or self.written != len(self.times):
            raise ValueError(f"{self.path}: the last trajectory has {self.written} of {len(self.times)} times"
                             if self.trajectory >= 0 else f"{self.path}: no snapshot was written")
        if self.group is not None:
            n = self.trajectory + 1
            parameters = self.group["parameters"]
            if parameters.shape[0] < n:
                rows = parameters.shape[0]
                parameters.resize(n, axis=0)
                parameters[rows:] = np.nan
            self.group.attrs["completed"] = n
            if "dt" not in self.group.attrs:
                steps = np.diff(self.times)
                self.group.attrs["dt"] = float(steps.mean()) if len(steps) else 0.0
            self.group.file.close()
            self.group = None
            os.replace(self.partial, self.path)
        self.comm.barrier()

    def abort(self, *, keep=False):
        """Stop writing; remove the partial file, or ``keep`` it for a later ``resume``."""
        if self.group is not None:
            self.group.file.close()
            self.group = None
        if self.comm.rank == 0 and not keep:
            self.partial.unlink(missing_ok=True)
        self.comm.barrier()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:
            # An interruption keeps what is complete; an error in the data or the solver does not.
            self.abort(keep=issubclass(kind, KeyboardInterrupt))
        return False


def _plain(value):
    """An attribute as plain Python, to compare what a file holds with what would be written."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(x) for x in value]
    return value.item() if isinstance(value, np.generic) else value
