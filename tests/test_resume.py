"""Nothing is lost when a process is killed (SIGKILL, no clean-up): a training run and a DNS each
resume to exactly what an uninterrupted run gives."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no"}

SLOW_PULSE = textwrap.dedent('''
    """The advected pulse, with a pause (for a test to kill it in) at a chosen snapshot."""
    import os
    import time
    from pathlib import Path

    from firedrake_msm.problems import AdvectedPulse


    class SlowPulse(AdvectedPulse):
        calls = 0

        def diagnostics(self, u):
            self.calls += 1
            with open(os.environ["CALLS"], "a") as log:
                log.write("call\\n")
            if self.calls == int(os.environ.get("PAUSE_AT", 0)):
                Path(os.environ["CALLS"] + ".paused").touch()
                time.sleep(600)
            return {}
''')


def start(script, **env):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env={**ENV, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def wait_for(condition, process, timeout=300):
    start_ = time.monotonic()
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() - start_ < timeout, "timed out"
        time.sleep(0.05)


def test_a_killed_dns_resumes_to_the_same_dataset(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_PULSE)
    script = f'''
        import firedrake_msm as msm
        from firedrake import COMM_SELF
        msm.simulate("{tmp_path}/slow.py:SlowPulse", OUT, trajectories=4,
                     resolution=40, dt=0.01, t_end=0.1, progress=False, comm=COMM_SELF, resume=True)
    '''
    finish(start(script.replace("OUT", f"'{tmp_path}/whole.h5'"), CALLS=str(tmp_path / "whole.calls")))
    # Killed in trajectory 2 (11 snapshots a trajectory): 0 and 1 are complete on disk.
    calls = tmp_path / "killed.calls"
    killed = start(script.replace("OUT", f"'{tmp_path}/killed.h5'"), CALLS=str(calls), PAUSE_AT="24")
    wait_for(lambda: (tmp_path / "killed.calls.paused").exists(), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (tmp_path / "killed.h5.partial").exists() and not (tmp_path / "killed.h5").exists()
    calls.unlink()
    finish(start(script.replace("OUT", f"'{tmp_path}/killed.h5'"), CALLS=str(calls)))
    assert len(calls.read_text().splitlines()) == 2 * 11        # only trajectories 2 and 3 again
    with h5py.File(tmp_path / "whole.h5", "r") as a, h5py.File(tmp_path / "killed.h5", "r") as b:
        for name in ("snapshots", "times", "parameters"):
            assert np.array_equal(a["msm"][name][...], b["msm"][name][...]), name
        assert a["msm"].attrs["completed"] == b["msm"].attrs["completed"] == 4
    assert not (tmp_path / "killed.h5.partial").exists()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import firedrake_msm as msm
    path = tmp_path_factory.mktemp("data") / "kdv.h5"
    return msm.simulate("kdv", path, trajectories=4, resolution=60, dt=0.01, t_end=0.3, progress=False)


def test_a_killed_training_resumes_to_the_same_parameters(dataset, tmp_path):
    script = f'''
        import firedrake_msm as msm
        config = msm.TrainConfig(steps=12, batch_size=2, window=8, beta_warmup=4, residual_times=4,
                                 validate_every=4, checkpoint_every=2, validation_samples=2, average=0.9)
        msm.fit("{dataset}", RUN, msm.ModelConfig(n_latent=1, width=8, features=4), config, resume=True,
                progress=False)
    '''
    finish(start(script.replace("RUN", f"'{tmp_path}/whole'")))
    killed = start(script.replace("RUN", f"'{tmp_path}/killed'"))

    def past_step_4():
        log = tmp_path / "killed" / "log.csv"
        return log.exists() and len(log.read_text().splitlines()) > 6
    wait_for(past_step_4, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted_at = len((tmp_path / "killed" / "log.csv").read_text().splitlines()) - 1
    finish(start(script.replace("RUN", f"'{tmp_path}/killed'")))
    whole, resumed = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
                      for run in ("whole", "killed"))
    assert resumed["state"]["step"] == 12 and interrupted_at < 12
    for key in ("model", "average"):
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
    logs = [np.genfromtxt(tmp_path / run / "log.csv", delimiter=",", names=True)
            for run in ("whole", "killed")]
    assert np.array_equal(logs[0]["step"], logs[1]["step"])
    assert np.array_equal(logs[0]["elbo"], logs[1]["elbo"])
    assert not list((tmp_path / "killed").glob("*.partial"))
