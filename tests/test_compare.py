"""The comparison command end to end, at test sizes."""
import json

import numpy as np
import pytest

from firedrake_msm.cli import main
from firedrake_msm.compare import METHODS, break_even
from firedrake_msm.protocol import Protocol


@pytest.mark.parametrize("case", ["kdv"])
def test_compare_writes_tables_plots_and_vtk(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", case, "--fast"]) == 0
    out = tmp_path / "results" / "fast" / case
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    for name, method in summary["methods"].items():
        assert 0 < method["rel_l2_mean"] < 2 and method["seconds_per_unit_time"] > 0
        learned = name in ("implicit_scale", "multiscale")
        assert (method["crps"] is None) == (method["spread_skill"] is None) == (not learned)
        assert learned == (method["training_seconds"] is not None)
        if learned and method["break_even_forecasts"] is not None:
            assert method["break_even_forecasts"] > 0
    assert summary["methods"]["multiscale"]["reference_rel_l2"] == 0.042
    assert summary["fine_dns"]["seconds_per_unit_time"] > 0
    assert summary["fine"] == {"resolution": 100, "trajectories": 4, "dt": 0.01, "dofs": 100,
                               "coarse_dofs": 20}
    training = summary["methods"]["multiscale"]["training"]
    assert training["step"] in (2, 4) and training["steps"] == 4 and training["noise_std"] == 0.0
    assert training["average"] == 0.0 and training["local_decoder"] is False
    for name in ("table.md", "table.csv", "errors.png", "snapshots.png", "spectra.png", "multiscale.pvd"):
        assert (out / name).stat().st_size > 0
    assert "multiscale" in capsys.readouterr().out
    # A longer budget resumes both models; the same budget again reuses them and the dataset.
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
