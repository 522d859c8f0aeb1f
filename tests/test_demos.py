"""The literate demos run as scripts, at the tiny ``--fast`` sizes."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parent.parent / "demos"


def run_demo(folder, *arguments):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *map(str, arguments)], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)


def check_case(folder, run, case):
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = folder / "out" / "results" / "fast" / "demos" / case
    assert (out / f"{case}.png").stat().st_size > 0
    assert (out / f"{case}.pvd").exists()
    assert "relative L2 error" in run.stdout


# The cylinder takes about a minute on two busy cores (its DNS alone is 20 s): slow.
@pytest.mark.parametrize("case", ["pulse", "kdv", "burgers2d",
                                  pytest.param("cylinder", marks=pytest.mark.slow)])
def test_demo_runs_and_draws_its_figure(tmp_path, case):
    check_case(tmp_path, run_demo(tmp_path, DEMOS / f"{case}.py", "--fast", "--output", "out"), case)


def test_the_walkthrough_runs_a_case_named_on_its_command_line(tmp_path):
    """The generic demo that the case demos import, run as a script of its own."""
    check_case(tmp_path, run_demo(tmp_path, DEMOS / "walkthrough.py", "pulse", "--fast", "--output", "out"),
               "pulse")


def test_the_demo_of_a_pde_of_ones_own_runs():
    """From the user's own recorded loop to the comparison table and a forecast to Functions."""
    with tempfile.TemporaryDirectory() as folder:
        run = run_demo(folder, DEMOS / "your_own_pde.py", "--fast", "--output", folder)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = Path(folder) / "results" / "fast" / "advection_diffusion"
        assert all((out / name).stat().st_size > 0 for name in ("table.md", "errors.png", "final.pvd"))
    assert "| multiscale |" in run.stdout and "multiscale forecast of the first test trajectory" in run.stdout
