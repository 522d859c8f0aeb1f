"""Data-parallel training (:mod:`firedrake_msm.distributed`): two processes under ``torchrun``
(gloo, CPU) train what one process trains with twice the batch, resume exactly after SIGKILL,
and refuse to resume on another number of processes."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from firedrake_msm.cli import main
from firedrake_msm.distributed import Batches, World, window_generators

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no"}

# The command line's train, with a pause (for a test to kill the processes in) after a chosen step.
WORKER = textwrap.dedent('''
    import os
    import sys
    import time
    from pathlib import Path

    import firedrake_msm.train as training
    from firedrake_msm.cli import main

    step = training._Run.step


    def step_then_pause(self, *args):
        terms = step(self, *args)
        if self.state["step"] + 1 == int(os.environ.get("PAUSE_AT", 0)):
            Path(os.environ["PAUSED"] + str(self.world.rank)).write_text(str(os.getpid()))
            time.sleep(600)
        return terms


    training._Run.step = step_then_pause
    sys.exit(main(sys.argv[1:]))
''')


def train_args(dataset, run, batch_size):
    return ["train", str(dataset), "--n-latent", "1", "--steps", "12", "--batch-size", str(batch_size),
            "--window", "8", "--beta-warmup", "4", "--residual-times", "4", "--validate-every", "4",
            "--checkpoint-every", "2", "--validation-samples", "2", "--average", "0.9", "--dtype", "float64",
            "--output", str(run), "--resume"]


def torchrun(folder, args, **env):
    """``torchrun --standalone --nproc-per-node=2`` of the worker, started (not waited for)."""
    worker = folder / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(worker), *args]
    return subprocess.Popen(command, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def parameters(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def log(run):
    return np.genfromtxt(run / "log.csv", delimiter=",", names=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import firedrake_msm as msm
    path = tmp_path_factory.mktemp("data") / "kdv.h5"
    # Two training trajectories of 24 windows of 8 snapshots: 48 windows, shared out evenly.
    return msm.simulate("kdv", path, trajectories=4, resolution=60, dt=0.01, t_end=0.3, progress=False)


@pytest.fixture(scope="module")
def two(dataset, tmp_path_factory):
    """A run of 12 steps on two processes of 2 windows each."""
    folder = tmp_path_factory.mktemp("two")
    out = finish(torchrun(folder, train_args(dataset, folder / "run", 2)))
    assert out.count("trained in") == 1          # printed by rank 0 only
    return folder / "run"


def test_each_step_shares_out_the_batch_of_one_process():
    """Over epochs, the windows of two processes' step are one process's of twice the batch, in
    the same positions, and a window's random numbers depend on its position alone."""
    one = Batches(48, 6, World(), seed=3)
    two = [Batches(48, 3, World(rank, 2), seed=3) for rank in (0, 1)]
    seen = []
    for step in range(20):                               # 120 windows: two epochs and a half
        windows, positions = one(step)
        assert positions == list(range(6))
        shared = [None] * 6
        for batches in two:
            for window, position in zip(*batches(step)):
                shared[position] = window
        assert shared == windows
        seen += windows
    assert sorted(seen[:48]) == list(range(48)) and sorted(seen[48:96]) == list(range(48))
    assert seen[:48] != seen[48:96]
    a, b, c = (torch.randn(4, generator=g)
               for g in window_generators(0, 5, [1, 1, 2], "cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_two_processes_train_what_one_does_with_twice_the_batch(dataset, two, tmp_path):
    """K = 2 processes of b windows and one process of 2b windows: the same parameters, average
    and losses after 12 steps (validating every 4), to round-off in float64."""
    assert main(train_args(dataset, tmp_path / "one", 4)) == 0
    one, pair = parameters(tmp_path / "one"), parameters(two)
    assert pair["state"]["world_size"] == 2 and one["state"]["world_size"] == 1
    for key in ("model", "average"):
        assert one[key].keys() == pair[key].keys()
        for name in one[key]:
            assert torch.allclose(pair[key][name], one[key][name], rtol=1e-9, atol=1e-12), (key, name)
    assert (two / "best.pt").exists() and len(pair["rng"]) == 2           # every process's random states
    logs = log(tmp_path / "one"), log(two)
    assert np.array_equal(logs[0]["step"], logs[1]["step"])
    assert np.allclose(logs[0]["elbo"], logs[1]["elbo"], rtol=1e-10)
    assert np.allclose(logs[0]["validation_error"], logs[1]["validation_error"], rtol=1e-8, equal_nan=True)


def test_a_killed_distributed_run_resumes_to_the_same_parameters(dataset, two, tmp_path):
    """torchrun and both processes killed with SIGKILL after step 7 (checkpoint at step 6),
    then resumed on two processes: what the uninterrupted run trained, bit for bit."""
    run, paused = tmp_path / "run", str(tmp_path / "paused")
    killed = torchrun(tmp_path, train_args(dataset, run, 2), PAUSE_AT="7", PAUSED=paused)
    pids = [Path(paused + str(rank)) for rank in (0, 1)]
    start = time.monotonic()
    while not all(p.exists() and p.read_text() for p in pids):
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() - start < 300, "timed out"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    for p in pids:
        os.kill(int(p.read_text()), signal.SIGKILL)
    killed.communicate()
    assert parameters(run)["state"]["step"] == 6
    finish(torchrun(tmp_path, train_args(dataset, run, 2)))
    whole, resumed = parameters(two), parameters(run)
    assert resumed["state"]["step"] == 12
    for key in ("model", "average"):
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
    assert np.array_equal(log(two)["elbo"], log(run)["elbo"])


def test_resuming_on_another_number_of_processes_is_refused(dataset, two, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(two / "checkpoint.pt", run)
    with pytest.raises(ValueError, match=r"a run on 2 processes, and this one has 1: resume it on 2"):
        main(train_args(dataset, run, 4))
