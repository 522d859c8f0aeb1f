"""The comparison command end to end, at test sizes."""
import json

import numpy as np
import pytest

from firedrake_msm.cli import main
from firedrake_msm.compare import METHODS, Settings


@pytest.mark.parametrize("case", ["kdv"])
def test_compare_writes_tables_plots_and_vtk(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", case, "--fast"]) == 0
    out = tmp_path / "results" / "fast" / case
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    for name, method in summary["methods"].items():
        assert 0 < method["rel_l2_mean"] < 2 and method["seconds_per_unit_time"] > 0
        assert (method["crps"] is None) == (name in ("coarse_dns", "smagorinsky"))
    assert summary["methods"]["multiscale"]["reference_rel_l2"] == 0.042
    assert summary["fine_dns"]["seconds_per_unit_time"] > 0
    assert summary["fine"] == {"resolution": 100, "trajectories": 4, "dt": 0.01}
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


def test_settings_follow_the_protocol_and_its_departures():
    """DESIGN.md §4: data noise 0.001, 0.01 for KdV; Burgers' fine mesh is 64²; the cylinder trains
    on fewer samples a step, with the local decoder; the 1D cases average their parameters."""
    kdv, burgers, cylinder = (Settings.for_case(case).train for case in ("kdv", "burgers2d", "cylinder"))
    assert Settings.for_case("burgers2d").dns == {"resolution": 64} and Settings.for_case("kdv").dns == {}
    assert Settings.for_case("kdv").model == {"flux": "free"} and Settings.for_case("burgers2d").model == {}
    assert (kdv.noise_std, burgers.noise_std, cylinder.noise_std) == (0.01, 0.001, 0.001)
    assert (burgers.batch_size, burgers.residual_times) == (8, 32)
    assert (cylinder.batch_size, cylinder.residual_times) == (2, 8)
    assert Settings.for_case("cylinder").model == {"local_decoder": True}
    assert Settings.for_case("pulse").train.average == kdv.average == 0.999 and burgers.average == 0.0
    assert Settings.for_case("pulse").train.validate_every == 250 and kdv.validate_every == 1000
