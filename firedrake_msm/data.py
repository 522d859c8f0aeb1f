"""Training data: windows of consecutive DNS snapshots as a torch ``Dataset``."""
from pathlib import Path

import h5py
import numpy as np
import torch
from firedrake import COMM_SELF, CheckpointFile


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
    with CheckpointFile(str(path), "r", comm=comm) as f:
        mesh = f.load_mesh()
        index = f.load_function(mesh, "dof_index")
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
        self.space, self.order = load_space(self.path)
        with h5py.File(self.path, "r") as f:
            n_trajectories, n_times, _ = f["msm/snapshots"].shape
            self.times = f["msm/times"][...]
        if window > n_times:
            raise ValueError(f"windows of {window} snapshots do not fit in {n_times} times")
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
        if self.noise_std:
            fine = fine + self.noise_std * np.random.default_rng([self.seed, k]).standard_normal(fine.shape)
        item = {"fine": torch.as_tensor(fine, dtype=self.dtype),
                "times": torch.as_tensor(self.times[start:start + self.window], dtype=self.dtype)}
        if self.transfer is not None:
            item["coarse"] = self.transfer.restrict(torch.as_tensor(fine)).to(self.dtype)
        return item


def splits(path):
    """The train / validation / test split of a dataset, as :class:`SnapshotWindows` keywords.

    Several trajectories are split by trajectory: the last 5 test, the 5 before validate (DESIGN.md
    §4's 20/5/5 and 10/5/5), scaled down for small datasets. One trajectory is split in time, as
    the reference cylinder data (train on the first 13/15 of the stored interval, validate on the
    next 1/15, test on the last 1/15).
    """
    with h5py.File(path, "r") as f:
        n, _, _ = f["msm/snapshots"].shape
        times = f["msm/times"][...]
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
    with h5py.File(path, "r") as f:
        times = f["msm/times"][...]
        # The times are sorted, so a range is one slice: read only that.
        t0, t1 = (-np.inf, np.inf) if time_range is None else time_range
        lo, hi = np.searchsorted(times, t0, side="left"), np.searchsorted(times, t1, side="right")
        rows = list(range(f["msm/snapshots"].shape[0]) if trajectories is None else trajectories)
        snapshots = np.stack([f["msm/snapshots"][k, lo:hi][:, order] for k in rows])
    return times[lo:hi], snapshots
