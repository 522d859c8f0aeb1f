"""Where the coarse physics misses the data of demos/advection_diffusion.py, and by how much.

    python results/advection_diffusion/mismatch.py data/advection_diffusion.h5

The restricted data's rate dU/dt (central differences of R y) against the coarse physics drift
f(U) at the same states, over the validation trajectories: the share of the mismatch on each
marked part of the boundary, and on the holes its least-squares fit by a multiple of U.
"""
import sys

import numpy as np
import torch
from firedrake import DirichletBC

import firedrake_msm as msm

dataset = sys.argv[1]
model = msm.MultiscaleModel.build(dataset, msm.ModelConfig(n_latent=0)).double()
times, truth = msm.load_trajectories(dataset, **msm.splits(dataset)["validation"])
dt = times[1] - times[0]
U = model.transfer.restrict(torch.as_tensor(truth).reshape(-1, truth.shape[-1])).view(*truth.shape[:2], -1)
with torch.no_grad():
    rate = (U[:, 2:] - U[:, :-2]) / (2 * dt)
    physics = model.sde.physics(0.0, U[:, 1:-1].reshape(-1, U.shape[-1])).view(rate.shape)
mismatch = rate - physics
print(f"|dU/dt - f(U)| / |f(U)| = {float(mismatch.norm() / physics.norm()):.3f}")
names = model.problem.names
for name, marker in names.of_dimension(model.V.mesh().topological_dimension - 1).items():
    nodes = DirichletBC(model.V, 0.0, marker).nodes
    share = float((mismatch[..., nodes] ** 2).sum() / (mismatch ** 2).sum())
    print(f"{name:7s} {len(nodes):3d} of {model.V.dim()} nodes: {100 * share:5.1f} % of |mismatch|^2")
holes = DirichletBC(model.V, 0.0, names["holes"]).nodes
x, y = U[:, 1:-1][..., holes].numpy().ravel(), mismatch[..., holes].numpy().ravel()
k, *_ = np.linalg.lstsq(x[:, None], y, rcond=None)
r2 = 1 - ((y - k[0] * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()
print(f"on the holes: mismatch = {k[0]:.2f} U, R^2 = {r2:.2f}")
