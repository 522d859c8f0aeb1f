"""firedrake-msm: learn stochastic multiscale models on coarse Firedrake meshes from data.

The front door, ``import firedrake_msm as msm``:

Problems and data
    :class:`Problem` (subclass it for your own PDE), :func:`resolve` (a problem from a name,
    an import path ``"pkg.mod:Class"`` or a file ``"file.py:Class"``), :func:`load_mesh`
    (a Gmsh mesh with its physical names), :func:`simulate` (a fine DNS into a dataset),
    :class:`Recorder` (a dataset from your own time loop), :func:`load_trajectories`,
    :func:`load_space` and :func:`splits` (a dataset's snapshots, fine space and train /
    validation / test split).
Models
    :class:`ModelConfig`, :class:`MultiscaleModel` (``build`` for a dataset, ``save``/``load``
    a self-contained checkpoint), :class:`TrainConfig` and :func:`fit` (amortized variational
    training), :func:`forecast` (ensembles, decoded to the fine mesh).
Comparisons
    :class:`Protocol` (a comparison's settings, a TOML file), :func:`compare` (coarse DNS,
    Smagorinsky and the learned models against the fine data), :class:`CoarseSolver`; the LES
    closures as UFL forms, :func:`smagorinsky`, :func:`wale` and :class:`DynamicSmagorinsky`.
The torch bridge
    :class:`ResidualOperator`, :class:`PhysicsDrift`, :class:`MassOperator`, :class:`Basis`,
    :class:`Transfer` (restriction and prolongation between the meshes).
"""
from firedrake_msm.baselines import CoarseSolver, smagorinsky
from firedrake_msm.bridge import Basis, MassOperator, PhysicsDrift, ResidualOperator, UnsupportedUFLError
from firedrake_msm.checkpoint import CheckpointError
from firedrake_msm.compare import compare
from firedrake_msm.data import load_space, load_trajectories, splits
from firedrake_msm.dns import simulate
from firedrake_msm.forecast import Forecast, forecast, write_vtk
from firedrake_msm.les import DynamicSmagorinsky, wale
from firedrake_msm.meshes import PhysicalNames, load_mesh
from firedrake_msm.model import ModelConfig, MultiscaleModel
from firedrake_msm.problems import Problem, ProblemNotFound, reference, resolve
from firedrake_msm.protocol import Protocol
from firedrake_msm.recorder import Recorder
from firedrake_msm.train import TrainConfig, TrainingDiverged, fit
from firedrake_msm.transfer import Transfer

__version__ = "0.1.0.dev0"

__all__ = ["Basis", "CheckpointError", "CoarseSolver", "DynamicSmagorinsky", "Forecast", "MassOperator",
           "ModelConfig", "MultiscaleModel", "PhysicalNames", "PhysicsDrift", "Problem", "ProblemNotFound",
           "Protocol", "Recorder", "ResidualOperator", "TrainConfig", "TrainingDiverged", "Transfer",
           "UnsupportedUFLError", "compare", "fit", "forecast", "load_mesh", "load_space",
           "load_trajectories", "reference", "resolve", "simulate", "smagorinsky", "splits", "wale",
           "write_vtk"]
