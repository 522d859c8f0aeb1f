"""Training: recovery of a known SDE, exact resumption, divergence, forecasts."""
import re
import sys

import h5py
import numpy as np
import pytest
import torch
from firedrake import COMM_SELF, CheckpointFile, Function, FunctionSpace

from firedrake_msm.dns import simulate
from firedrake_msm.forecast import forecast, write_vtk
from firedrake_msm.model import ModelConfig, MultiscaleModel
from firedrake_msm.problems import AdvectedPulse, KdV
from firedrake_msm.train import TrainConfig, TrainingDiverged, fit


def write_dataset(path, V, snapshots, times):
    """A dataset in :func:`firedrake_msm.dns.simulate`'s format from given snapshots."""
    with CheckpointFile(str(path), "w", comm=COMM_SELF) as f:
        f.save_mesh(V.mesh())
        index = Function(V, name="dof_index")
        index.dat.data[:] = np.arange(V.dim())
        f.save_function(index)
    with h5py.File(path, "a") as f:
        f["msm/snapshots"] = snapshots
        f["msm/times"] = times
    return path


@pytest.fixture(scope="module")
def kdv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "kdv.h5"
    return simulate(KdV(), path, trajectories=4, resolution=100, dt=0.01, t_end=0.3, progress=False)


def tiny(**kwargs):
    settings = dict(steps=6, batch_size=2, window=8, beta_warmup=4, residual_times=4, validate_every=3,
                    checkpoint_every=3, validation_samples=2)
    settings.update(kwargs)
    return TrainConfig(**settings)


def test_recovers_a_known_linear_sde(tmp_path):
    r"""Independent Ornstein-Uhlenbeck processes :math:`du = -\lambda u\,dt + \sigma dW` on the
    nodes of a periodic P1 mesh, observed exactly every 0.01: the learned drift (no physics, no
    auxiliary state, no filter, so the observation model is the identity) and diffusion."""
    lam, sigma, dt, n, steps = 2.0, 0.2, 0.01, 10, 201
    rng = np.random.default_rng(0)
    X = np.empty((12, steps, n))
    X[:, 0] = rng.standard_normal((12, n))
    decay = np.exp(-lam * dt)
    spread = sigma * np.sqrt((1 - decay**2) / (2 * lam))          # exact transition of the OU process
    for k in range(1, steps):
        X[:, k] = decay * X[:, k - 1] + spread * rng.standard_normal((12, n))
    V = FunctionSpace(AdvectedPulse().mesh(n, comm=COMM_SELF), "CG", 1)
    data = write_dataset(tmp_path / "ou.h5", V, X, dt * np.arange(steps))
    config = TrainConfig(steps=2000, window=32, lr=1e-2, decay=0.5, decay_every=700, beta_warmup=500,
                         residual_times=64, validate_every=0, checkpoint_every=2000)
    config_ = ModelConfig("pulse", coarse=n, n_latent=0, physics=False, filter_width=0.0, width=32)
    model = MultiscaleModel.load(fit(data, tmp_path / "run", config_, config, progress=False))
    z = torch.as_tensor(X[-2:].reshape(-1, n), dtype=torch.float32)      # test trajectories
    with torch.no_grad():
        f = model.sde.f(0.0, z)
        sigma_learned = model.sde.sigma()
    slope = float((f * z).sum() / (z * z).sum())
    assert abs(slope + lam) < 0.1 * lam, slope
    assert float((f + lam * z).norm() / (lam * z).norm()) < 0.25
    # The Gaussian-process posterior smooths the path between observations, which biases the
    # diffusion low: measured 0.147 for 0.2.
    assert torch.allclose(sigma_learned, sigma_learned[0]) and 0.6 * sigma < sigma_learned[0] < 1.1 * sigma


def test_resume_gives_the_uninterrupted_run(kdv, tmp_path):
    """The same parameters, parameter average and log, whether interrupted or not."""
    config = ModelConfig("kdv", n_latent=2, width=16, features=4)
    fit(kdv, tmp_path / "once", config, tiny(average=0.9), progress=False)
    fit(kdv, tmp_path / "twice", config, tiny(steps=3, average=0.9), progress=False)
    with open(tmp_path / "twice/log.csv", "a") as log:    # logged after the checkpoint, then stopped
        log.write("4,0,0,0,0,0,0,\n")
    fit(kdv, tmp_path / "twice", config, tiny(average=0.9), resume=True, progress=False)
    once, twice = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
                   for run in ("once", "twice"))
    for key in ("model", "average"):
        assert once[key].keys() == twice[key].keys()
        assert all(torch.equal(once[key][k], twice[key][k]) for k in once[key])
    logs = [np.genfromtxt(tmp_path / run / "log.csv", delimiter=",", names=True) for run in ("once", "twice")]
    assert np.array_equal(logs[0]["elbo"], logs[1]["elbo"]) and len(logs[0]) == 6
    assert np.all(np.diff(logs[1]["seconds"]) > 0)      # the whole training's time, across the resume


def test_validation_does_not_change_what_is_trained(kdv, tmp_path):
    """Validation forecasts leave the training's random stream alone: validated every step or
    never, a run trains the same parameters."""
    config = ModelConfig("kdv", n_latent=1, width=8, features=4)
    for every in (0, 1):
        fit(kdv, tmp_path / str(every), config, tiny(steps=4, validate_every=every), progress=False)
    never, always = (torch.load(tmp_path / str(every) / "checkpoint.pt", weights_only=True)["model"]
                     for every in (0, 1))
    assert all(torch.equal(never[k], always[k]) for k in never)


