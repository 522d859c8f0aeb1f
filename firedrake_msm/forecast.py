r"""Ensemble forecasts of a trained model (torchsde or IMEX), decoded to the fine and coarse meshes."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchsde
from firedrake import CheckpointFile, Function, VTKFile, assemble, interpolate
from firedrake.ml.pytorch import from_torch

from firedrake_msm.integrators import linearised_sdeint, multiscale_operator
from firedrake_msm.metrics import crps

# forecast()'s IMEX methods and their schemes in firedrake_msm.integrators.
IMEX = {"imex": "ars222", "imex-euler": "euler"}
# Decoded values held at once while forecasting (a float32 value is 4 bytes: 4 MiB): small
# enough that the reductions over members run in cache.
DECODED_VALUES = 2**20


@dataclass
class Forecast:
    """An ensemble of latent paths and its decoded statistics on the fine mesh.

    Attributes
    ----------
    times : numpy.ndarray
        ``(T,)`` output times.
    z : torch.Tensor
        ``(n, S, T, D)`` latent paths: ``n`` initial conditions, ``S`` samples each.
    mean, std : torch.Tensor
        ``(n, T, N_h)`` ensemble mean and spread of the decoded (PoE mean) fine fields.
    crps : numpy.ndarray or None
        ``(n, T)`` the ensemble's CRPS against the truth, when it was given.
    members : torch.Tensor or None
        ``(n, S, T, N_h)`` the decoded members, when asked for.
    space : firedrake.FunctionSpace or None
        The fine space of the decoded fields (:meth:`function` returns Functions of it).
    seconds : float or None
        Wall time of the forecast: the integration and the decoding, not the scoring against
        the truth.
    """
    times: np.ndarray
    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    crps: np.ndarray = None
    members: torch.Tensor = None
    space: object = None
    seconds: float = None

    def function(self, k=-1, *, trajectory=0, field="mean", member=None):
        """A decoded field at output time ``times[k]`` as a Firedrake Function of :attr:`space`.

        ``field``: ``"mean"`` or ``"std"`` (the ensemble's spread), or ``"member"`` with the
        member's index (when the forecast kept its :attr:`members`)."""
        if field == "member":
            if self.members is None:
                raise ValueError("this forecast kept no members: forecast(..., members=True)")
            values = self.members[trajectory, member, k]
        elif field in ("mean", "std"):
            values = getattr(self, field)[trajectory, k]
        else:
            raise ValueError(f"field must be 'mean', 'std' or 'member', not {field!r}")
        name = field if member is None else f"member {member}"
        return Function(self.space, name=name).assign(from_torch(values.detach().double().cpu(), self.space))

    def save(self, path, *, trajectory=0):
        """Write one trajectory's ensemble mean and spread at every output time to a Firedrake
        ``CheckpointFile`` (written under a temporary name and renamed): read them back with
        ``f.load_function(f.load_mesh(), "mean", idx=k)`` (and ``"std"``), ``k`` the output
        time's index; the times are the file's attribute ``times``."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        with CheckpointFile(str(partial), "w", comm=self.space.comm) as f:
            f.save_mesh(self.space.mesh())
            for k in range(len(self.times)):
                for field in ("mean", "std"):
                    f.save_function(self.function(k, trajectory=trajectory, field=field), idx=k)
            f.set_attr("/", "times", np.asarray(self.times, dtype=float))
        if self.space.comm.rank == 0:
            os.replace(partial, path)


@torch.no_grad()
def forecast(model, initial, times, *, samples=64, dt=None, seed=0, method="srk", truth=None, members=False):
    r"""Integrate the learned SDE from the posterior at the first snapshot.

    :math:`z_0 \sim N(\mu(y_0), \mathrm{diag}\,v)` from the encoder, then
    ``torchsde.sdeint`` (Itô, additive noise) or an IMEX scheme, with a seeded
    ``BrownianInterval``, so the same ``seed`` gives the same ensemble.

    Parameters
    ----------
    model : firedrake_msm.model.MultiscaleModel
    initial : torch.Tensor, firedrake.Function or sequence of Functions
        ``(n, N_h)`` first fine snapshots in the dof order of the model's fine space
        (``model.transfer.V_fine``), or Functions: of that space, or of another mesh of the
        same domain (interpolated onto it).
    times : numpy.ndarray
        ``(T,)`` output times, the first being the initial snapshot's.
    samples : int
        Ensemble members per initial condition.
    dt : float, optional
        Solver step. Default: for torchsde's schemes, the problem's ``forecast_dt``, the step
        their stability and accuracy need, shorter or longer than the output interval (outputs
        between steps are torchsde's linear interpolation); otherwise, and for the IMEX schemes
        (which step at most the output interval), the output interval.
    method : str
        torchsde's scheme: ``"srk"`` (default; SRA1, strong order 1.5 for additive noise, three
        drift evaluations a step; its Runge-Kutta stages keep learned drifts with large imaginary
        eigenvalues stable, where Euler's stability region holds no part of the imaginary axis)
        or ``"euler"`` (one evaluation). For stiff drifts (small cells, fast damping), an IMEX
        scheme of :mod:`firedrake_msm.integrators` with the stiff linear part implicit: the
        coarse physics linearised at the mean initial state, and the auxiliary channels'
        damping (:func:`~firedrake_msm.integrators.multiscale_operator`); the closure and the
        noise are explicit. ``"imex"`` (ARS(2,2,2), weak order 2, strong order 1, two drift
        evaluations a step) or ``"imex-euler"`` (semi-implicit Euler-Maruyama, order 1, one
        evaluation). Both take the physics' Jacobian by autograd and factorise a dense
        :math:`N_u \times N_u` matrix once per step size. A learned eddy diffusivity, explicit,
        can still limit the step on the smallest cells (``benchmarks/bench_imex.py``).
    truth : array_like, optional
        ``(n, T, N_h)`` fine snapshots at ``times``: score the ensemble against them (CRPS) while
        it is decoded.
    members : bool
        Keep every decoded member (:attr:`Forecast.members`: memory for ``n S T N_h`` values).
    """
    began = time.perf_counter()
    param = next(model.parameters())
    initial = fine_states(model, initial).to(param)
    n, S = initial.shape[0], samples
    generator = torch.Generator(device=param.device).manual_seed(seed)
    mean, log_var = model.encode(initial)
    mean = mean.repeat_interleave(S, dim=0)
    noise = torch.randn(mean.shape, generator=generator, device=param.device, dtype=param.dtype)
    z0 = mean + torch.exp(0.5 * log_var[model.sde.channel]) * noise
    # Absolute times: the drift reads them for time-dependent boundary data.
    ts = torch.as_tensor(times, dtype=torch.float64).to(dtype=param.dtype, device=param.device)
    interval = times[1] - times[0]
    dt = float(dt or (interval if method in IMEX else model.problem.forecast_dt or interval))
    bm = torchsde.BrownianInterval(t0=float(ts[0]), t1=float(ts[-1]), size=z0.shape, dtype=param.dtype,
                                   device=param.device, entropy=seed, dt=dt,
                                   levy_area_approximation="space-time" if method == "srk" else "none")
    if method in IMEX:
        operator = multiscale_operator(model.sde, float(ts[0]), z0.mean(0))
        z = linearised_sdeint(model.sde, z0, ts, bm, dt=dt, scheme=IMEX[method], operator=operator)
    else:
        # torchsde's shape check draws from the global generator: forked, a forecast (a
        # validation during training, say) leaves the caller's random stream as it was.
        with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
            z = torchsde.sdeint(model.sde, z0, ts, bm=bm, dt=dt, method=method)      # (T, n S, D)
    z = z.view(len(times), n, S, -1).permute(1, 2, 0, 3)
    # Decoded a few output times at once: the whole decoded ensemble would not fit in memory on
    # a fine mesh, and one time at a time pays the decoder's overhead T times.
    N_h = model.transfer.V_fine.dim()
    chunk = max(1, DECODED_VALUES // (n * S * N_h))
    means, spreads, scores, kept = [], [], [], []
    scored = 0.0
    truth = None if truth is None else np.asarray(truth)
    for k in range(0, len(times), chunk):
        decoded = model.decode(z[:, :, k:k + chunk])[0]                               # (n, S, K, N_h)
        mean, spread = moments(decoded)
        means.append(mean)
        spreads.append(spread)
        if truth is not None:
            scoring = time.perf_counter()
            ensemble = decoded.double().transpose(0, 1).cpu().numpy()
            scores.append(crps(ensemble, truth[:, k:k + chunk]))
            scored += time.perf_counter() - scoring
        if members:
            kept.append(decoded)
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)       # the wall time of the work, not of its launch
    return Forecast(np.asarray(times), z, torch.cat(means, dim=1), torch.cat(spreads, dim=1),
                    np.concatenate(scores, axis=1) if scores else None,
                    torch.cat(kept, dim=2) if members else None, model.transfer.V_fine,
                    time.perf_counter() - began - scored)


def moments(members):
    r"""The mean and standard deviation over the members of an ensemble ``(n, S, ...)``, each
    ``(n, ...)`` (the spread zero for one member).

    From the first two moments about the first member, :math:`\bar x = x_1 + \overline{d}`,
    :math:`s^2 = \frac{S}{S-1}(\overline{d^2} - \overline{d}^2)` with :math:`d = x - x_1`:
    a plain mean over the member axis is several times faster than ``torch.var`` (a Welford
    pass), and the shift keeps the difference of moments as accurate as the spread is small
    against the mean."""
    S = members.shape[1]
    shift = members[:, :1]
    d = members - shift
    mean_d = d.mean(1)
    if S == 1:
        return shift[:, 0], torch.zeros_like(mean_d)
    variance = (d.square().mean(1) - mean_d.square()).clamp_min(0) * (S / (S - 1))
    return shift[:, 0] + mean_d, variance.sqrt()


@torch.no_grad()
def diagnose(model, result):
    """Where and how an ensemble forecast blew up, in words (None when it did not).

    The first output time at which a member is not finite, or has grown past a thousand times
    the largest initial state, and the size of each part of the drift
    (:meth:`~firedrake_msm.model.MultiscaleSDE.parts`) at the last output time before it,
    against its size at the start: the part that grew is the one to look at.
    """
    z = result.z                                                                   # (n, S, T, D)
    scale = z[:, :, 0].abs().max()
    bad = ~torch.isfinite(z).all(dim=-1) | (z.abs().amax(dim=-1) > 1e3 * scale)    # (n, S, T)
    if not bad.any():
        return None
    k = int(bad.any(dim=0).any(dim=0).nonzero()[0])
    before = max(k - 1, 0)
    trajectory, member = (int(i) for i in bad[:, :, k].nonzero()[0])
    times = result.times
    start = model.sde.parts(float(times[0]), z[trajectory, member, 0][None])
    end = model.sde.parts(float(times[before]), z[trajectory, member, before][None])
    grown = ", ".join(f"{name} {float(start[name].norm()):.3g} -> {float(end[name].norm()):.3g}"
                      for name in start)
    return (f"the forecast of trajectory {trajectory} (member {member}) blew up between "
            f"t = {times[before]:g} and {times[k]:g}; the drift's parts from t = {times[0]:g} to "
            f"{times[before]:g}: {grown}")


def fine_states(model, initial):
    """``(n, N_h)`` fine states from a tensor or array, a Function or a sequence of Functions (see
    :func:`forecast`)."""
    V = model.transfer.V_fine
    functions = [initial] if isinstance(initial, Function) else initial
    if not (isinstance(functions, (list, tuple)) and functions and isinstance(functions[0], Function)):
        states = torch.as_tensor(initial)
        if states.ndim != 2 or states.shape[1] != V.dim():
            raise ValueError(f"initial states must be (n, {V.dim()}) for the model's fine space, not of "
                             f"shape {tuple(states.shape)}")
        return states
    rows = []
    for f in functions:
        if f.function_space() != V:
            if f.function_space().value_shape != V.value_shape:
                raise ValueError(f"an initial Function of {f.function_space()} has values of shape "
                                 f"{f.function_space().value_shape}; the model's fine space {V.value_shape}")
            f = assemble(interpolate(f, V))
        rows.append(torch.as_tensor(f.dat.data_ro.reshape(-1).copy()))
    return torch.stack(rows)


def write_vtk(path, model, result, truth, trajectory=0, frames=101):
    """A ParaView file of one forecast: truth, ensemble mean and spread on the fine mesh.

    ``truth``: ``(n, T, N_h)`` fine snapshots at ``result.times``; at most ``frames`` of them,
    evenly spaced, are written (each is a file, and Firedrake interpolates every field of it to
    the output space, so the cost grows with the frames, not with the forecast).
    """
    V = model.transfer.V_fine
    fields = {name: Function(V, name=name) for name in ("truth", "mean", "spread")}
    out = VTKFile(str(path))
    T = len(result.times)
    for k in np.unique(np.linspace(0, T - 1, min(frames, T)).round().astype(int)):
        for name, values in (("truth", truth[trajectory, k]), ("mean", result.mean[trajectory, k]),
                             ("spread", result.std[trajectory, k])):
            fields[name].assign(from_torch(torch.as_tensor(values).double().cpu(), V))
        out.write(*fields.values(), time=float(result.times[k]))
