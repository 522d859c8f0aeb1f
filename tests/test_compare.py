"""The comparison command end to end, at test sizes."""
import json

import numpy as np
import pytest

from firedrake import FunctionSpace, PeriodicIntervalMesh, UnitSquareMesh, VectorFunctionSpace

from firedrake_msm.cli import main
from firedrake_msm.compare import METHODS, baseline_applies, break_even, tune_constant
from firedrake_msm.protocol import BASELINES, Protocol


# What each case's fast comparison must show: its rows (every baseline applies to KdV's u; no LES
# closure to shallow water's (eta, hu, hv)), two of its published figures, its data's sizes.
FAST = {"kdv": (METHODS, {"multiscale": 0.042, "dmd": 0.163},
                {"resolution": 100, "dofs": 100, "coarse_dofs": 20}),
        "shallow_water": (("coarse_dns", "dmd", "pod_sindy", "implicit_scale", "multiscale"),
                          {"multiscale": 0.152, "dmd": 0.531},
                          {"resolution": 16, "dofs": 3 * 16**2, "coarse_dofs": 3 * 8**2})}


@pytest.mark.parametrize("case", ["kdv", "shallow_water"])
def test_compare_writes_tables_plots_and_vtk(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", case, "--fast"]) == 0
    out = tmp_path / "results" / "fast" / case
    summary = json.loads((out / "summary.json").read_text())
    methods, reference, sizes = FAST[case]
    assert list(summary["methods"]) == list(methods)
    for name, method in summary["methods"].items():
        # Only a data-driven baseline may leave the data's range at these sizes; none of these may.
        if name not in ("dmd", "pod_sindy"):
            assert method["diverged_at"] is None
        if method["diverged_at"] is None:
            assert 0 < method["rel_l2_mean"] < 2 and np.isfinite(method["rel_l2_fe_mean"])
        assert method["seconds_per_unit_time"] > 0
        learned = name in ("implicit_scale", "multiscale")
        assert (method["crps"] is None) == (method["spread_skill"] is None) == (not learned)
        assert learned == (method["training_seconds"] is not None)
        if learned and method["break_even_forecasts"] is not None:
            assert method["break_even_forecasts"] > 0
    for name, value in reference.items():
        assert summary["methods"][name]["reference_rel_l2"] == value
    settings = {name: method["settings"] for name, method in summary["methods"].items()}
    if "smagorinsky_tuned" in settings:
        assert settings["smagorinsky"] == {"C_s": 0.17} and settings["wale"] == {"C_w": 0.5}
        tuned = settings["smagorinsky_tuned"]
        assert 0 <= tuned["C_s"] <= 0.4 and np.isfinite(tuned["validation_rel_l2"])
        assert tuned["evaluations"] > 9
        assert f"C_s {tuned['C_s']:.4g}" in (out / "table.md").read_text()
    assert 1 <= settings["dmd"]["rank"] <= 20 and 1 <= settings["pod_sindy"]["rank"] <= 10
    assert summary["fine_dns"]["seconds_per_unit_time"] > 0
    assert summary["fine"] == {"trajectories": 4, "dt": 0.01, **sizes}
    training = summary["methods"]["multiscale"]["training"]
    assert training["step"] in (2, 4) and training["steps"] == 4 and training["noise_std"] == 0.0
    assert training["average"] == 0.0 and training["local_decoder"] is False
    periodic = ("spectra.png",) if case == "kdv" else ()             # spectra of the periodic 1D cases
    for name in ("table.md", "table.csv", "errors.png", "snapshots.png", "multiscale.pvd") + periodic:
        assert (out / name).stat().st_size > 0
    assert "multiscale" in capsys.readouterr().out
    if case != "kdv":
        return
    # A longer budget resumes both models; the same budget again reuses them and the dataset (the
    # same for every case: checked once).
    run = tmp_path / "runs" / "fast" / f"{case}-n0"
    assert main(["compare", case, "--fast", "--steps", "6"]) == 0
    log = np.genfromtxt(run / "log.csv", delimiter=",", names=True)
    assert np.array_equal(log["step"], np.arange(1, 7)) and np.all(np.diff(log["seconds"]) > 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["implicit_scale"]["training_seconds"] == pytest.approx(log["seconds"][-1])
    before = (run / "checkpoint.pt").stat().st_mtime
    assert main(["compare", case, "--fast", "--steps", "6"]) == 0
    assert (run / "checkpoint.pt").stat().st_mtime == before


def test_the_reference_protocols_are_their_configuration_files():
    """DESIGN.md §4: data noise 0.001, 0.01 for KdV; Burgers' fine mesh is 64²; the cylinder trains
    on fewer samples a step, with the local decoder; the 1D cases average their parameters."""
    kdv, burgers, cylinder, pulse = map(Protocol.load, ("kdv", "burgers2d", "cylinder", "pulse"))
    assert burgers.dns == {"resolution": 64} and kdv.dns == {}
    assert kdv.model == {"n_latent": 5, "flux": "free", "bounded_source": False}
    assert burgers.model == {"n_latent": 5, "bounded_source": False, "boundary_closure": False}
    assert not cylinder.model_config(5).boundary_closure
    assert (kdv.train.noise_std, burgers.train.noise_std, cylinder.train.noise_std) == (0.01, 0.001, 0.001)
    assert (burgers.train.batch_size, burgers.train.residual_times) == (8, 32)
    assert (cylinder.train.batch_size, cylinder.train.residual_times) == (2, 8)
    assert cylinder.model_config(5).local_decoder and cylinder.model_config(0).n_latent == 0
    assert pulse.train.average == kdv.train.average == 0.999 and burgers.train.average == 0.0
    assert pulse.train.validate_every == 250 and kdv.train.validate_every == 1000
    assert kdv.reference["multiscale"] == 0.042 and kdv.fast().dns["resolution"] == 100


def test_a_protocol_file_of_ones_own(tmp_path):
    """A copied and edited protocol: relative paths are the file's; unknown keys are named."""
    (tmp_path / "mine.toml").write_text('problem = "heat.py:Heat"\ndataset = "heat.h5"\n'
                                        "[model]\nn_latent = 3\n[train]\nsteps = 10\n")
    protocol = Protocol.load(tmp_path / "mine.toml")
    assert protocol.name == "mine" and protocol.problem == f"{tmp_path}/heat.py:Heat"
    assert protocol.dataset == tmp_path / "heat.h5" and protocol.train.steps == 10
    assert protocol.model_config(3).n_latent == 3 and protocol.train.batch_size == 8
    (tmp_path / "bad.toml").write_text('problem = "kdv"\n[model]\nwidht = 3\n')
    with pytest.raises(ValueError, match="unknown \\[model\\] settings \\[\'widht\'\\]"):
        Protocol.load(tmp_path / "bad.toml")


def test_break_even():
    """An hour of training, forecasts of 10 time units at 1 s per unit time against the fine
    DNS's 10: 3600 / 90 = 40 forecasts; never where a forecast costs at least the fine DNS."""
    assert break_even(3600.0, 1.0, 10.0, 10.0) == pytest.approx(40.0)
    assert break_even(3600.0, 10.0, 10.0, 10.0) is None


def test_the_baselines_that_apply_to_each_field():
    """Smagorinsky's viscosity acts on a scalar or a vector, WALE's on a velocity (a vector, or a
    scalar on an interval); neither on shallow water's (eta, hu, hv) in 2D; DMD and POD-SINDy on
    anything."""
    interval, square = PeriodicIntervalMesh(8, 1.0), UnitSquareMesh(2, 2)
    fields = {"kdv": FunctionSpace(interval, "CG", 1), "burgers2d": FunctionSpace(square, "CG", 1),
              "cylinder": VectorFunctionSpace(square, "CG", 2),
              "shallow_water": VectorFunctionSpace(square, "DG", 0, dim=3)}
    applies = {case: [m for m in BASELINES if baseline_applies(m, V)] for case, V in fields.items()}
    assert applies["kdv"] == applies["cylinder"] == list(BASELINES)
    assert applies["burgers2d"] == [m for m in BASELINES if m != "wale"]
    assert applies["shallow_water"] == ["coarse_dns", "dmd", "pod_sindy"]


def test_a_protocol_chooses_its_baselines_and_their_settings(tmp_path):
    (tmp_path / "mine.toml").write_text('problem = "kdv"\n[baselines]\nmethods = ["dmd", "coarse_dns"]\n'
                                        'dmd = {svd_rank = 0.99}\npod_sindy = {rank = 3}\n')
    protocol = Protocol.load(tmp_path / "mine.toml")
    assert protocol.baselines == ("dmd", "coarse_dns") and protocol.dmd == {"svd_rank": 0.99}
    assert protocol.pod_sindy == {"rank": 3} and protocol.fast().baselines == ("dmd", "coarse_dns")
    assert Protocol.load("kdv").baselines is None
    with pytest.raises(ValueError, match="unknown baselines \\['dnm'\\]"):
        Protocol(name="x", problem="kdv", baselines=["dnm"])
    with pytest.raises(ValueError, match="unknown dmd settings \\['rank'\\]; fit_dmd takes \\['svd_rank'\\]"):
        Protocol(name="x", problem="kdv", dmd={"rank": 3})
    (tmp_path / "bad.toml").write_text('problem = "kdv"\n[baselines]\nsindy = {rank = 3}\n')
    with pytest.raises(ValueError, match="\\[baselines\\] takes methods, dmd and pod_sindy"):
        Protocol.load(tmp_path / "bad.toml")


def test_tune_constant_finds_the_least_error():
    """A grid over [0, 0.4], then Brent between the best point's neighbours: the minimum of a
    parabola to the tolerance, past a region where the error is infinite (a run that blew up),
    and the deeper of two minima."""
    def parabola(c):
        return np.inf if c < 0.08 else (c - 0.137) ** 2 + 0.3

    c, error, evaluations = tune_constant(parabola, (0.0, 0.4))
    assert c == pytest.approx(0.137, abs=0.005) and error == pytest.approx(0.3, abs=1e-4)
    assert 9 < evaluations <= 30

    def two_wells(c):
        return min((c - 0.05) ** 2 + 0.1, (c - 0.31) ** 2)

    assert tune_constant(two_wells, (0.0, 0.4))[0] == pytest.approx(0.31, abs=0.005)
