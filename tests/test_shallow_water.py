"""The radial dam break (shallow water, finite volumes): what the scheme conserves and keeps, its
convergence to the 1D dam break's exact solution, and its coarse residual through the bridge."""
import h5py
import numpy as np
import pytest
import torch
from firedrake import (Constant, Function, FunctionSpace, SpatialCoordinate, TestFunction,
                       VectorFunctionSpace, assemble, dx)
from scipy.optimize import brentq

from conftest import assembled, max_relative_error
from firedrake_msm.bridge import MassOperator, PhysicsDrift, ResidualOperator
from firedrake_msm.dns import simulate
from firedrake_msm.problems import ShallowWater, resolve
from firedrake_msm.protocol import Protocol
from firedrake_msm.stepping import time_stepper


def run(problem, state, steps, dt=0.01):
    """Advance ``state`` by ``steps`` steps of the problem's scheme."""
    stepper = time_stepper(problem, state, Constant(0.0), Constant(dt))
    for _ in range(steps):
        stepper.advance()
    return state


def dam_break(problem, resolution, radius=0.5):
    """The dam break's initial state on the problem's mesh at ``resolution``."""
    state = Function(problem.function_space(problem.mesh(resolution)))
    problem.set_initial_state(state, {"radius": Constant(radius)})
    return state


def centres(V):
    """The cell centres ``(N, 2)`` of a DG0 space's cells, in its dof order."""
    mesh = V.mesh()
    return Function(VectorFunctionSpace(mesh, "DG", 0)).interpolate(SpatialCoordinate(mesh)).dat.data_ro


def test_registered_and_bad_boundary():
    assert isinstance(resolve("shallow_water"), ShallowWater)
    assert resolve("shallow_water", {"boundary": "wall"}).boundary == "wall"
    with pytest.raises(ValueError, match="boundary must be 'open'"):
        ShallowWater(boundary="periodic")


def test_the_protocol_has_the_papers_figures():
    protocol = Protocol.load("shallow_water")
    assert protocol.reference == {"coarse_dns": 0.861, "dmd": 0.531, "pod_sindy": 0.535,
                                  "implicit_scale": 0.426, "multiscale": 0.152}
    assert protocol.dns == {} and protocol.fast().dns["resolution"] == 16


def test_mass_is_conserved_to_round_off(tmp_path):
    """In a closed box the mass flux through every facet leaves one cell as it enters the
    next: the dataset's total elevation is constant to round-off while the water moves."""
    path = simulate(ShallowWater(boundary="wall"), tmp_path / "sw.h5", trajectories=2, resolution=16,
                    t_end=0.3, progress=False)
    with h5py.File(path, "r") as f:
        snapshots, radii = f["msm/snapshots"][...], f["msm/parameters"][:, 0]
    assert snapshots.shape == (2, 31, 3 * 16**2) and np.all((0.3 <= radii) & (radii <= 0.7))
    eta = snapshots[..., 0::3]
    mass = eta.sum(axis=2)
    assert np.abs(mass - mass[:, :1]).max() < 1e-13 * mass[:, 0].max()
    assert np.abs(snapshots[:, -1, 1::3]).max() > 0.05                 # it moved


@pytest.mark.parametrize("boundary", ["open", "wall"])
def test_lake_at_rest_stays_at_rest(boundary):
    """Still water at any level: every cell's pressure forces cancel around it, walls or not."""
    problem = ShallowWater(boundary=boundary)
    state = Function(problem.function_space(problem.mesh(8)))
    state.dat.data[:, 0] = 0.3
    run(problem, state, 10)
    assert np.abs(state.dat.data_ro - [0.3, 0.0, 0.0]).max() < 1e-14


