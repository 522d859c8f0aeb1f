"""A model trained on one coarse mesh, forecasting on another (MultiscaleModel.on_mesh), against
a model trained on that mesh and the coarse baselines there.

    python results/cross_mesh/cross_mesh.py DATASET SOURCE TARGET OUT

SOURCE and TARGET are checkpoints of the same protocol trained on two coarse meshes of the data's
domain; the rows are relative L2 errors (mean ± std over the test trajectories and times) of the
64-member ensemble means, and of the baselines started from the same restriction, all on TARGET's
mesh. OUT/table.md and OUT/summary.json are written.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

import firedrake_msm as msm
from firedrake_msm.metrics import relative_l2, summary


def learned(model, times, truth):
    result = msm.forecast(model, torch.as_tensor(truth[:, 0]), times, samples=64, seed=0)
    return relative_l2(truth, result.mean.double().numpy())


def baseline(model, times, truth, closure):
    solver = msm.CoarseSolver(model.problem, model.state.function_space(), closure=closure)
    dtype = next(model.parameters()).dtype
    start = model.transfer.restrict(torch.as_tensor(truth[:, 0], dtype=dtype)).double().numpy()
    coarse = torch.as_tensor(np.stack([solver.forecast(u0, times).states for u0 in start]), dtype=dtype)
    fine = model.transfer.prolong(coarse.reshape(-1, coarse.shape[-1])).reshape(truth.shape)
    return relative_l2(truth, fine.double().numpy())


dataset, source, target, out = sys.argv[1:5]
out = Path(out)
times, truth = msm.load_trajectories(dataset, **msm.splits(dataset)["test"])
source, target = msm.MultiscaleModel.load(source), msm.MultiscaleModel.load(target)
mesh = target.state.function_space().mesh()
rows = {
    f"trained on {source.V.dim()} dofs, on its own mesh": learned(source, times, truth),
    f"trained on {source.V.dim()} dofs, moved to {target.V.dim()}": learned(source.on_mesh(mesh), times, truth),
    f"trained on {target.V.dim()} dofs": learned(target, times, truth),
    f"coarse DNS on {target.V.dim()} dofs": baseline(target, times, truth, None),
    f"Smagorinsky on {target.V.dim()} dofs": baseline(target, times, truth, "smagorinsky"),
}
table = {name: dict(zip(("rel_l2_mean", "rel_l2_std"), summary(errors))) for name, errors in rows.items()}
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps({"dataset": str(dataset), "methods": table}, indent=2))
lines = ["| model or baseline | rel. L2 (mean ± std) |", "|---|---|"]
lines += [f"| {name} | {m['rel_l2_mean']:.4f} ± {m['rel_l2_std']:.4f} |" for name, m in table.items()]
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
