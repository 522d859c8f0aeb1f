r"""Your own PDE, end to end
=========================

A PDE that firedrake-msm does not ship: advection-diffusion past two absorbing holes in a channel,
on a Gmsh mesh with named boundaries, with a Robin term on the holes in its residual
(``demos/advection_diffusion.py``, the user's own file). The fine data come from our own Irksome
loop, recorded with :class:`~firedrake_msm.Recorder`; a comparison then trains the implicit-scale
and multiscale models on the coarse mesh and runs the under-resolved simulation and Smagorinsky
LES beside them; last, the multiscale model is loaded from its checkpoint alone and forecasts to
Firedrake Functions.

Run it with ``python demos/your_own_pde.py`` (real sizes: 30 trajectories, a few thousand
training steps) or with ``--fast`` (tiny sizes, for the tests). Nothing here is special to the
package: the same lines serve any ``Problem`` subclass.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
from advection_diffusion import AdvectionDiffusion
from firedrake import COMM_SELF, Constant, Function, TestFunction, VTKFile
from irksome import TimeStepper

import firedrake_msm as msm

parser = argparse.ArgumentParser(description="A PDE of one's own, from recorded data to a comparison.")
parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests only")
parser.add_argument("--output", type=Path, help="folder for data/, runs/ and results/ (default: the current "
                    "folder; a temporary one with --fast)")
args = parser.parse_args()
root = args.output or (Path(tempfile.mkdtemp(prefix="own-")) if args.fast else Path("."))
data, runs, results = (root / name / ("fast" if args.fast else "") for name in ("data", "runs", "results"))
for folder in (data, runs, results):
    folder.mkdir(parents=True, exist_ok=True)

# The problem is a class of our own; its constructor's keywords (here the defaults) are recorded,
# so that every process that needs it rebuilds it from the file's path.
problem = AdvectionDiffusion()
print(f"{type(problem).__name__}{problem.options}: named {msm.reference(problem)[0]}")

# Our own fine simulation: Irksome's implicit midpoint rule on the fine mesh, with the problem's
# own residual (cell terms and the Robin term on the holes) and inflow condition. The Recorder
# stores each snapshot as we go; the dataset appears when the ``with`` block completes.
trajectories, steps = (4, 10) if args.fast else (problem.trajectories, round(problem.t_end / problem.dt))
dataset = data / "advection_diffusion.h5"
if not dataset.exists():
    mesh = problem.mesh("fine", comm=COMM_SELF)
    V = problem.function_space(mesh)
    c, v = Function(V), TestFunction(V)
    t, dt = Constant(0.0), Constant(problem.dt)
    linear = {"snes_type": "ksponly", "ksp_type": "preonly", "pc_type": "lu"}     # the PDE is linear
    stepper = TimeStepper(problem.time_derivative(c, v) + problem.residual(c, v), problem.scheme, t, dt, c,
                          bcs=problem.bcs(V), solver_parameters=linear)
    rng = np.random.default_rng(0)
    with msm.Recorder(dataset, V, problem=problem) as recorder:
        for k in range(trajectories):
            draw = problem.draw(rng)
            problem.set_initial_state(c, {name: Constant(value) for name, value in draw.items()})
            recorder.set_parameters(k, draw)
            for step in range(steps + 1):
                if step:
                    stepper.advance()
                    t.assign(step * problem.dt)
                recorder.write(c, step * problem.dt, trajectory=k)
print(f"fine data: {dataset}")

# What the comparison runs: a protocol, the TOML file beside this demo. It names the problem by
# its file and says how long to train; everything else keeps the defaults of ``ModelConfig`` and
# ``TrainConfig``, as for a problem nobody tuned for. ``firedrake-msm compare
# demos/advection_diffusion.toml --dataset data/advection_diffusion.h5`` runs the same.
protocol = msm.Protocol.load(Path(__file__).resolve().parent / "advection_diffusion.toml")
protocol.dataset = dataset
if args.fast:
    protocol = protocol.fast()
# One worker runs the two trainings one after the other in this process; with more, they run side
# by side in spawned processes, which import this script again (it would then keep its work under
# ``if __name__ == "__main__":``).
summary = msm.compare(protocol, folder=results, runs=runs, progress=not args.fast, workers=1)
print((results / protocol.name / "table.md").read_text())

# The multiscale model needs nothing but its checkpoint: the meshes are inside it. It forecasts
# from a fine Function (here the first test snapshot) and hands back Functions on the fine mesh.
model = msm.MultiscaleModel.load(runs / f"{protocol.name}-n{protocol.model['n_latent']}" / "best.pt")
times, truth = msm.load_trajectories(dataset, **msm.splits(dataset)["test"])
first = Function(model.transfer.V_fine)
first.dat.data[:] = truth[0, 0]
result = msm.forecast(model, first, times, samples=protocol.samples, seed=0)
mean, spread = result.function(-1), result.function(-1, field="std")
truth_end = Function(model.transfer.V_fine, name="truth")
truth_end.dat.data[:] = truth[0, -1]
VTKFile(str(results / protocol.name / "final.pvd")).write(truth_end, mean, spread)
error = np.linalg.norm(mean.dat.data_ro - truth[0, -1]) / np.linalg.norm(truth[0, -1])
print(f"multiscale forecast of the first test trajectory at t = {times[-1]:g}: relative L2 error {error:.3f}")
