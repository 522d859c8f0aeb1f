"""Figures of a comparison: error against time, snapshots, spectra."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from firedrake import Function, SpatialCoordinate, VectorFunctionSpace  # noqa: E402

from firedrake_msm.metrics import energy_spectrum  # noqa: E402

LABELS = {"coarse_dns": "coarse DNS", "smagorinsky": "Smagorinsky LES",
          "smagorinsky_tuned": "Smagorinsky LES, tuned C_s", "dynamic_smagorinsky": "dynamic Smagorinsky",
          "wale": "WALE", "dmd": "DMD", "pod_sindy": "POD-SINDy",
          "implicit_scale": "implicit-scale (n=0)", "multiscale": "multiscale"}


def plot_comparison(folder, problem, model, times, truth, results):
    """Write ``errors.png``, ``snapshots.png`` and, for periodic 1D cases, ``spectra.png``.

    ``truth``: ``(n, T, N_h)`` test trajectories; ``results``: method name to
    :class:`~firedrake_msm.compare.Result`.
    """
    _errors(folder / "errors.png", times, results)
    V = model.transfer.V_fine
    if V.mesh().geometric_dimension == 1:
        x = _coordinates(V)
        _snapshots_1d(folder / "snapshots.png", x, times, truth, results)
        if V.mesh().coordinates.function_space().ufl_element().family() == "Discontinuous Lagrange":
            _spectra(folder / "spectra.png", x, truth, results, problem)
    else:
        _snapshots_2d(folder / "snapshots.png", V, times, truth, results)


def _errors(path, times, results):
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        mean, std = r.errors.mean(0), r.errors.std(0)
        ax.plot(times, mean, label=LABELS[name])
        ax.fill_between(times, mean - std, mean + std, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel(r"relative $L^2$ error $\|y - \hat y\| / \|y\|$")
    ax.set_title("forecast error on the test trajectories (mean ± std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _coordinates(V):
    x = Function(VectorFunctionSpace(V.mesh(), V.ufl_element())).interpolate(SpatialCoordinate(V.mesh()))
    return x.dat.data_ro.reshape(-1)


def _snapshots_1d(path, x, times, truth, results, trajectory=0):
    order = np.argsort(x)
    picks = np.linspace(0, len(times) - 1, 4).astype(int)[1:]
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.6 * len(picks)), sharex=True)
    for ax, k in zip(axes, picks):
        ax.plot(x[order], truth[trajectory, k, order], "k", lw=2, label="truth (fine DNS)")
        for name, r in results.items():
            ax.plot(x[order], r.mean[trajectory, k, order], lw=1, label=LABELS[name])
            if r.spread is not None and name == "multiscale":
                low = r.mean[trajectory, k] - 2 * r.spread[trajectory, k]
                high = r.mean[trajectory, k] + 2 * r.spread[trajectory, k]
                ax.fill_between(x[order], low[order], high[order], alpha=0.25,
                                color=ax.lines[-1].get_color())
        ax.set_title(f"t = {times[k]:.3g}")
    axes[0].legend(fontsize=8, ncol=3)
    axes[-1].set_xlabel("x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _snapshots_2d(path, V, times, truth, results, trajectory=0):
    from firedrake.pyplot import tripcolor
    from firedrake.ml.pytorch import from_torch
    import torch
    fields = {"truth": truth[trajectory, -1],
              **{LABELS[name]: r.mean[trajectory, -1] for name, r in results.items()}}
    columns = min(len(fields), 5)
    rows = -(-len(fields) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(fields):]:
        ax.set_axis_off()
    for ax, (name, values) in zip(axes.flat, fields.items()):
        ax.set_title(name)
        if not np.isfinite(values).all():
            ax.text(0.5, 0.5, "blew up", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        f = from_torch(torch.as_tensor(np.asarray(values, dtype=float)), V)
        artist = tripcolor(f if V.block_size == 1 else _magnitude(f), axes=ax)
        fig.colorbar(artist, ax=ax, shrink=0.8)
        ax.set_aspect("equal")
    fig.suptitle(f"t = {times[-1]:.3g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _magnitude(f):
    from firedrake import FunctionSpace, sqrt, inner
    return Function(FunctionSpace(f.function_space().mesh(), "CG", 1)).interpolate(sqrt(inner(f, f)))


def _spectra(path, x, truth, results, problem, k=-1):
    order = np.argsort(x)
    length = getattr(problem, "length", 1.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    wavenumber, energy = energy_spectrum(truth[:, k][:, order], length)
    ax.loglog(wavenumber[1:], energy.mean(0)[1:], "k", lw=2, label="truth (fine DNS)")
    for name, r in results.items():
        wavenumber, energy = energy_spectrum(r.mean[:, k][:, order], length)
        ax.loglog(wavenumber[1:], energy.mean(0)[1:], label=LABELS[name])
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k)")
    ax.set_title("energy spectrum at the final time (mean over test trajectories)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
