"""Gmsh meshes and their physical names."""
import shutil

import numpy as np
import pytest
from firedrake import Constant, assemble, ds, dx

from firedrake_msm.meshes import load_mesh, read_physical_names


def test_names_match_the_geo_file(meshes_dir):
    mesh, names = load_mesh(meshes_dir / "cylinder_coarse.msh")
    assert names.of_dimension(1) == {"inlet": 1, "outlet": 2, "walls": 3, "cylinder": 4}
    assert names.of_dimension(2) == {"fluid": 5}
    # The tags are Firedrake's: the cylinder's perimeter and the inlet's height come out right.
    perimeter = assemble(Constant(1.0) * ds(names["cylinder"], domain=mesh))
    assert np.isclose(perimeter, 2 * np.pi * 0.05, rtol=2e-2)
    assert np.isclose(assemble(Constant(1.0) * ds(names["inlet"], domain=mesh)), 1.8)
    area = assemble(Constant(1.0) * dx(names["fluid"], domain=mesh))
    assert np.isclose(area, 3.2 * 1.8 - np.pi * 0.05**2, rtol=1e-3)


def test_geo_is_meshed(meshes_dir, tmp_path):
    geo = tmp_path / "square.geo"
    shutil.copy(meshes_dir / "unit_square.geo", geo)
    mesh, names = load_mesh(geo)
    assert (tmp_path / "square.msh").exists()
    assert names["left"] == 4
    assert np.isclose(assemble(Constant(1.0) * dx(domain=mesh)), 1.0)


def test_clear_errors(meshes_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no mesh file"):
        load_mesh(tmp_path / "missing.msh")
    junk = tmp_path / "junk.msh"
    junk.write_text("hello\n")
    with pytest.raises(ValueError, match="not a Gmsh"):
        load_mesh(junk)
    names = read_physical_names(meshes_dir / "unit_square.msh")
    with pytest.raises(KeyError, match="no physical group named 'inlet'.*bottom, domain, left, right, top"):
        names["inlet"]
