"""Benchmark: a trained model's ensemble forecast against the fine and the coarse DNS, per
simulated time unit.

In this one process, on one torch thread:

- the fine DNS: the problem's Irksome stepper on the dataset's fine mesh, at the dataset's step,
  timed over 20 steps after the first (as ``firedrake-msm compare`` times it);
- the under-resolved DNS on the model's coarse mesh over the test horizon, from the restricted
  first snapshot of the first test trajectory;
- the learned SDE's forecast of the test trajectories, ``--samples`` members each, with the
  model's own precision, at each step of ``--dt`` (default: the output interval and the
  problem's ``forecast_dt``): integrated and decoded to the fine mesh's ensemble mean and spread
  at every output time (the scoring apart), with the test error of the mean.

Costs are seconds per simulated time unit per trajectory, the ensemble's and one member's
(the ensemble's over the members), and the fine DNS's cost over each.

Usage: python benchmarks/bench_forecast.py DATASET CHECKPOINT [--samples 64] [--dt 0.001 0.01]
The last line is a JSON summary.
"""
import argparse
import json

import numpy as np
import torch

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.compare import fine_cost
from firedrake_msm.data import load_trajectories, splits
from firedrake_msm.forecast import forecast
from firedrake_msm.metrics import relative_l2
from firedrake_msm.model import MultiscaleModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=64, help="ensemble members")
    parser.add_argument("--dt", type=float, nargs="*",
                        help="forecast steps (default: the output interval and the problem's forecast_dt)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = MultiscaleModel.load(args.checkpoint)
    problem = model.problem
    times, truth = load_trajectories(args.dataset, **splits(args.dataset)["test"])
    interval = float(times[1] - times[0])
    steps = sorted(set(args.dt or [interval, problem.forecast_dt or interval]))
    horizon = float(times[-1] - times[0])

    fine = fine_cost(problem, model.transfer.V_fine.mesh(), args.dataset, interval)
    coarse = CoarseSolver(problem, model.state.function_space())
    u0 = model.transfer.restrict(torch.as_tensor(truth[:1, 0]).to(model.transfer.cholesky.dtype))
    coarse_cost = coarse.forecast(u0[0].double().numpy(), times).seconds_per_unit_time
    rows = [{"run": "fine DNS", "seconds": fine}, {"run": "coarse DNS", "seconds": coarse_cost}]
    forecast(model, torch.as_tensor(truth[:, 0]), times[:3], samples=args.samples)       # warm-up
    for dt in steps:
        result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=args.samples, dt=dt)
        error = relative_l2(truth, result.mean.double().numpy())
        rows.append({"run": f"learned, {args.samples} members, dt {dt:g}",
                     "seconds": result.seconds / horizon / truth.shape[0],
                     "rel_l2": float(np.mean(error)), "rel_l2_std": float(np.std(error)), "dt": dt})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"{problem.name}: fine {model.transfer.V_fine.dim()} -> coarse {model.V.dim()} dofs, "
          f"{truth.shape[0]} test trajectories, output interval {interval:g}, model in {dtype}")
    print("| run | s / unit time | fine DNS / run | per member: fine DNS / member | rel. L2 |")
    print("|---|---|---|---|---|")
    for row in rows:
        learned = "dt" in row
        row["fine_over_run"] = fine / row["seconds"]
        row["fine_over_member"] = fine / (row["seconds"] / args.samples) if learned else None
        member = f"{row['fine_over_member']:.0f}" if learned else ""
        error = f"{row['rel_l2']:.4f} ± {row['rel_l2_std']:.4f}" if learned else ""
        print(f"| {row['run']} | {row['seconds']:.3g} | {row['fine_over_run']:.2f} | {member} | {error} |")
    print(json.dumps({"case": problem.name, "samples": args.samples, "dtype": dtype, "rows": rows}))


if __name__ == "__main__":
    main()
