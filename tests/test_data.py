"""Windows of DNS snapshots for training."""
import h5py
import numpy as np
import pytest
import torch

from firedrake_msm.data import SnapshotWindows, load_space
from firedrake_msm.dns import simulate
from firedrake_msm.problems import AdvectedPulse
from firedrake_msm.transfer import Transfer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pulse.h5"
    return simulate(AdvectedPulse(), path, trajectories=3, resolution=100, dt=0.01, t_end=0.2, progress=False)


def test_windows_are_the_file_in_dof_order(dataset):
    V, order = load_space(dataset)
    windows = SnapshotWindows(dataset, window=8, trajectories=[0, 2], dtype=torch.float64)
    assert len(windows) == 2 * (21 - 8 + 1)
    item = windows[15]                         # trajectory 2, window starting at snapshot 1
    with h5py.File(dataset, "r") as f:
        expected = f["msm/snapshots"][2, 1:9][:, order]
    assert np.array_equal(item["fine"].numpy(), expected)
    assert np.allclose(item["times"].numpy(), 0.01 * np.arange(1, 9))
    assert V.dim() == 100


def test_restriction_noise_and_time_range(dataset):
    V, _ = load_space(dataset)
    problem = AdvectedPulse()
    transfer = Transfer(V, problem.function_space(problem.mesh(20)))
    windows = SnapshotWindows(dataset, window=4, transfer=transfer, noise_std=0.01, seed=3,
                              time_range=(0.05, 0.15), dtype=torch.float64)
    assert all(0.05 <= t <= 0.15 for k in range(len(windows)) for t in windows[k]["times"])
    a, b = windows[2], windows[2]
    assert torch.equal(a["fine"], b["fine"])                # noise is a function of the item
    assert torch.allclose(a["coarse"], transfer.restrict(a["fine"]))
    clean = SnapshotWindows(dataset, window=4, time_range=(0.05, 0.15), dtype=torch.float64)[2]["fine"]
    assert 0.005 < (a["fine"] - clean).std() < 0.015


def test_window_longer_than_the_data_is_an_error(dataset):
    with pytest.raises(ValueError, match="do not fit"):
        SnapshotWindows(dataset, window=64)
