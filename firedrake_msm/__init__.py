"""firedrake-msm: learn stochastic multiscale models on coarse Firedrake meshes from data."""
__version__ = "0.1.0.dev0"
