"""A PDE the package does not ship, defined in a file of the user's own, end to end: data from
``simulate`` or from the user's own time loop, training, a forecast from the checkpoint alone in
a fresh process, and the comparison, from the command line and from Python, with no edit of and
no registration call into the package."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from firedrake import COMM_SELF, Constant, Function, TestFunction
from irksome import TimeStepper

import firedrake_msm as msm
from firedrake_msm.compare import METHODS

HEAT = textwrap.dedent('''
    """Advection-diffusion on a periodic interval: a problem of the user's own."""
    from firedrake import COMM_WORLD, FunctionSpace, PeriodicIntervalMesh, cos, dx, pi, sin

    import firedrake_msm as msm


    class Heat(msm.Problem):
        t_end, dt = 0.1, 0.01
        parameter_names = ("a",)
        fine, coarse = 48, 8
        trajectories = 6
        lu = "petsc"

        def __init__(self, nu=0.01, speed=1.0):
            self.nu, self.speed = nu, speed

        def mesh(self, resolution, comm=COMM_WORLD):
            return PeriodicIntervalMesh(resolution, 1.0, comm=comm)

        def function_space(self, mesh):
            return FunctionSpace(mesh, "CG", 1)

        def residual(self, u, v):
            return (self.speed * u.dx(0) * v + self.nu * u.dx(0) * v.dx(0)) * dx

        def draw(self, rng):
            return {"a": rng.uniform(0.5, 1.5)}

        def initial_condition(self, x, p):
            return p["a"] * sin(2 * pi * x[0]) + 0.3 * cos(6 * pi * x[0])
