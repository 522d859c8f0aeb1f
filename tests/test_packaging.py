"""A wheel built from the repository is the whole package: installed into a clean virtual
environment (which sees Firedrake's, and nothing of this checkout), it runs the tiny comparison and
finds its protocols and meshes."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_a_wheel_in_a_clean_environment_runs_the_tiny_comparison(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "wheels"), str(REPOSITORY)])
    (wheel,) = (tmp_path / "wheels").glob("firedrake_msm-*.whl")
    clean = tmp_path / "clean"
    run([sys.executable, "-m", "venv", "--without-pip", str(clean)])
    python = clean / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # Firedrake's environment as a plain path: its .pth files (this checkout's editable install
    # among them) are not read from there.
    (site / "firedrake-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --target, not --prefix: pip would uninstall this checkout's editable install from the
    # running environment first.
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
         str(wheel)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PETSC_OPTIONS": "-options_left no", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    work = tmp_path / "work"
    work.mkdir()
    where = run([str(python), "-c", "import firedrake_msm as msm; print(msm.__file__); "
                 "print(msm.resolve('cylinder').mesh('coarse').num_cells())"], cwd=work, env=env)
    assert where.splitlines()[0].startswith(str(site)) and int(where.splitlines()[1]) > 0
    out = run([str(python), "-m", "firedrake_msm.cli", "compare", "kdv", "--fast"], cwd=work, env=env)
    assert "| multiscale |" in out and (work / "results" / "fast" / "kdv" / "summary.json").exists()
