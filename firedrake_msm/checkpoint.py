"""Self-contained checkpoint files: a model's meshes travel inside it.

A checkpoint is a ``torch.save`` file of tensors, numbers, strings, lists and dicts only, so
that it loads with ``torch.load(weights_only=True)``. The meshes are Firedrake ``CheckpointFile``
images held as ``uint8`` tensors: the fine mesh with its ``dof_index`` Function (copied from the
training dataset, :mod:`firedrake_msm.recorder`) and the coarse mesh. Loading an image twice
gives the same mesh with the same numbering, so a model built from them in another process lines
up with the parameters that were trained (the local decoder's weights are per fine dof).
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import torch
from firedrake import COMM_SELF, CheckpointFile

from firedrake_msm.data import load_space, open_dataset

FORMAT = 2   # the layout of the file; bumped when it changes


class CheckpointError(ValueError):
    """A file that is not a firedrake-msm checkpoint this version can read."""


def mesh_image(mesh):
    """A mesh (on one process) as a ``CheckpointFile`` image, ``(bytes,)`` ``uint8``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mesh.h5"
        with CheckpointFile(str(path), "w", comm=COMM_SELF) as f:
            f.save_mesh(mesh)
        return _tensor(path.read_bytes())


def load_mesh_image(image, name):
    """The mesh ``name`` of an image made by :func:`mesh_image`."""
    with _file(image) as path, CheckpointFile(str(path), "r", comm=COMM_SELF) as f:
        return f.load_mesh(name)


def dataset_image(dataset):
    """The mesh and ``dof_index`` part of a dataset (everything but its snapshots), as an image
    that :func:`load_space_image` reads back as :func:`firedrake_msm.data.load_space` reads the
    dataset."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "space.h5"
        with open_dataset(dataset) as group, h5py.File(path, "w") as target:
            source = group.file
            target.attrs.update(source.attrs)
            for key in source:
                if key != "msm":
                    source.copy(source[key], target, name=key)
        return _tensor(path.read_bytes())


def load_space_image(image):
    """``(V, order)`` of an image made by :func:`dataset_image` (see
    :func:`firedrake_msm.data.load_space`)."""
    with _file(image) as path:
        return load_space(path)


def save(path, contents):
    """Write ``contents`` (a dict) to ``path`` atomically: a crash mid-write leaves the previous
    file intact."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT, **contents}, partial)
    os.replace(partial, path)


def read(path, *, map_location="cpu"):
    """The contents of a checkpoint written by :func:`save`.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        A corrupt or truncated file, a file that is not a firedrake-msm checkpoint, or one of
        another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable firedrake-msm checkpoint (corrupt, truncated or "
                              f"not written by torch.save): {type(error).__name__}: {error}") from error
    if not isinstance(contents, dict) or "format" not in contents or "model_config" not in contents:
        raise CheckpointError(f"{path} is a torch file but not a firedrake-msm checkpoint (it has no model "
                              "configuration)")
    if contents["format"] != FORMAT:
        raise CheckpointError(f"{path} is a checkpoint of format {contents['format']}; this version of "
                              f"firedrake-msm reads format {FORMAT}: load it with the version that wrote it "
                              "(its 'version' entry) or retrain")
    return contents


def _tensor(data):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@contextmanager
def _file(image):
    """An image as a temporary file, for as long as the ``with`` block lasts."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.h5"
        path.write_bytes(image.cpu().numpy().tobytes())
        yield path