''')

TINY = dict(steps=2, batch_size=2, window=4, beta_warmup=2, residual_times=2, validate_every=2,
            checkpoint_every=2, validation_samples=2)


@pytest.fixture(scope="module")
def heat(tmp_path_factory):
    """The problem's file and its import path."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "heat.py").write_text(HEAT)
    return folder, f"{folder / 'heat.py'}:Heat"


def cli(*args, cwd):
    """``firedrake-msm`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-m", "firedrake_msm.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_problems_are_found_by_name_import_path_and_file(heat):
    folder, path = heat
    assert isinstance(msm.resolve("kdv"), msm.problems.KdV)
    assert isinstance(msm.resolve("firedrake_msm.problems.kdv:KdV"), msm.problems.KdV)
    problem = msm.resolve(path, {"nu": 0.02})
    assert problem.nu == 0.02 and problem.options == {"nu": 0.02} and problem.name == "heat"
    name, options = msm.reference(problem)
    assert name == path and options == {"nu": 0.02}
    assert type(msm.resolve(name, options)) is type(problem)      # loaded once per process
    assert msm.reference(msm.problems.KdV()) == ("kdv", {})
    with pytest.raises(msm.ProblemNotFound, match="no problem named 'heet'.*registered problems are "
                                                  "burgers2d, cylinder, kdv, pulse"):
        msm.resolve("heet")
    with pytest.raises(msm.ProblemNotFound, match=r"no problem file at .*nowhere\.py"):
        msm.resolve(f"{folder}/nowhere.py:Heat")
    with pytest.raises(msm.ProblemNotFound, match=r"heat\.py has no 'Hot'"):
        msm.resolve(f"{path.rpartition(':')[0]}:Hot")
    with pytest.raises(msm.ProblemNotFound, match="cannot import module 'no_such_package.problems'"):
        msm.resolve("no_such_package.problems:Heat")
    with pytest.raises(TypeError, match="options {'mu': 1} do not fit Heat"):
        msm.resolve(path, {"mu": 1})
    with pytest.raises(TypeError, match="not a subclass of firedrake_msm.Problem"):
        msm.resolve("firedrake_msm.model:ModelConfig")
    (folder / "broken.py").write_text("import no_such_module\n")
    with pytest.raises(msm.ProblemNotFound, match="problem file .*broken.py: ModuleNotFoundError"):
        msm.resolve(f"{folder}/broken.py:Heat")


def test_from_the_command_line_with_the_dataset_gone(heat, tmp_path):
    """dns, train and compare name the problem by its file; forecast needs only the checkpoint
    (and test data of the same mesh): the training dataset is deleted first."""
    _, path = heat
    cli("dns", path, "--trajectories", "4", "--problem-options", '{"nu": 0.02}', "--output", "train.h5",
        cwd=tmp_path)
    with msm.data.open_dataset(tmp_path / "train.h5") as group:
        assert group.attrs["problem"] == path and json.loads(group.attrs["problem_options"]) == {"nu": 0.02}
    cli("train", "train.h5", "--n-latent", "1", "--output", "run", *_flags(TINY), cwd=tmp_path)
    (tmp_path / "train.h5").rename(tmp_path / "test.h5")
    out = cli("forecast", "run/best.pt", "--dataset", "test.h5", "--samples", "2", cwd=tmp_path)
    assert "relative L2 error over 1 test trajectories x 11 times" in out
    out = cli("compare", path, "--fast", cwd=tmp_path)
    summary = json.loads((tmp_path / "results" / "fast" / "heat" / "summary.json").read_text())
    assert summary["problem"] == path and set(summary["methods"]) == set(METHODS)
    assert "multiscale" in out


def test_from_the_users_own_time_loop_in_python(heat, tmp_path):
    """A Recorder inside the user's own Irksome loop makes the dataset; the model saved in one
    process forecasts in another, to Functions, after the dataset is deleted."""
    _, path = heat
    problem = msm.resolve(path)
    mesh = problem.mesh(problem.fine, comm=COMM_SELF)
    V = problem.function_space(mesh)
    u, t, dt = Function(V), Constant(0.0), Constant(0.01)
    v = TestFunction(V)
    stepper = TimeStepper(problem.time_derivative(u, v) + problem.residual(u, v), problem.scheme, t, dt, u)
    data = tmp_path / "mine.h5"
    with msm.Recorder(data, V, problem=problem) as recorder:
        for k, a in enumerate((0.6, 0.8, 1.0, 1.2)):
            problem.set_initial_state(u, {"a": Constant(a)})
            recorder.set_parameters(k, {"a": a})
            for step in range(11):
                if step:
                    stepper.advance()
                recorder.write(u, 0.01 * step, trajectory=k)
    assert not (tmp_path / "mine.h5.partial").exists()
    times, snapshots = msm.data.load_trajectories(data)
    assert snapshots.shape == (4, 11, 48) and np.allclose(times, 0.01 * np.arange(11))

    best = msm.fit(data, tmp_path / "run", msm.ModelConfig(n_latent=1, width=8, features=4),
                   msm.TrainConfig(**TINY), progress=False)
    model = msm.MultiscaleModel.load(best)
    initial = Function(model.transfer.V_fine).assign(1.0)
    expected = msm.forecast(model, [initial], times, samples=3, seed=2).mean
    data.unlink()
    script = textwrap.dedent(f'''
        import numpy as np
        import torch
        from firedrake import CheckpointFile, Function
        import firedrake_msm as msm
        model = msm.MultiscaleModel.load({str(best)!r})
        initial = Function(model.transfer.V_fine).assign(1.0)
        result = msm.forecast(model, initial, {times.tolist()!r}, samples=3, seed=2, members=True)
        mean = result.function(-1)
        assert mean.function_space() is model.transfer.V_fine
        result.save({str(tmp_path / "forecast.h5")!r})
        with CheckpointFile({str(tmp_path / "forecast.h5")!r}, "r") as f:
            back = f.load_function(f.load_mesh(), "mean", idx=len(result.times) - 1)
            assert np.allclose(back.dat.data_ro, mean.dat.data_ro, rtol=0, atol=1e-15)
            assert np.allclose(f.get_attr("/", "times"), result.times)
        torch.save(result.mean, {str(tmp_path / "mean.pt")!r})
        print(type(model.problem).__name__, result.members.shape)
    ''')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Heat torch.Size([1, 3, 11, 48])" in run.stdout
    assert torch.equal(torch.load(tmp_path / "mean.pt", weights_only=True), expected)


def _flags(settings):
    return [item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", str(value))]
