"""Gmsh meshes with their physical names.

Firedrake's ``Mesh("x.msh")`` knows the integer tags of a Gmsh file's physical groups, not their
names; :func:`load_mesh` returns both, so that scripts can say ``bcs=DirichletBC(V, 0,
names["inlet"])`` and stay right when the ``.geo`` file is renumbered.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from firedrake import COMM_WORLD, Mesh

# The Gmsh meshes that ship with the package (``.geo`` files and the ``.msh`` files made from them).
MESHES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PhysicalNames:
    """The physical groups of a Gmsh file: ``names["inlet"]`` is the integer tag of "inlet".

    Attributes
    ----------
    tags : dict
        Name to tag.
    dims : dict
        Name to the group's dimension (the mesh dimension for cell groups, one less for facets).
    source : str
        The file they were read from, for error messages.
    """
    tags: dict
    dims: dict
    source: str

    def __getitem__(self, name):
        try:
            return self.tags[name]
        except KeyError:
            known = ", ".join(sorted(self.tags)) or "none"
            raise KeyError(f"no physical group named {name!r} in {self.source}; it has: {known}") from None

    def __contains__(self, name):
        return name in self.tags

    def of_dimension(self, dim):
        """Name to tag for the groups of one dimension."""
        return {name: tag for name, tag in self.tags.items() if self.dims[name] == dim}


def read_physical_names(path):
    """The ``$PhysicalNames`` section of a Gmsh ``.msh`` file (format 2 or 4, ASCII or binary).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a Gmsh mesh.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Gmsh mesh file at {path}")
    tags, dims = {}, {}
    with open(path, "rb") as f:
        first = f.readline().strip()
        if first != b"$MeshFormat":
            raise ValueError(f"{path} is not a Gmsh .msh file (it starts with {first[:40]!r})")
        for line in f:
            if line.strip() == b"$PhysicalNames":
                count = int(f.readline())
                for _ in range(count):
                    match = re.match(rb'\s*(\d+)\s+(\d+)\s+"(.*)"', f.readline())
                    dim, tag, name = int(match[1]), int(match[2]), match[3].decode()
                    tags[name], dims[name] = tag, dim
                break
            if line.startswith((b"$Nodes", b"$Entities")):   # names come before these
                break
    return PhysicalNames(tags, dims, str(path))


def load_mesh(path, *, comm=COMM_WORLD, **kwargs):
    """A Firedrake mesh from a Gmsh ``.msh`` (or ``.geo``) file, with its physical names.

    A ``.geo`` file is meshed with the gmsh Python package into the ``.msh`` file beside it
    (reused while it is newer than the ``.geo``).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.msh`` or ``.geo`` file.
    comm : mpi4py.MPI.Comm
        Communicator to distribute the mesh over.
    **kwargs
        Passed on to :func:`firedrake.Mesh`.

    Returns
    -------
    mesh : firedrake.MeshGeometry
    names : PhysicalNames
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mesh file at {path}")
    if path.suffix == ".geo":
        path = _mesh_geo(path, comm)
    names = read_physical_names(path)
    try:
        mesh = Mesh(str(path), comm=comm, **kwargs)
    except Exception as error:
        raise ValueError(f"Firedrake could not read {path} as a mesh: {error}") from error
    return mesh, names


def _mesh_geo(geo, comm):
    """Mesh a ``.geo`` file (on rank 0) into the ``.msh`` beside it; return that path."""
    msh = geo.with_suffix(".msh")
    failure = None
    if comm.rank == 0 and (not msh.exists() or msh.stat().st_mtime < geo.stat().st_mtime):
        # Written under another name (gmsh picks the format from the extension) and renamed, so
        # that a failure leaves no .msh that looks up to date.
        partial = msh.with_name(msh.stem + ".partial.msh")
        import gmsh
        gmsh.initialize()
        try:
            gmsh.option.setNumber("General.Verbosity", 1)
            gmsh.open(str(geo))
            gmsh.model.mesh.generate(gmsh.model.getDimension())
            gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
            gmsh.write(str(partial))
            os.replace(partial, msh)
        except Exception as error:
            failure = f"gmsh could not mesh {geo}: {error}"
        finally:
            gmsh.finalize()
            partial.unlink(missing_ok=True)
    failure = comm.bcast(failure, root=0)
    if failure:
        raise ValueError(failure)
    return msh