def test_radial_solution_keeps_the_squares_symmetries():
    """The dam is centred on a grid symmetric under x -> -x and x <-> y: so is the solution,
    with the momentum turned with it."""
    problem = ShallowWater()
    state = run(problem, dam_break(problem, 32, radius=0.6), 40)
    U, x = state.dat.data_ro, centres(state.function_space())
    assert np.abs(U[:, 1:]).max() > 0.1

    def at(points):
        order = {tuple(p): k for k, p in enumerate(np.round(x, 10))}
        return np.array([order[tuple(p)] for p in np.round(points, 10)])

    mirror, swap = at(x * [-1, 1]), at(x[:, ::-1])
    assert np.abs(U[mirror] - U * [1, -1, 1]).max() < 1e-13
    assert np.abs(U[swap] - U[:, [0, 2, 1]]).max() < 1e-13


def stoker(x, t, g=1.0, h_left=2.0, h_right=1.0):
    """The exact depth of the 1D dam break from rest (left water deeper, a rarefaction to the
    left and a shock to the right, which move apart from x = 0)."""
    c_left = np.sqrt(g * h_left)

    def speed_jump(h):         # the rarefaction's velocity minus the shock's, at the middle depth h
        return 2 * (c_left - np.sqrt(g * h)) - (h - h_right) * np.sqrt(g * (h + h_right) / (2 * h * h_right))

    h_middle = brentq(speed_jump, h_right, h_left)
    u_middle = 2 * (c_left - np.sqrt(g * h_middle))
    shock = h_middle * u_middle / (h_middle - h_right)
    xi = x / t
    fan = (2 * c_left - xi) ** 2 / (9 * g)
    return np.select([xi <= -c_left, xi <= u_middle - np.sqrt(g * h_middle), xi <= shock],
                     [h_left, fan, h_middle], h_right)


def test_converges_to_the_1d_dam_break():
    """A planar dam across the box: the depth converges in L1 to Stoker's solution at least at
    order 1/2, the rate of monotone schemes at discontinuities (Kuznetsov's estimate; the
    rarefaction's corners and the shock are smeared by the Rusanov flux's diffusion)."""
    problem = ShallowWater()
    errors = []
    for n in (32, 64, 128):
        state = Function(problem.function_space(problem.mesh(n)))
        x = centres(state.function_space())
        state.dat.data[:, 0] = np.where(x[:, 0] <= 0.0, 1.0, 0.0)
        run(problem, state, 50)
        h = problem.depth + state.dat.data_ro[:, 0]
        errors.append(np.mean(np.abs(h - stoker(x[:, 0], 0.5))) * 5.0)      # per unit length of the box
        assert np.abs(state.dat.data_ro[:, 2]).max() < 1e-13                  # planar: no flow along y
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 0.5) and errors[-1] < 0.11, (errors, orders)


def test_coarse_residual_through_the_bridge():
    """The torch bridge's residual and physics drift on the 8² mesh are Firedrake's assembly of
    the Rusanov fluxes (interior and boundary facets), at random wet states."""
    for boundary in ("open", "wall"):
        problem = ShallowWater(boundary=boundary)
        V = problem.function_space(problem.mesh(8))
        u = Function(V)
        F = problem.residual(u, TestFunction(V))
        generator = torch.Generator().manual_seed(0)
        U = 0.3 * torch.randn(8, V.dim(), dtype=torch.float64, generator=generator)
        assert max_relative_error(ResidualOperator(F, u)(U).numpy(), assembled(F, u, U)) < 1e-13
        drift = PhysicsDrift(F, u)
        mass = assemble(TestFunction(V)[0] * dx).dat.data_ro[0, 0]         # every cell's area
        expected = -assembled(F, u, U) / mass
        assert max_relative_error(drift(0.0, U).numpy(), expected) < 1e-13


def test_lumped_mass_on_squares():
    """The HRZ lumped mass (the diagonal, scaled to the cell's mass) that scales the model's
    noise, on the squares' tensor-product quadrature: a DG0 cell's is its area, and DQ1's four
    nodes share it equally."""
    mesh = ShallowWater().mesh(8)
    for degree, share in ((0, 1.0), (1, 0.25)):
        diag = MassOperator(FunctionSpace(mesh, "DQ", degree), "lumped").diag.numpy()
        assert np.allclose(diag, share * (5 / 8) ** 2, rtol=1e-13, atol=0)
