"""A trained model moves to another coarse mesh of the same domain
(:meth:`~firedrake_msm.model.MultiscaleModel.on_mesh`): the same learned functions, discretised
on the new mesh."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from firedrake import Function, SpatialCoordinate

from firedrake_msm.dns import simulate
from firedrake_msm.model import ModelConfig, MultiscaleModel
from firedrake_msm.problems.pulse import AdvectedPulse


@pytest.fixture(scope="module")
def pulse_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cross_mesh") / "pulse.h5"
    return simulate(AdvectedPulse(), path, trajectories=3, resolution=192, dt=0.01, t_end=0.03,
                    progress=False)


def nodes(model):
    return Function(model.V).interpolate(SpatialCoordinate(model.V.mesh())[0]).dat.data_ro.copy()


def learned_rates(model, n_latent):
    """The closure's and the latent forcing's rates, ``(N_H, 1 + n_h)``, at the smooth fields
    :math:`u = \\sin 2\\pi x`, :math:`h_k = \\cos 2\\pi (k + 1) x / 2`."""
    x = nodes(model)
    u = np.sin(2 * np.pi * x)
    h = np.stack([np.cos(2 * np.pi * (k + 1) * x) / 2 for k in range(n_latent)], axis=1)
    z = torch.as_tensor(np.concatenate([u, h.reshape(-1)]))[None]
    with torch.no_grad():
        parts = model.sde.parts(0.0, z)
    return np.concatenate([parts["closure"].numpy().T, parts["latent forcing"].numpy().reshape(-1, n_latent)],
                          axis=1)


def at(x, model, values):
    """P1 values on ``model``'s periodic mesh, interpolated at the points ``x``."""
    order = np.argsort(nodes(model))
    xs, vs = nodes(model)[order], values[order]
    return np.stack([np.interp(x, xs, v, period=1.0) for v in vs.T], axis=1)


def with_own_width(model):
    """The same parameters with the closure's reference width the mesh's own: no cell-width
    factors."""
    own = MultiscaleModel(replace(model.config, reference_width=None), model.images).double()
    own.load_state_dict(model.state_dict())
    return own


def test_the_learned_functions_converge_under_refinement(pulse_data):
    """At the reference width of each mesh, the learned rates on meshes 12, 24, 48 converge to
    those on mesh 96 at second order (the L2 projection's, of P1): each mesh discretises the same
    functions of the fields."""
    torch.manual_seed(0)
    n_latent = 2
    model = MultiscaleModel.build(pulse_data, ModelConfig(coarse=12, n_latent=n_latent)).double()
    finest = with_own_width(model.on_mesh(96))
    x = nodes(finest)
    reference = learned_rates(finest, n_latent)
    errors = []
    for n in (12, 24, 48):
        moved = model if n == 12 else with_own_width(model.on_mesh(n))
        errors.append(np.abs(at(x, moved, learned_rates(moved, n_latent)) - reference).max(axis=0)
                      / np.abs(reference).max(axis=0))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.4) and np.all(orders[-1] > 1.8), orders


def test_a_closure_moved_to_a_finer_mesh_is_of_first_order_in_the_cell_width(pulse_data):
    """Moved from 12 cells to 24, the model keeps its parameters and its reference width, and its
    closure is the same network with the gradients read in units of the training mesh's cells (as
    if their scales were doubled) and its residual halved; moved back to 12, nothing is scaled."""
    torch.manual_seed(0)
    model = MultiscaleModel.build(pulse_data, ModelConfig(coarse=12, n_latent=2)).double()
    moved = model.on_mesh(24)
    assert moved.V.dim() == 24 and moved.config.coarse == 24
    assert moved.config.reference_width == pytest.approx(1 / 12)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), moved.state_dict().values()))
    own = with_own_width(moved)
    scale = own.sde.closure.scale.view(2, -1)
    scale[1] *= 2
    X = torch.as_tensor(np.random.default_rng(0).standard_normal((3, 24, 3)))
    with torch.no_grad():
        assert torch.allclose(moved.sde.closure(X), 0.5 * own.sde.closure(X), rtol=1e-12, atol=1e-14)
    coarser = own.on_mesh(12)             # trained on 24 cells
    assert coarser.sde.closure.refinement == 1.0


def test_a_local_decoder_stays_on_its_mesh(pulse_data):
    model = MultiscaleModel.build(pulse_data, ModelConfig(coarse=12, n_latent=1, local_decoder=True))
    with pytest.raises(ValueError, match="local decoder"):
        model.on_mesh(24)


def test_forecast_on_another_mesh_from_the_command_line(pulse_data, tmp_path, capsys):
    from firedrake_msm.cli import main
    model = MultiscaleModel.build(pulse_data, ModelConfig(coarse=12, n_latent=1))
    model.save(tmp_path / "model.pt", dataset=str(pulse_data))
    command = ["forecast", str(tmp_path / "model.pt"), "--dataset", str(pulse_data), "--samples", "2"]
    assert main(command + ["--coarse", "24"]) == 0
    assert "relative L2 error" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(command + ["--coarse", "nowhere.msh"])
