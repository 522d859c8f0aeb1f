"""Training data: windows of consecutive snapshots of a dataset (:mod:`firedrake_msm.recorder`) as a
torch ``Dataset``, and the dataset's other contents."""
import json
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch
from firedrake import COMM_SELF, CheckpointFile


@contextmanager
def open_dataset(path):
    """The ``msm`` group of a dataset, open for reading.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not HDF5, or not a dataset (no snapshots).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a dataset: HDF5 cannot open it ({error})") from None
    with f:
        if "msm/snapshots" not in f or "msm/times" not in f:
            raise ValueError(f"{path} is an HDF5 file but not a firedrake-msm dataset (it has no "
                             "msm/snapshots and msm/times): write one with firedrake_msm.Recorder or "
                             "simulate")
        yield f["msm"]


def dataset_problem(path):
    """``(name, options)`` of the problem a dataset names (:func:`~firedrake_msm.problems.reference`).

    Raises
    ------
    ValueError
        When the dataset names none (recorded without a problem).
    """
    with open_dataset(path) as group:
        name = str(group.attrs.get("problem", ""))
        options = json.loads(group.attrs.get("problem_options", "{}"))
    if not name:
        raise ValueError(f"{path} names no problem (it was recorded without one): name it in "
                         "ModelConfig(problem=...)")
    return name, options


def check_space(path, V):
    """Raise ValueError unless the dataset's fine space is ``V`` (same element, same mesh)."""
    W, _ = load_space(path)
    same = (W.ufl_element() == V.ufl_element() and W.dim() == V.dim()
            and np.array_equal(W.mesh().coordinates.dat.data_ro, V.mesh().coordinates.dat.data_ro))
    if not same:
        raise ValueError(f"{path} holds data in {W.ufl_element()} with {W.dim()} dofs on its own mesh, "
                         f"not in the model's fine space ({V.ufl_element()}, {V.dim()} dofs): the model was "
                         "trained on other data")


def load_space(path, comm=COMM_SELF):
    """The observed function space of a dataset written by :func:`firedrake_msm.dns.simulate`.

    Returns
    -------
    V : firedrake.FunctionSpace
        The observed space on the dataset's fine mesh, as loaded here.
    order : numpy.ndarray
        ``order[i]`` is the file's column holding dof ``i`` of ``V``: ``snapshots[..., order]``
        is in ``V``'s dof order.
    """
    try:
        with CheckpointFile(str(path), "r", comm=comm) as f:
            mesh = f.load_mesh()
            index = f.load_function(mesh, "dof_index")
    except Exception as error:
        raise ValueError(f"{path} holds no fine mesh and dof_index Function that Firedrake can load: "
                         f"{type(error).__name__}: {error}") from error
    return index.function_space(), index.dat.data_ro.reshape(-1).astype(np.int64)