def test_the_trained_model_is_the_parameter_average(kdv, tmp_path):
    r"""With ``average`` :math:`a`, the average follows :math:`\bar\theta_k = d_k\bar\theta_{k-1} +
    (1 - d_k)\theta_k`, :math:`d_k = \min(a, (1 + k)/(10 + k))`, and :func:`load` gives it."""
    config = ModelConfig("kdv", n_latent=1, width=8, features=4)
    checkpoints = []
    for steps in (5, 6):
        fit(kdv, tmp_path / str(steps), config, tiny(steps=steps, average=0.3, validate_every=0,
                                                     checkpoint_every=steps), progress=False)
        checkpoints.append(torch.load(tmp_path / str(steps) / "checkpoint.pt", weights_only=True))
    before, after = checkpoints
    model = MultiscaleModel.load(tmp_path / "6/checkpoint.pt")
    for name, p in model.named_parameters():
        want = 0.3 * before["average"][name] + 0.7 * after["model"][name]
        assert torch.allclose(after["average"][name], want, atol=1e-7)
        assert torch.equal(p.detach(), after["average"][name])
    assert not all(torch.equal(after["average"][k], after["model"][k]) for k in after["average"])


def test_diverging_loss_stops_with_a_clear_error(kdv, tmp_path, monkeypatch):
    """A loss that turns NaN stops the run, naming the step and the last good checkpoint, which
    holds the state before it."""
    import firedrake_msm.train as training
    real, calls = training.negative_elbo, []

    def diverging(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(None)
        return (loss * float("nan") if len(calls) == 3 else loss), terms
    monkeypatch.setattr(training, "negative_elbo", diverging)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 3 .* the last good state is in "
                                               r".*run/checkpoint\.pt"):
        fit(kdv, tmp_path / "run", ModelConfig("kdv", n_latent=1, width=8),
            tiny(checkpoint_every=2, validate_every=0), progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state"]["step"] == 2


def test_forecast_is_seeded_and_writes_vtk(kdv, tmp_path, monkeypatch):
    best = fit(kdv, tmp_path / "run", ModelConfig("kdv", n_latent=2, width=16, features=4), tiny(),
               progress=False)
    model = MultiscaleModel.load(best)
    from firedrake_msm.data import load_trajectories
    times, truth = load_trajectories(kdv, trajectories=[3])
    a, b = (forecast(model, torch.as_tensor(truth[:, 0]), times, samples=3, seed=1) for _ in range(2))
    assert torch.equal(a.mean, b.mean) and a.mean.shape == (1, len(times), 100)
    # Decoded one output time at a time, the statistics are the same.
    monkeypatch.setattr(sys.modules["firedrake_msm.forecast"], "DECODED_VALUES", 1)
    one = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=3, seed=1)
    assert torch.allclose(one.mean, a.mean, rtol=0, atol=1e-6)
    assert torch.allclose(one.std, a.std, rtol=0, atol=1e-6)
    assert a.z.shape == (1, 3, len(times), 20 + 20 * 2)
    assert torch.all(a.std[:, 1:] > 0)
    write_vtk(tmp_path / "forecast.pvd", model, a, truth, frames=3)
    frames = re.findall(r'timestep="([^"]+)"', (tmp_path / "forecast.pvd").read_text())
    expected = times[np.linspace(0, len(times) - 1, 3).round().astype(int)]
    assert np.allclose([float(t) for t in frames], expected, rtol=0, atol=1e-12)


def test_a_local_decoder_warm_started_from_a_shared_one_is_fitted_to_the_trained_encoder(kdv, tmp_path):
    """Warm start (no optimiser step: zero learning rate) of a local-decoder model from a
    shared-decoder run: the encoder is the run's, and the decoder's local weights are fitted to
    the encoded state, the auxiliary channel included."""
    shared = fit(kdv, tmp_path / "shared", ModelConfig("kdv", n_latent=1), tiny(steps=2, validate_every=0),
                 progress=False)
    local = fit(kdv, tmp_path / "local", ModelConfig("kdv", n_latent=1, local_decoder=True),
                tiny(steps=1, lr=0.0, validate_every=0), warm_start=shared, progress=False)
    before, after = MultiscaleModel.load(shared), MultiscaleModel.load(local)
    for p, q in zip(before.encoder.parameters(), after.encoder.parameters()):
        assert torch.equal(p, q)
    values = after.decoder.field.values                                            # (E, 1, 1 + n_h)
    assert values[..., 0].abs().max() > 0 and values[..., 1].abs().max() > 0


def test_command_line_trains_and_forecasts(kdv, tmp_path, capsys):
    from firedrake_msm.cli import main
    run = tmp_path / "run"
    assert main(["train", str(kdv), "--n-latent", "1", "--steps", "2", "--batch-size", "2", "--window",
                 "8", "--validate-every", "0", "--checkpoint-every", "2", "--output", str(run)]) == 0
    assert (run / "checkpoint.pt").exists() and "trained in" in capsys.readouterr().out
    vtk = tmp_path / "forecast.pvd"
    assert main(["forecast", str(run / "checkpoint.pt"), "--samples", "2", "--vtk", str(vtk)]) == 0
    out = capsys.readouterr().out
    assert "relative L2 error over 1 test trajectories" in out and vtk.exists()
