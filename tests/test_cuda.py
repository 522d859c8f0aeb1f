"""The torch paths on CUDA: the model's functions, training, forecasts (Python and the command
line) and data-parallel training with NCCL. Skipped, with the reason, where torch sees no GPU
(the bridge's own CUDA test is in test_bridge.py). On CUDA each window draws its random numbers
from CUDA generators, so a GPU run trains other parameters than a CPU run; what is compared with
the CPU here is deterministic."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from firedrake_msm.cli import main
from firedrake_msm.data import load_trajectories
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast
from firedrake_msm.model import ModelConfig, MultiscaleModel
from firedrake_msm.train import TrainConfig, fit

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")]


@pytest.fixture(scope="module")
def kdv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "kdv.h5"
    return simulate("kdv", path, trajectories=4, resolution=60, dt=0.01, t_end=0.3, progress=False)


def tiny(**kwargs):
    return TrainConfig(**{**dict(steps=4, batch_size=2, window=8, beta_warmup=4, residual_times=4,
                                 validate_every=2, checkpoint_every=2, validation_samples=2, dtype="float64"),
                          **kwargs})


def test_the_model_on_cuda_is_the_model_on_the_cpu(kdv, tmp_path):
    """Encoder, drift and decoder of one model, in float64 on both devices: the same to round-off."""
    model = MultiscaleModel.build(kdv, ModelConfig("kdv", n_latent=2, width=16, features=4)).double()
    _, truth = load_trajectories(kdv, trajectories=[0])
    fine = torch.as_tensor(truth[0, :5])
    results = []
    for device in ("cpu", "cuda"):
        model = model.to(device)
        with torch.no_grad():
            mean, log_var = model.encode(fine.to(device))
            f = model.sde.f(0.0, mean)
            predicted, var = model.decode(mean)
        results.append([t.cpu() for t in (mean, log_var, f, predicted, var)])
    for cpu, gpu in zip(*results):
        assert torch.allclose(gpu, cpu, rtol=1e-10, atol=1e-12)


def test_training_and_forecasts_run_on_cuda(kdv, tmp_path):
    best = fit(kdv, tmp_path / "run", ModelConfig("kdv", n_latent=1, width=8, features=4),
               tiny(device="cuda"), progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert saved["state"]["step"] == 4
    log = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)
    assert np.isfinite(log["elbo"]).all()
    model = MultiscaleModel.load(best, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    times, truth = load_trajectories(kdv, trajectories=[3])
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=3, seed=1)
    assert result.mean.device.type == "cuda" and torch.isfinite(result.mean).all()
    assert main(["forecast", str(best), "--samples", "2", "--device", "cuda"]) == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"NCCL data parallelism needs two GPUs; torch sees {torch.cuda.device_count()}")
def test_two_gpus_train_what_one_does_with_twice_the_batch(kdv, tmp_path):
    args = ["train", str(kdv), "--n-latent", "1", "--steps", "4", "--window", "8", "--beta-warmup", "4",
            "--residual-times", "4", "--validate-every", "2", "--checkpoint-every", "2",
            "--validation-samples", "2", "--dtype", "float64", "--device", "cuda"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    "-m", "firedrake_msm.cli", *args, "--batch-size", "2", "--output", str(tmp_path / "two")],
                   env=env, check=True)
    assert main([*args, "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
    one, two = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
                for run in ("one", "two"))
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-9, atol=1e-12), name