class SnapshotWindows(torch.utils.data.Dataset):
    """Windows of ``window`` consecutive snapshots of a DNS dataset, read lazily.

    Item ``k`` is a dict with ``"fine"``: ``(window, N_h)`` observed states in the dof order of
    :attr:`space` (plus observation noise, if any), ``"coarse"``: their restrictions
    ``(window, N_H)`` when a ``transfer`` is given, and ``"times"``: ``(window,)``.

    Parameters
    ----------
    path : str or pathlib.Path
        The dataset.
    window : int
        Snapshots per window.
    trajectories : sequence of int, optional
        Which trajectories (default all): split train / validation / test by trajectory.
    time_range : (float, float), optional
        Keep windows lying inside ``[t0, t1]``: split a single long trajectory by time.
    transfer : firedrake_msm.transfer.Transfer, optional
        Restriction from :attr:`space` to the coarse space.
    noise_std : float
        Standard deviation of Gaussian observation noise, drawn from ``seed`` and the item
        index, so an item is the same every time it is read.
    dtype : torch.dtype
    """

    def __init__(self, path, *, window=64, trajectories=None, time_range=None, transfer=None,
                 noise_std=0.0, seed=0, dtype=torch.float32):
        self.path = Path(path)
        with open_dataset(self.path) as group:
            n_trajectories, n_times, _ = group["snapshots"].shape
            self.times = group["times"][...]
        self.space, self.order = load_space(self.path)
        if window < 2 or window > n_times:
            raise ValueError(f"windows of {window} snapshots do not fit in the {n_times} times of "
                             f"{self.path}: a window holds 2 to that many")
        self.window, self.transfer, self.dtype = window, transfer, dtype
        self.noise_std, self.seed = noise_std, seed
        self.trajectories = list(range(n_trajectories)) if trajectories is None else list(trajectories)
        starts = np.arange(n_times - window + 1)
        if time_range is not None:
            t0, t1 = time_range
            starts = starts[(self.times[starts] >= t0) & (self.times[starts + window - 1] <= t1)]
        self.starts = starts
        self._file = None

    def __len__(self):
        return len(self.trajectories) * len(self.starts)

    def __getitem__(self, k):
        if self._file is None:          # opened per process: h5py handles do not survive a fork
            self._file = h5py.File(self.path, "r")
        trajectory = self.trajectories[k // len(self.starts)]
        start = int(self.starts[k % len(self.starts)])
        rows = self._file["msm/snapshots"][trajectory, start:start + self.window]
        fine = rows[:, self.order]
        if not np.isfinite(fine).all():
            bad = np.flatnonzero(~np.isfinite(fine).all(axis=1))[0]
            raise ValueError(f"{self.path} holds a value that is not finite in trajectory {trajectory} at "
                             f"time {self.times[start + bad]:g}: remove or repair that trajectory")
        if self.noise_std:
            fine = fine + self.noise_std * np.random.default_rng([self.seed, k]).standard_normal(fine.shape)
        item = {"fine": torch.as_tensor(fine, dtype=self.dtype),
                "times": torch.as_tensor(self.times[start:start + self.window], dtype=self.dtype)}
        if self.transfer is not None:
            item["coarse"] = self.transfer.restrict(torch.as_tensor(fine)).to(self.dtype)
        return item


def splits(path):
    """The train / validation / test split of a dataset, as :class:`SnapshotWindows` keywords.

    Several trajectories are split by trajectory: the last 5 test, the 5 before validate (the
    reference protocol's 20/5/5 and 10/5/5, docs/results.md), scaled down for small datasets. One
    trajectory is split in time, as the reference cylinder data (train on the first 13/15 of the
    stored interval, validate on the next 1/15, test on the last 1/15).
    """
    with open_dataset(path) as group:
        n, _, _ = group["snapshots"].shape
        times = group["times"][...]
    if n == 1:
        t0, t1 = float(times[0]), float(times[-1])
        cut = [t0 + (t1 - t0) * k / 15 for k in (13, 14)]
        return {"train": {"time_range": (t0, cut[0])}, "validation": {"time_range": (cut[0], cut[1])},
                "test": {"time_range": (cut[1], t1)}}
    if n < 3:
        raise ValueError(f"{path} holds {n} trajectories: at least 3 are needed to train, validate and test")
    held = 5 if n >= 15 else max(1, n // 6)
    return {"train": {"trajectories": range(n - 2 * held)},
            "validation": {"trajectories": range(n - 2 * held, n - held)},
            "test": {"trajectories": range(n - held, n)}}


def load_trajectories(path, *, trajectories=None, time_range=None):
    """Whole trajectories of a dataset (for forecasts), in the dof order of :func:`load_space`.

    Returns ``times`` ``(T,)`` and ``snapshots`` ``(n, T, N_h)`` (numpy, float64) for the chosen
    ``trajectories`` (default all) and the times inside ``time_range`` (default all).
    """
    _, order = load_space(path)
    with open_dataset(path) as group:
        times = group["times"][...]
        # The times are sorted, so a range is one slice: read only that.
        t0, t1 = (-np.inf, np.inf) if time_range is None else time_range
        lo, hi = np.searchsorted(times, t0, side="left"), np.searchsorted(times, t1, side="right")
        rows = list(range(group["snapshots"].shape[0]) if trajectories is None else trajectories)
        snapshots = np.stack([group["snapshots"][k, lo:hi][:, order] for k in rows])
    return times[lo:hi], snapshots
