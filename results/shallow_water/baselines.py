"""The radial dam break's coarse baselines on the real-size data, as `compare` runs them.

    python results/shallow_water/baselines.py data/shallow_water.h5

Restricts with the models' transfer (the filtered L2 projection, width 0.41 of the coarse cell),
forecasts each test trajectory from its first restricted snapshot on the 8² cells (the coarse
DNS; DMD and POD-SINDy fitted on the training trajectories' restrictions, at their default
ranks and at a few lower ones), prolongs, and prints the relative L2 error (mean ± std over
every test time) of the whole state (eta, hu, hv), of eta alone, and of the depth h = 1 + eta;
beside them, what the restriction alone loses and what still water (h = 1) scores.
"""
import sys

import numpy as np
import torch
from firedrake import COMM_SELF

from firedrake_msm.baselines import CoarseSolver
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.metrics import relative_l2, summary
from firedrake_msm.problems import ShallowWater
from firedrake_msm.reduced import fit_dmd, fit_pod_sindy
from firedrake_msm.transfer import Transfer, cell_width

path = sys.argv[1]
problem = ShallowWater()
V_fine, _ = load_space(path)
mesh = problem.mesh(problem.coarse, comm=COMM_SELF)
transfer = Transfer(V_fine, problem.function_space(mesh), filter_width=0.41 * cell_width(mesh))
times, truth = load_trajectories(path, **splits(path)["test"])


def restrict(fine):
    return transfer.restrict(torch.as_tensor(fine.reshape(-1, fine.shape[-1]))).numpy().reshape(
        *fine.shape[:-1], -1)


def prolong(coarse):
    return transfer.prolong(torch.as_tensor(coarse.reshape(-1, coarse.shape[-1]))).numpy().reshape(
        truth.shape)


def report(name, mean):
    eta, eta_truth = mean[..., 0::3], truth[..., 0::3]
    print(f"{name:28s} (eta, hu, hv) %.3f ± %.3f   eta %.3f ± %.3f   h %.3f ± %.3f" % (
        *summary(relative_l2(truth, mean)), *summary(relative_l2(eta_truth, eta)),
        *summary(relative_l2(eta_truth + problem.depth, eta + problem.depth))))


start = restrict(truth[:, 0])
print(f"{truth.shape[0]} test trajectories, {len(times)} times each")
report("restriction alone, P R y", prolong(restrict(truth)))
report("still water", np.zeros_like(truth))
solver = CoarseSolver(problem, problem.function_space(mesh))
report("coarse DNS", prolong(np.stack([solver.forecast(u0, times).states for u0 in start])))
train = splits(path)["train"]["trajectories"]
coarse = np.concatenate([restrict(load_trajectories(path, trajectories=[k])[1]) for k in train])
train_times = times - times[0]
for fit, settings in [(fit_dmd, {}), *[(fit_dmd, {"svd_rank": r}) for r in (5, 10, 20)],
                      (fit_pod_sindy, {}), *[(fit_pod_sindy, {"rank": r}) for r in (2, 3)]]:
    fitted = fit(coarse, train_times, **settings)
    name = f"{fit.__name__[4:]} rank {fitted.rank}" + ("" if settings else " (default)")
    report(name, prolong(np.stack([fitted.forecast(u0, times) for u0 in start])))
