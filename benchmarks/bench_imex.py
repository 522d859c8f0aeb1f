"""Benchmark: IMEX forecasts at and below the output interval against SRA1 at its stable step.

The cylinder's coarse model (Taylor-Hood on the coarse mesh, 5 auxiliary channels, the pressure
eliminated), untrained but calibrated to the initial flow, forecasts from the uniform flow with
the problem's symmetry-breaking swirl, in float64 on the CPU:

- srk: torchsde's SRA1 at the problem's ``forecast_dt`` (0.002), the step its small cells near
  the cylinder allow;
- imex: ARS(2,2,2) (:mod:`firedrake_msm.integrators`) at the output interval (0.01) and at half
  of it, the coarse physics and the auxiliary damping implicit
  (:func:`~firedrake_msm.integrators.multiscale_operator`: the physics' Jacobian by autograd and
  its LU, timed apart as the setup); the closure explicit.

Accuracy: without noise (2 members), the relative error at the horizon of each run against
SRA1 at a quarter of its step, for u (relative to u's change over the horizon) and for h.
Cost: 64 members with the model's noise, wall time of each forecast and the ratios of SRA1's to
IMEX's, with and without IMEX's setup. The model is built on the coarse mesh alone (its "fine"
space is the coarse velocity space), so that the time is the SDE's, not the decoder's. All is
measured side by side in this one process.

Usage: python benchmarks/bench_imex.py [--horizon 0.1] [--samples 64]
The last line is a JSON summary.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from firedrake import COMM_SELF, CheckpointFile, Function

from firedrake_msm.forecast import fine_states, forecast
from firedrake_msm.integrators import multiscale_operator
from firedrake_msm.model import ModelConfig, MultiscaleModel
from firedrake_msm.problems import Cylinder


def coarse_model(problem, folder):
    """An untrained model of ``problem`` whose data space is its coarse velocity space,
    calibrated to the initial flow, and that flow ``(1, N_u)``."""
    mesh = problem.mesh(problem.coarse, comm=COMM_SELF)
    state = Function(problem.function_space(mesh))
    problem.set_initial_state(state, problem.draw(np.random.default_rng(0)))
    for bc in problem.bcs(state.function_space()):
        bc.apply(state)
    V = state.function_space().sub(0).collapse()
    path = Path(folder) / "initial.h5"
    with CheckpointFile(str(path), "w", comm=COMM_SELF) as f:
        f.save_mesh(mesh)
        index = Function(V, name="dof_index")
        index.dat.data[:] = np.arange(V.dim()).reshape(index.dat.data_ro.shape)
        f.save_function(index)
    with h5py.File(path, "a") as f:
        f["msm/snapshots"] = np.zeros((1, 1, V.dim()))
        f["msm/times"] = [0.0]
    torch.manual_seed(0)
    model = MultiscaleModel.build(path, ModelConfig(problem), mesh=mesh).double().eval()
    velocity = Function(V)
    velocity.dat.data[:] = state.subfunctions[0].dat.data_ro
    initial = fine_states(model, [velocity])
    model.calibrate(initial)
    return model, initial


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=float, default=0.1, help="simulated time of each forecast")
    parser.add_argument("--samples", type=int, default=64, help="ensemble members")
    args = parser.parse_args()
    problem = Cylinder()
    with tempfile.TemporaryDirectory() as folder:
        model, initial = coarse_model(problem, folder)
    sde = model.sde
    times = np.linspace(0.0, args.horizon, round(args.horizon / problem.dt) + 1)
    runs = [("srk", problem.forecast_dt), ("imex", problem.dt), ("imex", problem.dt / 2)]
    print(f"cylinder, coarse: N_u = {sde.n_u}, D = {sde.size}, horizon {args.horizon:g}, "
          f"output interval {problem.dt:g}")

    raw_sigma = sde.raw_sigma.detach().clone()
    with torch.no_grad():
        sde.raw_sigma.fill_(-60.0)                    # softplus: no noise
    paths = {key: forecast(model, initial, times, samples=2, dt=key[1], method=key[0]).z
             for key in [("srk", problem.forecast_dt / 4), *runs]}
    with torch.no_grad():
        sde.raw_sigma.copy_(raw_sigma)
    reference = paths.pop(("srk", problem.forecast_dt / 4))
    n_u, end = sde.n_u, reference[:, :, -1]
    change = float((end[..., :n_u] - reference[:, :, 0, :n_u]).norm())

    def errors(z):
        difference = z[:, :, -1] - end
        return (float(difference[..., :n_u].norm()) / change,
                float(difference[..., n_u:].norm() / end[..., n_u:].norm()))

    z0 = model.encode(initial)[0].detach()[0]
    _, setup = timed(lambda: multiscale_operator(sde, 0.0, z0).shifted_inverse(0.5 * problem.dt)(z0[None]))
    print(f"imex setup (physics' Jacobian, LU): {setup:.2f} s")
    print(f"{'method':>6} {'dt':>7} {'error u':>9} {'error h':>9} {'seconds':>8} {'srk/this':>9} "
          f"{'w/o setup':>9}")
    summary = {"N_u": sde.n_u, "D": sde.size, "samples": args.samples, "horizon": args.horizon,
               "setup_s": setup}
    seconds = {}
    for method, dt in runs:
        result, seconds[method, dt] = timed(lambda: forecast(model, initial, times, samples=args.samples,
                                                             dt=dt, method=method))
        if not torch.isfinite(result.z).all():
            raise RuntimeError(f"{method} at dt {dt:g} is not finite")
        e_u, e_h = errors(paths[method, dt])
        ratio = seconds[runs[0]] / seconds[method, dt]
        beyond = seconds[runs[0]] / (seconds[method, dt] - setup) if method == "imex" else 1.0
        print(f"{method:>6} {dt:>7g} {e_u:>9.2e} {e_h:>9.2e} {seconds[method, dt]:>8.1f} {ratio:>9.2f} "
              f"{beyond:>9.2f}")
        summary[f"{method}@{dt:g}"] = {"error_u": e_u, "error_h": e_h, "seconds": seconds[method, dt],
                                       "ratio": ratio, "ratio_without_setup": beyond}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
