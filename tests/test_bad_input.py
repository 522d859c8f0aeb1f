"""Bad input a user would meet: each gets an exception of the right type whose message names the
file or argument, and leaves no partial output behind."""
import json

import h5py
import numpy as np
import pytest
import torch
import ufl
from firedrake import (COMM_SELF, Function, FunctionSpace, PeriodicIntervalMesh, TestFunction, UnitSquareMesh,
                       VectorFunctionSpace, dP, dx)

import firedrake_msm as msm
from firedrake_msm.checkpoint import FORMAT
from firedrake_msm.data import SnapshotWindows, check_space, dataset_problem, open_dataset
from firedrake_msm.meshes import MESHES
from firedrake_msm.problems import AdvectedPulse, Cylinder

TINY = dict(steps=2, batch_size=2, window=4, beta_warmup=2, residual_times=2, validate_every=0,
            checkpoint_every=2)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A tiny pulse dataset and a model trained two steps on it."""
    folder = tmp_path_factory.mktemp("pulse")
    data = msm.simulate(AdvectedPulse(), folder / "pulse.h5", trajectories=4, resolution=40, dt=0.01,
                        t_end=0.1, progress=False)
    best = msm.fit(data, folder / "run", msm.ModelConfig(n_latent=1, width=8, features=4),
                   msm.TrainConfig(**TINY), progress=False)
    return data, best


def no_partial_files(folder):
    return not [p for p in folder.rglob("*") if ".partial" in p.name]


# ---------------------------------------------------------------------------------------- meshes

def test_missing_mesh_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no mesh file at {tmp_path}/nowhere.msh"):
        msm.load_mesh(tmp_path / "nowhere.msh")


def test_truncated_mesh_file(tmp_path):
    text = (MESHES / "unit_square.msh").read_text()
    (tmp_path / "cut.msh").write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=r"Firedrake could not read .*cut\.msh as a mesh"):
        msm.load_mesh(tmp_path / "cut.msh", comm=COMM_SELF)


def test_a_file_that_is_not_gmsh(tmp_path):
    (tmp_path / "notes.msh").write_text("these are my notes\n")
    with pytest.raises(ValueError, match=r"notes\.msh is not a Gmsh \.msh file"):
        msm.load_mesh(tmp_path / "notes.msh")


def test_geo_file_with_a_syntax_error_leaves_no_msh(tmp_path):
    (tmp_path / "bad.geo").write_text("Point(1) = {0, 0, 0, 0.1;\n")
    with pytest.raises(ValueError, match=r"gmsh could not mesh .*bad\.geo: .*syntax error"):
        msm.load_mesh(tmp_path / "bad.geo", comm=COMM_SELF)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.geo"]


def test_mesh_without_the_physical_names_a_problem_needs(monkeypatch):
    problem = Cylinder()
    monkeypatch.setattr(Cylinder, "names", msm.meshes.read_physical_names(MESHES / "unit_square.msh"))
    mesh = msm.load_mesh(MESHES / "unit_square.msh", comm=COMM_SELF)[0]
    words = r"no physical group named 'inlet' in .*unit_square\.msh; it has: bottom"
    with pytest.raises(KeyError, match=words):
        problem.bcs(problem.function_space(mesh))


# -------------------------------------------------------------------------------------- problems

def test_unknown_problem():
    with pytest.raises(msm.ProblemNotFound, match="no problem named 'kdvv'"):
        msm.simulate("kdvv", "x.h5", trajectories=1)


def test_protocol_file_with_a_syntax_error(tmp_path):
    (tmp_path / "mine.toml").write_text("problem = kdv\n")
    with pytest.raises(ValueError, match=r"mine\.toml is not valid TOML"):
        msm.Protocol.load(tmp_path / "mine.toml")


def test_protocol_with_an_unknown_training_setting(tmp_path):
    (tmp_path / "mine.toml").write_text('problem = "kdv"\n[train]\nstep = 10\n')
    with pytest.raises(ValueError, match=r"mine\.toml: \[train\] .*'step'"):
        msm.Protocol.load(tmp_path / "mine.toml")


# -------------------------------------------------------------------------------------- datasets

def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no dataset at {tmp_path}/gone.h5"):
        msm.fit(tmp_path / "gone.h5", tmp_path / "run", msm.ModelConfig("pulse"), progress=False)


def test_a_dataset_that_is_not_hdf5(tmp_path):
    (tmp_path / "data.h5").write_text("not HDF5")
    with pytest.raises(ValueError, match=r"data\.h5 is not a dataset: HDF5 cannot open it"):
        dataset_problem(tmp_path / "data.h5")


def test_an_hdf5_file_that_is_not_a_dataset(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"other\.h5 is an HDF5 file but not a firedrake-msm dataset"):
        with open_dataset(tmp_path / "other.h5"):
            pass


def test_a_dataset_of_another_mesh_than_the_models(pulse, tmp_path):
    other = msm.simulate(AdvectedPulse(), tmp_path / "other.h5", trajectories=3, resolution=30, dt=0.01,
                         t_end=0.05, progress=False)
    model = msm.MultiscaleModel.load(pulse[1])
    with pytest.raises(ValueError, match=r"other\.h5 holds data in .* with 30 dofs .* the model was trained "
                                         "on other data"):
        check_space(other, model.transfer.V_fine)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_data(pulse, tmp_path, value):
    data = tmp_path / "bad.h5"
    data.write_bytes(pulse[0].read_bytes())
    with h5py.File(data, "a") as f:
        f["msm/snapshots"][0, 3, 5] = value
    with pytest.raises(ValueError, match=r"bad\.h5 holds a value that is not finite in trajectory 0 at "
                                         "time 0.03"):
        windows = SnapshotWindows(data, window=11, trajectories=[0])
        windows[0]


def test_a_dataset_too_short_for_the_window(pulse, tmp_path):
    with pytest.raises(ValueError, match=r"windows of 64 snapshots do not fit in the 11 times of .*pulse"):
        msm.fit(pulse[0], tmp_path / "run", msm.ModelConfig(n_latent=1),
                msm.TrainConfig(**{**TINY, "window": 64}), progress=False)


def test_a_dataset_that_names_no_problem(pulse, tmp_path):
    data = tmp_path / "anonymous.h5"
    data.write_bytes(pulse[0].read_bytes())
    with h5py.File(data, "a") as f:
        f["msm"].attrs["problem"] = ""
    with pytest.raises(ValueError, match=r"anonymous\.h5 names no problem .* ModelConfig\(problem=\.\.\.\)"):
        msm.MultiscaleModel.build(data)


def test_fine_and_coarse_meshes_of_different_dimension(pulse):
    with pytest.raises(ValueError, match="the coarse mesh is 2D and the data's fine mesh 1D"):
        msm.MultiscaleModel.build(pulse[0], mesh=UnitSquareMesh(2, 2, comm=COMM_SELF))


# ------------------------------------------------------------------------------------ recorder

@pytest.fixture
def space():
    return FunctionSpace(PeriodicIntervalMesh(8, 1.0, comm=COMM_SELF), "CG", 1)


def test_recorder_into_a_missing_folder(tmp_path, space):
    with pytest.raises(FileNotFoundError, match=f"no folder {tmp_path}/nowhere to write the dataset d.h5"):
        msm.Recorder(tmp_path / "nowhere" / "d.h5", space)


def test_recorder_given_a_snapshot_of_another_space(tmp_path, space):
    other = VectorFunctionSpace(space.mesh(), "CG", 1)
    with pytest.raises(ValueError, match="not in the recorder's space"):
        with msm.Recorder(tmp_path / "d.h5", space) as recorder:
            recorder.write(Function(other), 0.0)
    assert list(tmp_path.iterdir()) == []


def test_recorder_times_must_agree_between_trajectories(tmp_path, space):
    u = Function(space)
    with pytest.raises(ValueError, match="trajectory 1 written at time 0.5 where trajectory 0 has time 0.1"):
        with msm.Recorder(tmp_path / "d.h5", space) as recorder:
            for t in (0.0, 0.1):
                recorder.write(u, t, trajectory=0)
            recorder.write(u, 0.0, trajectory=1)
            recorder.write(u, 0.5, trajectory=1)
    assert list(tmp_path.iterdir()) == []


def test_recorder_trajectories_in_order(tmp_path, space):
    u = Function(space)
    with pytest.raises(ValueError, match="trajectory 2 written after trajectory 0"):
        with msm.Recorder(tmp_path / "d.h5", space) as recorder:
            recorder.write(u, 0.0, trajectory=0)
            recorder.write(u, 0.0, trajectory=2)
    with pytest.raises(ValueError, match="time 0.0 written after 0.1: times must increase"):
        with msm.Recorder(tmp_path / "d.h5", space) as recorder:
            recorder.write(u, 0.1)
            recorder.write(u, 0.0)
    assert list(tmp_path.iterdir()) == []


def test_recorder_refuses_a_blown_up_snapshot(tmp_path, space):
    u = Function(space)
    u.dat.data[3] = np.nan
    with pytest.raises(ValueError, match="the snapshot of trajectory 0 at time 0 is not finite"):
        with msm.Recorder(tmp_path / "d.h5", space) as recorder:
            recorder.write(u, 0.0)
    assert list(tmp_path.iterdir()) == []


def test_a_recorder_that_wrote_nothing(tmp_path, space):
    with pytest.raises(ValueError, match=r"d\.h5: no snapshot was written"):
        with msm.Recorder(tmp_path / "d.h5", space):
            pass


# ---------------------------------------------------------------------------------- checkpoints

def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path}/best.pt"):
        msm.MultiscaleModel.load(tmp_path / "best.pt")


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(msm.CheckpointError, match=r"best\.pt is not a readable firedrake-msm checkpoint"):
        msm.MultiscaleModel.load(tmp_path / "best.pt")


def test_truncated_checkpoint(pulse, tmp_path):
    data = pulse[1].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 3])
    with pytest.raises(msm.CheckpointError, match=r"cut\.pt is not a readable firedrake-msm checkpoint"):
        msm.MultiscaleModel.load(tmp_path / "cut.pt")


def test_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "resnet.pt")
    with pytest.raises(msm.CheckpointError, match=r"resnet\.pt is a torch file but not a firedrake-msm"):
        msm.MultiscaleModel.load(tmp_path / "resnet.pt")


def test_checkpoint_of_another_version(pulse, tmp_path):
    contents = torch.load(pulse[1], weights_only=True)
    contents["format"] = FORMAT - 1
    torch.save(contents, tmp_path / "old.pt")
    with pytest.raises(msm.CheckpointError, match=rf"old\.pt is a checkpoint of format {FORMAT - 1}; this "
                                                  rf"version of firedrake-msm reads format {FORMAT}"):
        msm.MultiscaleModel.load(tmp_path / "old.pt")


def test_checkpoint_whose_problem_cannot_be_imported(pulse, tmp_path):
    contents = torch.load(pulse[1], weights_only=True)
    contents["model_config"]["problem"] = f"{tmp_path}/moved.py:Heat"
    torch.save(contents, tmp_path / "moved.pt")
    with pytest.raises(msm.ProblemNotFound, match=r"no problem file at .*moved\.py"):
        msm.MultiscaleModel.load(tmp_path / "moved.pt")


def test_resume_with_other_settings(pulse, tmp_path):
    run = tmp_path / "run"
    msm.fit(pulse[0], run, msm.ModelConfig(n_latent=1, width=8, features=4), msm.TrainConfig(**TINY),
            progress=False)
    with pytest.raises(ValueError, match="the run to resume was trained with n_latent=1, width=8, "
                                         "features=4, not n_latent=2, width=64, features=16"):
        msm.fit(pulse[0], run, msm.ModelConfig(n_latent=2), msm.TrainConfig(**{**TINY, "steps": 4}),
                resume=True, progress=False)


# ---------------------------------------------------------------------------- settings and forms

@pytest.mark.parametrize("settings, words", [
    ({"steps": 0}, "TrainConfig.steps must be at least 1, not 0"),
    ({"batch_size": -2}, "TrainConfig.batch_size must be at least 1, not -2"),
    ({"dtype": "float16"}, "TrainConfig.dtype must be 'float32' or 'float64', not 'float16'"),
    ({"device": "cuda:7" if not torch.cuda.is_available() else "banana"},
     "TrainConfig.device .* is not available"),
])
def test_training_settings_that_cannot_train(pulse, tmp_path, settings, words):
    with pytest.raises(ValueError, match=words):
        msm.fit(pulse[0], tmp_path / "run", msm.ModelConfig(n_latent=1),
                msm.TrainConfig(**{**TINY, **settings}), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("settings, words", [
    ({"n_latent": -1}, "ModelConfig.n_latent must be an integer of at least 0, not -1"),
    ({"width": 0}, "ModelConfig.width must be an integer of at least 1, not 0"),
    ({"flux": "upwind"}, "ModelConfig.flux must be 'dissipative' or 'free', not 'upwind'"),
])
def test_model_settings(settings, words):
    with pytest.raises(ValueError, match=words):
        msm.ModelConfig("pulse", **settings)


def test_zero_trajectories(tmp_path):
    with pytest.raises(ValueError, match="trajectories must be at least 1, not 0"):
        msm.simulate("pulse", tmp_path / "x.h5", trajectories=0)
    assert list(tmp_path.iterdir()) == []


def test_a_form_the_bridge_cannot_translate():
    V = FunctionSpace(PeriodicIntervalMesh(4, 1.0, comm=COMM_SELF), "CG", 1)
    u, v = Function(V), TestFunction(V)
    with pytest.raises(msm.UnsupportedUFLError, match="no torch translation for UFL node BesselJ"):
        msm.ResidualOperator(ufl.bessel_J(1, u) * v * dx, u)
    with pytest.raises(msm.UnsupportedUFLError, match=r"vertex integrals \(dP\) are not supported"):
        msm.ResidualOperator(u * v * dP, u)


def test_a_form_not_linear_in_a_test_function():
    V = FunctionSpace(PeriodicIntervalMesh(4, 1.0, comm=COMM_SELF), "CG", 1)
    u = Function(V)
    with pytest.raises(ValueError, match="the residual must be a 1-form .* this form has 0 arguments"):
        msm.ResidualOperator(u * u * dx, u)


def test_mismatched_function_spaces_in_a_transfer():
    mesh = UnitSquareMesh(2, 2, comm=COMM_SELF)
    with pytest.raises(ValueError, match=r"mismatched function spaces: values of shape \(2,\) on the fine"):
        msm.Transfer(VectorFunctionSpace(mesh, "CG", 1), FunctionSpace(mesh, "CG", 1))


def test_forecast_from_states_of_the_wrong_size(pulse):
    model = msm.MultiscaleModel.load(pulse[1])
    with pytest.raises(ValueError, match=r"initial states must be \(n, 40\) for the model's fine space, "
                                         r"not of shape \(1, 39\)"):
        msm.forecast(model, torch.zeros(1, 39), np.linspace(0, 0.1, 3), samples=1)


def test_an_interrupted_dns_leaves_no_file(tmp_path):
    problem = Failing()
    with pytest.raises(RuntimeError, match="the solver diverged"):
        msm.simulate(problem, tmp_path / "x.h5", trajectories=1, resolution=20, dt=0.01, t_end=0.1,
                     progress=False, comm=COMM_SELF)
    assert list(tmp_path.iterdir()) == []


def test_settings_are_stored_and_checked_as_json(tmp_path):
    with pytest.raises(TypeError, match="constructor arguments .* cannot be stored in a dataset"):
        msm.reference(Optioned(mesh=object()))
    assert json.loads(json.dumps(msm.reference(Optioned(mesh="x.msh"))[1])) == {"mesh": "x.msh"}


class Optioned(AdvectedPulse):
    def __init__(self, mesh):
        self.mesh_file = mesh


class Failing(AdvectedPulse):
    """A DNS that fails at its fourth snapshot."""
    calls = 0

    def diagnostics(self, u):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("the solver diverged")
        return {}
