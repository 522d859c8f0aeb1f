r"""The multiscale SDE on the coarse mesh and its product-of-experts decoder.

State :math:`z = (u, h)`: :math:`u` on the coarse observed space :math:`V_H` (``N_u`` dofs,
``c`` components per node), :math:`h` with :math:`n_h` channels on the coarse scalar nodes
(``N_H * n_h`` values, node-major). The SDE is

.. math::

    du = [f_{phys}(u) + C_\theta(u, h)]\,dt + \sigma_u\,dW_u,\qquad
    dh = [-\kappa h + a \tanh(G_\theta(u, h) / a)]\,dt + \sigma_h\,dW_h,

with the physics drift :math:`f_{phys} = -M^{-1}F_H(u)` of the coarse discretisation (from the
torch bridge), and the learned terms in weak form at the quadrature points,

.. math:: M\,[C_\theta; G_\theta]_i = \int_\Omega s_\theta(\xi)\,v_i + \tau_\theta(\xi)\cdot\nabla v_i\,dx
          + \sum_m \int_{\Gamma_m} s^m_\theta(u, h)\,v_i\,ds,
          \qquad \xi = (u, \nabla u, h, \nabla h),

so one network serves any mesh and resolution (on a finer mesh than the training one, the
closure is of first order in the cell width: :class:`NeuralWeakForm`). The boundary terms, one per marked part
:math:`\Gamma_m` of the boundary, carry what the coarse mesh misses at walls, holes and inflows: an
under-resolved boundary layer changes the flux through the boundary, which a source in the
interior, the same function of :math:`\xi` everywhere, cannot put there. The closure is a force in the coarse
discretisation: its residual joins :math:`-F_H(u)` before the physics' mass solve, which holds the
Dirichlet rows and the algebraic constraints, :math:`M\dot u = -F_H(u) + R_\theta`. In
incompressible flow the pressure answers the closure too, and :math:`u` stays discretely
divergence-free; solved apart, nothing removes a closure's divergent part, and it accumulates
over a forecast until the forecast blows up.
The flux is conservative; by default it is a learned eddy diffusivity per channel, and
dissipative (:class:`NeuralWeakForm`).
The auxiliary dynamics are dissipative by construction: a learned damping :math:`\kappa > 0` and a
bounded forcing (amplitude :math:`a`, per channel) keep :math:`|h| \le a/\kappa` plus noise,
whatever the network learned. Trained only at posterior samples, an unconstrained
:math:`G_\theta` is free to have unstable modes off the data (eigenvalues of
:math:`\partial G/\partial h` with a positive real part), and a forecast finds them.
Where the boundary conditions prescribe every component of :math:`u`, nothing is unresolved:
:math:`h = 0` on those nodes. Left free, :math:`h` there is unobserved (the data's residual
vanishes on a Dirichlet boundary), so nothing trains its dynamics, and the latent drift's
unstable modes gather there.
The diffusion is diagonal and learned per channel, scaled by :math:`(\bar m / m_i)^{1/2}` with the
lumped mass :math:`m_i`, so the noise is that of a field, consistent under refinement.
"""
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from firedrake import (COMM_SELF, Function, FunctionSpace, TestFunction, TrialFunction, assemble,
                       ds, dx, interpolate)
from firedrake.mesh import MeshGeometry, MeshSequenceGeometry
from finat.ufl import FiniteElement
from torch import nn
from torch.nn.functional import softplus

from firedrake_msm import checkpoint
from firedrake_msm.bridge import PhysicsDrift
from firedrake_msm.bridge.mass import MassOperator, bc_dofs, to_torch_sparse
from firedrake_msm.checkpoint import dataset_image, load_mesh_image, load_space_image, mesh_image
from firedrake_msm.data import dataset_problem
from firedrake_msm.decoder import Decoder
from firedrake_msm.networks import inverse_softplus, mlp
from firedrake_msm.posterior import Encoder, GaussianProcessSmoother
from firedrake_msm.meshes import load_mesh
from firedrake_msm.problems import reference, resolve
from firedrake_msm.transfer import Transfer, cell_width, mean_width, scalar_space, scipy_matrix


class NeuralWeakForm(nn.Module):
    r"""A learned source and flux at the quadrature points of a scalar space, and a learned
    source on each marked part of the boundary, tested against its basis: ``(B, N, c)`` channels
    :math:`X` to ``(B, N, c)`` residuals

    .. math:: R_{ic} = \sum_q w_q \bigl[s_c(\xi_q)\,\phi_i(x_q) + \tau_c(\xi_q)\cdot\nabla\phi_i(x_q)\bigr]
              + \sum_m w^m_i\, s^m_c(X_i),
              \qquad w^m_i = \int_{\Gamma_m} \phi_i\,ds,

    :math:`\xi_q` the channels and their gradients at :math:`x_q`. Moved to a finer mesh
    (:meth:`MultiscaleModel.on_mesh`), the closure is of first order in the mean cell width
    :math:`\bar\Delta` (:func:`~firedrake_msm.transfer.mean_width`) against the training
    mesh's :math:`\bar\Delta_0`, with :math:`r = \min(\bar\Delta/\bar\Delta_0, 1)`: the networks see
    the channels' variation across a cell of the training mesh, :math:`\xi = (X, r\nabla X)`, and
    their sources and flux are multiplied by :math:`r`,

    .. math:: s = r\,\hat s(\xi),\qquad \tau = r\,\hat\tau(\xi).

    A finer mesh resolves more of the field and misses less of it; one function of
    :math:`(X, \nabla X)` on every mesh would put back there all it learned to put back on the
    training mesh, and sharper resolved gradients would leave the range it learned them on. On a
    coarser mesh (:math:`r = 1`) it puts back what it learned: more is unresolved there, but
    nothing says how much more, and a larger learned flux or source, extrapolated past its
    training data, is free to grow a forecast without bound. On the training mesh :math:`r = 1`.
    The order is an assumption: data on one mesh cannot fix it. The boundary sources are
    lumped at the nodes (the trapezoidal rule on the facets, for P1), functions of the channels'
    nodal values: one network gives :math:`s^m` for every marker :math:`m` of the mesh's
    exterior facets, and it starts at zero. Two fluxes:

    - ``"dissipative"``: :math:`\tau_c = -\nu_c(\xi)\nabla X_c`, a learned eddy diffusivity
      :math:`\nu_c = \nu_0\,\mathrm{softplus}(\cdot) \ge 0`. It dissipates every channel's
      :math:`L^2` energy (:math:`X_c^T R^{flux}_c = -\int \nu_c |\nabla X_c|^2 \le 0`) whatever the
      network learned.
    - ``"free"``: :math:`\tau_c(\xi)` any function. It can sharpen (an anti-diffusion, which
      the coarse advected pulse needs), and it can act as a negative viscosity, which grows
      grid-scale modes at a rate of order :math:`|\partial\tau/\partial\nabla X|/\Delta^2`.
      Keep it to problems whose coarse solution needs the sharpening; where a viscous front
      or boundary layer is under-resolved, use the dissipative flux: a free one learns a
      negative viscosity there.

    With ``bounded=True`` the source is :math:`s_c = b_c\tanh((\hat s_c(\xi) - \hat s_c(\xi_0)) / b_c)`
    with a learned bound :math:`b_c > 0` per channel (:meth:`MultiscaleSDE.calibrate` starts it
    at ten times the channel's scale per unit time). Trained only at posterior samples, an
    unbounded source can grow without limit off the data, and a forecast that leaves them then
    blows up; bounded, the rate it gives a channel (its :math:`L^2` projection) has an
    :math:`L^2` norm of at most :math:`b_c|\Omega|^{1/2}`, and with the dissipative flux nothing
    in the closure can make a forecast blow up. As a correction of a physics prior
    (``uniform=True``) it vanishes where the resolved field is locally uniform and the auxiliary
    channels at rest, :math:`\xi_0 = (u, 0, 0, 0)`: nothing varies below the grid there, so
    nothing is unresolved. A source free there would fill the quiet parts of the domain, where
    the data hold it to nothing but its value at zero: a constant offset at the rate
    :math:`b_c`, or a growth of the small values a forecast leaves behind a front. As the whole
    drift (``uniform=False``: no physics prior) it must act on uniform fields too, and vanishes
    only at rest, :math:`\xi_0 = 0`. The boundary sources are bounded the same way, with a bound
    per marker and channel, and vanish at rest (:math:`X = 0`): at a wall, a uniform field still
    meets the boundary's under-resolved flux.

    The tabulations :math:`E = [\phi_j(x_q)]` and :math:`D_k = [\partial_k\phi_j(x_q)]` are
    assembled once by Firedrake (interpolation into a quadrature space), the weights as
    ``assemble(TestFunction(Q) * dx)``. The network's inputs are divided by :attr:`scale` (set
    from data by :meth:`MultiscaleSDE.calibrate`) so it sees order-one values.

    Parameters
    ----------
    V : firedrake.FunctionSpace
        A scalar space.
    channels : int
        :math:`c`.
    resolved : int
        How many of the channels come first as the resolved field (the rest are auxiliary).
    flux : str
        ``"dissipative"`` or ``"free"``.
    width, depth : int
        The network's size.
    diffusivity : float
        :math:`\nu_0`, in units of length² per time (dissipative flux).
    bounded : bool
        Bound the sources (see above).
    uniform : bool
        The bounded source vanishes on locally uniform fields (see above), not only at rest.
    boundary : bool
        Learn the boundary sources (where the mesh has exterior facets).
    refinement : float
        :math:`r`, in (0, 1] (see above).
    degree : int, optional
        The quadrature degree (default: twice the element's). The network runs at every point,
        so the points set the closure's cost; but with one point a cell (degree 1 on P1) the
        learned source is one value per cell, too coarse to train well.
    """

    def __init__(self, V, channels, resolved, *, flux="dissipative", width=64, depth=2, diffusivity=1e-3,
                 bounded=True, uniform=True, boundary=True, refinement=1.0, degree=None):
        super().__init__()
        if flux not in ("dissipative", "free"):
            raise ValueError(f"flux must be 'dissipative' or 'free', not {flux!r}")
        mesh = V.mesh()
        self.gdim = mesh.geometric_dimension
        degree = degree or 2 * V.ufl_element().embedded_superdegree
        Q = FunctionSpace(mesh, FiniteElement("Quadrature", mesh.ufl_cell(), degree=degree,
                                              quad_scheme="default"))
        v = TrialFunction(V)
        blocks = [v] + [v.dx(k) for k in range(self.gdim)]
        tables = sp.vstack([scipy_matrix(assemble(interpolate(b, Q))) for b in blocks]).tocsr()
        if not 0 < refinement <= 1:
            raise ValueError(f"the refinement must be in (0, 1], not {refinement!r}")
        self.refinement = refinement
        weights = refinement * assemble(TestFunction(Q) * dx(degree=degree)).dat.data_ro
        self.register_buffer("tables", to_torch_sparse(tables), persistent=False)
        self.register_buffer("tables_t", to_torch_sparse(tables.T.tocsr()), persistent=False)
        self.register_buffer("weights", torch.as_tensor(np.tile(weights, 1 + self.gdim)), persistent=False)
        self.register_buffer("scale", torch.ones(channels * (1 + self.gdim)))
        self.channels, self.flux, self.diffusivity = channels, flux, diffusivity
        self.resolved = resolved if uniform else 0
        outputs = (2 if flux == "dissipative" else 1 + self.gdim) * channels
        self.net = mlp(channels * (1 + self.gdim), outputs, width, depth)
        self.raw_bound = nn.Parameter(torch.full((channels,), inverse_softplus(10.0))) if bounded else None
        self.boundary_net = None
        if boundary and mesh.exterior_facets.set.total_size > 0:
            markers = mesh.exterior_facets.unique_markers
            lumped = refinement * np.stack([assemble(TestFunction(V) * ds(int(m))).dat.data_ro
                                            for m in markers], axis=1)
            self.register_buffer("boundary_weights", torch.as_tensor(lumped), persistent=False)     # (N, m)
            self.boundary_net = mlp(channels, len(markers) * channels, width, depth)
            # Zero until data moves it: a part of the boundary that the data never reach (an outlet
            # the flow has not come to yet) keeps no source there, where a random network's slope
            # at rest, on inputs scaled to order one, would grow a forecast from its noise.
            nn.init.zeros_(self.boundary_net[-1].weight)
            nn.init.zeros_(self.boundary_net[-1].bias)
            self.raw_boundary_bound = None
            if bounded:
                initial = torch.full((len(markers), channels), inverse_softplus(10.0))
                self.raw_boundary_bound = nn.Parameter(initial)

    def at_points(self, X):
        """Channels ``(B, N, c)`` and their gradients at the points: ``(B, Q, 1 + gdim, c)``."""
        B, N, C = X.shape
        Y = torch.sparse.mm(self.tables, X.permute(1, 0, 2).reshape(N, B * C))       # ((1+d) Q, B C)
        return Y.view(1 + self.gdim, -1, B, C).permute(2, 1, 0, 3)

    def features(self, xi):
        """The networks' inputs from :meth:`at_points`: the channels and their gradients in the
        training mesh's units, :math:`(X, r\\nabla X)`, ``(B, Q, (1 + gdim) c)``, before
        :attr:`scale`."""
        return torch.cat([xi[:, :, :1], self.refinement * xi[:, :, 1:]], dim=2).flatten(-2)

    def forward(self, X):
        B, N, C = X.shape
        xi = self.at_points(X)                                                         # (B, Q, 1+d, C)
        out = self.net(self.features(xi) / self.scale)
        source = out[..., :C]                                                          # (B, Q, C)
        if self.raw_bound is not None:
            bound = softplus(self.raw_bound)
            uniform = torch.zeros_like(xi)
            uniform[:, :, 0, :self.resolved] = xi[:, :, 0, :self.resolved]
            rest = self.net(uniform.flatten(-2) / self.scale)[..., :C]
            source = bound * torch.tanh((source - rest) / bound)
        if self.flux == "dissipative":
            flux = -self.diffusivity * softplus(out[..., C:])[:, :, None] * xi[:, :, 1:]  # (B, Q, d, C)
        else:
            flux = out[..., C:].unflatten(-1, (self.gdim, C))
        out = torch.cat([source[:, :, None], flux], dim=2).permute(2, 1, 0, 3).reshape(-1, B * C)
        R = torch.sparse.mm(self.tables_t, self.weights[:, None] * out).view(N, B, C).transpose(0, 1)
        if self.boundary_net is None:
            return R
        scale = self.scale[:C]
        boundary = self.boundary_net(X / scale).unflatten(-1, (-1, C))               # (B, N, m, C)
        if self.raw_boundary_bound is not None:
            bound = softplus(self.raw_boundary_bound)
            rest = self.boundary_net(torch.zeros_like(scale)).unflatten(-1, (-1, C))
            boundary = bound * torch.tanh((boundary - rest) / bound)
        return R + torch.einsum("nm,bnmc->bnc", self.boundary_weights, boundary)


class MultiscaleSDE(nn.Module):
    r"""The learned SDE, in torchsde's interface (``f``, ``g_prod``; Itô, additive noise).

    The diffusion :math:`\Sigma_\theta = \mathrm{diag}\,\sigma` does not depend on the state,
    so the noise is additive: torchsde's SRK then takes the two-stage SRA1 scheme, three drift
    evaluations a step, where diagonal noise takes SRID2's ten.

    Parameters
    ----------
    V : firedrake.FunctionSpace
        The coarse observed space of :math:`u`.
    n_latent : int
        :math:`n_h`; 0 gives the implicit-scale model (closure only).
    physics : callable, optional
        ``physics(t, U)``: the coarse physics drift ``(B, N_u) -> (B, N_u)`` (a
        :class:`~firedrake_msm.bridge.PhysicsDrift`); None learns the whole drift.
    fixed_dofs : sequence of int
        Dofs of :math:`u` held by Dirichlet conditions: no closure, no noise there; and
        :math:`h = 0` on the nodes where every component of :math:`u` is held.
    flux : str
        The closure's flux, ``"dissipative"`` or ``"free"`` (:class:`NeuralWeakForm`).
    bounded_source : bool
        Bound the closure's sources (:class:`NeuralWeakForm`).
    boundary_closure : bool
        Learn sources on the marked parts of the boundary (:class:`NeuralWeakForm`).
    width, depth : int
        The weak-form network's size.
    noise : float
        Initial diffusion per channel.
    damping : float
        Initial :math:`\kappa` of the auxiliary channels (per unit time); the forcing amplitude
        :math:`a` starts at the same value, so :math:`|h| \lesssim 1`.
    refinement : float
        The closure's :math:`r` (:class:`NeuralWeakForm`).
    """
    noise_type, sde_type = "additive", "ito"

    def __init__(self, V, n_latent=5, *, physics=None, fixed_dofs=(), flux="dissipative", bounded_source=True,
                 boundary_closure=True, width=64, depth=2, noise=1e-2, damping=50.0, refinement=1.0):
        super().__init__()
        Vs = scalar_space(V)
        self.n_nodes, self.n_components, self.n_latent = Vs.dim(), V.block_size, n_latent
        self.n_u = self.n_nodes * self.n_components
        self.size = self.n_u + self.n_nodes * n_latent
        channels = self.n_components + n_latent
        self.physics = physics
        self.closure = NeuralWeakForm(Vs, channels, self.n_components, flux=flux, width=width, depth=depth,
                                      bounded=bounded_source, uniform=physics is not None,
                                      boundary=boundary_closure, refinement=refinement)
        self.mass = MassOperator(Vs)
        lumped = MassOperator(Vs, "lumped").diag.numpy()       # HRZ: positive for any degree
        spread = np.sqrt(lumped.mean() / lumped)
        self.register_buffer("spread", torch.as_tensor(np.concatenate(
            [np.repeat(spread, self.n_components), np.repeat(spread, n_latent)])), persistent=False)
        fixed_dofs = np.asarray(fixed_dofs, dtype=np.int64)
        held = np.bincount(fixed_dofs // self.n_components, minlength=self.n_nodes) == self.n_components
        self.register_buffer("latent_mask", torch.as_tensor(~held, dtype=torch.float64)[:, None],
                             persistent=False)                                        # (N_H, 1)
        mask = torch.ones(self.size, dtype=torch.float64)
        mask[torch.as_tensor(fixed_dofs)] = 0.0
        mask[self.n_u:] = self.latent_mask.expand(-1, n_latent).reshape(-1)
        self.register_buffer("mask", mask, persistent=False)
        self.raw_sigma = nn.Parameter(torch.full((channels,), inverse_softplus(noise)))
        channel = np.concatenate([np.tile(np.arange(self.n_components), self.n_nodes),
                                  np.tile(self.n_components + np.arange(n_latent), self.n_nodes)])
        self.register_buffer("channel", torch.as_tensor(channel), persistent=False)
        self.raw_damping = nn.Parameter(torch.full((n_latent,), inverse_softplus(damping)))
        self.raw_amplitude = nn.Parameter(torch.full((n_latent,), inverse_softplus(damping)))

    def split(self, z):
        """``(..., D)`` to ``u`` ``(..., N_u)`` and ``h`` ``(..., N_H, n_h)``."""
        return z[..., :self.n_u], z[..., self.n_u:].unflatten(-1, (self.n_nodes, self.n_latent))

    def channels(self, z):
        """``(..., D)`` to the nodal channels ``(..., N_H, c + n_h)``, with :math:`h = 0` where
        :math:`u` is prescribed."""
        u, h = self.split(z)
        return torch.cat([u.unflatten(-1, (self.n_nodes, self.n_components)), h * self.latent_mask], dim=-1)

    def sigma(self):
        """The diffusion :math:`\\sigma`, ``(D,)``: zero on fixed dofs."""
        return softplus(self.raw_sigma)[self.channel] * self.spread * self.mask

    def f(self, t, z):
        """The drift, ``(B, D) -> (B, D)``; ``t`` only reaches the physics (time-dependent
        boundary data)."""
        R = self.closure(self.channels(z))                                            # (B, N, C)
        B, c = R.shape[0], self.n_components
        u, h = self.split(z)
        if self.physics is None:
            resolved = self._solve_mass(R[..., :c])
        else:
            resolved = self.physics(t, u, forcing=R[..., :c].reshape(B, -1))
        a, kappa = softplus(self.raw_amplitude), softplus(self.raw_damping)
        latent = a * torch.tanh(self._solve_mass(R[..., c:]) / a) - kappa * h
        return torch.cat([resolved.reshape(B, -1), latent.reshape(B, -1)], dim=1) * self.mask

    def parts(self, t, z):
        r"""The drift's parts, each ``(B, ·)``: ``"physics"`` (the coarse discretisation alone),
        ``"closure"`` (what the learned residual adds to :math:`u`'s rate), ``"latent forcing"``
        (:math:`a\tanh(G/a)`) and ``"latent damping"`` (:math:`-\kappa h`). They sum to
        :meth:`f` (on the free dofs); for telling which part of a diverging forecast grew."""
        R = self.closure(self.channels(z))
        B, c = R.shape[0], self.n_components
        u, h = self.split(z)
        forcing = R[..., :c].reshape(B, -1)
        if self.physics is None:
            physics, resolved = torch.zeros_like(u), self._solve_mass(R[..., :c]).reshape(B, -1)
        else:
            physics, resolved = self.physics(t, u), self.physics(t, u, forcing=forcing)
        a, kappa = softplus(self.raw_amplitude), softplus(self.raw_damping)
        return {"physics": physics, "closure": resolved - physics,
                "latent forcing": (a * torch.tanh(self._solve_mass(R[..., c:]) / a)).reshape(B, -1),
                "latent damping": (-kappa * h).reshape(B, -1)}

    def _solve_mass(self, R):
        """:math:`M^{-1}` channel by channel: ``(B, N, k) -> (B, N, k)``."""
        B, N, k = R.shape
        return self.mass.solve(R.permute(0, 2, 1).reshape(B * k, N)).view(B, k, N).transpose(1, 2)

    def g_prod(self, t, z, v):
        r""":math:`\Sigma_\theta v`, ``(B, D)``: the noise of Brownian increments ``v``."""
        return self.sigma() * v

    @torch.no_grad()
    def calibrate(self, z):
        """Set the network's input scales from encoded data ``(B, D)``: the standard deviation of
        each component of :math:`u` and of its gradient over samples and points, and the source's
        bound at ten times each component's scale per unit time. The auxiliary channels keep scale
        one: their size is learned, and an untrained encoder's is arbitrary."""
        closure = self.closure
        features = closure.features(closure.at_points(self.channels(z))).flatten(0, 1)
        channel = torch.arange(features.shape[1], device=z.device) % closure.channels
        observed = channel < self.n_components
        scale = torch.where(observed, features.std(0).clamp_min(1e-6), torch.ones_like(closure.scale))
        closure.scale.copy_(scale)
        if closure.raw_bound is not None:
            values = scale[:closure.channels]              # the channels' own values come first
            closure.raw_bound.copy_(torch.log(torch.expm1(10.0 * values)))
            if closure.boundary_net is not None:
                closure.raw_boundary_bound.copy_(torch.log(torch.expm1(10.0 * values)).expand_as(
                    closure.raw_boundary_bound))


@dataclass
class ModelConfig:
    r"""What a :class:`MultiscaleModel` is built from (stored in its checkpoints).

    Attributes
    ----------
    problem : Problem, type or str, optional
        The problem whose coarse discretisation is the physics prior: anything
        :func:`~firedrake_msm.problems.resolve` takes (default: the one the dataset names).
    problem_options : dict
        Keyword arguments of the problem's constructor, where ``problem`` is a class or a name.
    coarse : int, str or pathlib.Path, optional
        The coarse mesh: a resolution the problem's :meth:`~firedrake_msm.problems.Problem.mesh`
        takes (default: the problem's own), or the path of a Gmsh ``.msh``/``.geo`` file.
    n_latent : int
        Auxiliary channels :math:`n_h` (0: the implicit-scale model).
    physics : bool
        Include the coarse physics drift (False: a purely learned drift, as the reference code).
    flux : str
        The closure's flux: ``"dissipative"`` (a learned eddy diffusivity, stable by
        construction) or ``"free"`` (any function of the channels and their gradients).
    bounded_source : bool
        Bound the closure's sources by a learned constant per channel, and make them vanish at
        rest (:class:`NeuralWeakForm`): with the dissipative flux, the closure cannot make a
        forecast blow up.
    boundary_closure : bool
        Learn a source on each marked part of the coarse mesh's boundary
        (:class:`NeuralWeakForm`): what an under-resolved boundary layer does to the flux
        through a wall or a hole.
    filter_width : float
        Helmholtz filter width of the restriction in units of the local coarse cell size
        :math:`\Delta = |K|^{1/d}` (:func:`~firedrake_msm.transfer.cell_width`); 0.41 matches the
        second moment of a Gaussian filter two cells wide (:math:`\alpha = \Delta/\sqrt{24}`). A
        width following the local cell keeps the boundary layers of graded meshes, which a
        width from the mean cell smooths away.
    local_decoder : bool
        Free decoder weights per stencil entry, fitted to data
        (:class:`~firedrake_msm.decoder.Decoder`), instead of one learned function of the
        offset: for sub-grid structure tied to the geometry, on the fine mesh of the training
        data only.
    width, depth, features : int
        Network sizes.
    damping : float
        Initial damping rate of the auxiliary channels, per unit time
        (:class:`MultiscaleSDE`).
    reference_width : float, optional
        The training mesh's mean cell width :math:`\bar\Delta_0`
        (:func:`~firedrake_msm.transfer.mean_width`), against which the closure is of first order
        on a finer mesh (:class:`NeuralWeakForm`); set when the model is built, kept by
        :meth:`MultiscaleModel.on_mesh`.
    """
    problem: object = None
    problem_options: dict = field(default_factory=dict)
    coarse: object = None
    n_latent: int = 5
    physics: bool = True
    flux: str = "dissipative"
    bounded_source: bool = True
    boundary_closure: bool = True
    filter_width: float = 0.41
    local_decoder: bool = False
    width: int = 64
    depth: int = 2
    features: int = 16
    damping: float = 50.0
    reference_width: float = None

    def __post_init__(self):
        for name in ("n_latent", "width", "depth", "features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "n_latent" else 1):
                raise ValueError(f"ModelConfig.{name} must be an integer of at least "
                                 f"{0 if name == 'n_latent' else 1}, not {value!r}")
        if self.flux not in ("dissipative", "free"):
            raise ValueError(f"ModelConfig.flux must be 'dissipative' or 'free', not {self.flux!r}")
        if not self.filter_width >= 0 or not self.damping > 0:
            raise ValueError(f"ModelConfig.filter_width must be >= 0 and damping > 0, not "
                             f"{self.filter_width!r} and {self.damping!r}")


class MultiscaleModel(nn.Module):
    """Everything that is learned: :class:`~firedrake_msm.posterior.Encoder`,
    :class:`~firedrake_msm.posterior.GaussianProcessSmoother`, :class:`MultiscaleSDE` and
    :class:`~firedrake_msm.decoder.Decoder`, on a coarse mesh, for data on a fine one.

    Build one with :meth:`build` (for a dataset) or :meth:`load` (from a checkpoint alone);
    :meth:`save` writes one. The constructor takes the meshes as ``CheckpointFile`` images
    (:mod:`firedrake_msm.checkpoint`), so that a model is rebuilt with the same numbering
    wherever it is loaded.

    Attributes ``problem``, ``V`` (the coarse observed space), ``state`` (a coarse Function of the
    problem's full, possibly mixed, space) and ``transfer`` (whose ``V_fine`` is the fine space)
    are the Firedrake side; ``config`` is the :class:`ModelConfig` with the problem named by
    :func:`~firedrake_msm.problems.reference`.

    Parameters
    ----------
    config : ModelConfig
    images : dict
        ``"fine"``: the fine space's image (:func:`~firedrake_msm.checkpoint.dataset_image`),
        ``"coarse"``: the coarse mesh's (:func:`~firedrake_msm.checkpoint.mesh_image`), and
        ``"coarse_name"``: that mesh's name.
    """

    def __init__(self, config, images):
        super().__init__()
        self.problem = problem = resolve(config.problem, config.problem_options)
        name, options = reference(problem)
        V_fine, _ = load_space_image(images["fine"])
        mesh = load_mesh_image(images["coarse"], images["coarse_name"])
        width = mean_width(mesh)
        self.config = config = replace(config, problem=name, problem_options=options,
                                       reference_width=config.reference_width or width)
        self.images = images
        if mesh.geometric_dimension != V_fine.mesh().geometric_dimension:
            raise ValueError(f"the coarse mesh is {mesh.geometric_dimension}D and the data's fine mesh "
                             f"{V_fine.mesh().geometric_dimension}D: they must cover the same domain")
        W = problem.function_space(mesh)
        self.state = Function(W)
        observed = problem.observed(self.state).function_space()
        self.V = observed.collapse() if observed.index is not None else observed
        bcs = problem.bcs(W)
        physics = None
        if config.physics:
            physics = PhysicsDrift(problem.residual(self.state, TestFunction(W)), self.state, bcs,
                                   prognostic=problem.prognostic)
        fixed = bc_dofs(W, bcs)
        self.transfer = Transfer(V_fine, self.V, filter_width=config.filter_width * cell_width(mesh))
        self.encoder = Encoder(V_fine, self.V, config.n_latent, features=config.features, width=config.width,
                               depth=config.depth)
        self.smoother = GaussianProcessSmoother(self.V.block_size + config.n_latent)
        self.sde = MultiscaleSDE(self.V, config.n_latent, physics=physics,
                                 fixed_dofs=fixed[fixed < self.V.dim()], width=config.width,
                                 flux=config.flux, bounded_source=config.bounded_source,
                                 boundary_closure=config.boundary_closure, depth=config.depth,
                                 damping=config.damping, refinement=min(width / config.reference_width, 1.0))
        self.decoder = Decoder(self.transfer, config.n_latent, local=config.local_decoder)

    @classmethod
    def build(cls, dataset, config=None, *, mesh=None):
        """A new model for the data of ``dataset`` (a file of :mod:`firedrake_msm.recorder`).

        Parameters
        ----------
        dataset : str or pathlib.Path
        config : ModelConfig, optional
            Default ``ModelConfig()``: the dataset's problem on its default coarse mesh.
        mesh : firedrake.MeshGeometry, optional
            The coarse mesh, on one process (e.g. from :func:`~firedrake_msm.meshes.load_mesh`
            with ``comm=COMM_SELF``); default: as ``config.coarse`` says.
        """
        config = config or ModelConfig()
        if config.problem is None:
            name, options = dataset_problem(dataset)
            config = replace(config, problem=name, problem_options=options)
        problem = resolve(config.problem, config.problem_options)
        mesh = _coarse_mesh(problem, config.coarse if mesh is None else mesh)
        images = {"fine": dataset_image(dataset), "coarse": mesh_image(mesh), "coarse_name": mesh.name}
        return cls(replace(config, problem=problem, problem_options={}), images)

    def on_mesh(self, mesh):
        r"""The same learned model on another coarse mesh of the same domain.

        Every learned function is one of the local fields and their variation across a cell at
        quadrature points (:class:`NeuralWeakForm`), or of offsets scaled by the local cell
        (:class:`~firedrake_msm.networks.StencilField`), so the parameters carry over to any
        mesh: the physics prior, the transfer and the tabulations are rebuilt on ``mesh``, for
        the same fine data. The closure keeps its reference width
        (:attr:`ModelConfig.reference_width`): on a finer mesh it puts back less, at first order
        in the mean cell width, and on a coarser one what it learned (:class:`NeuralWeakForm`).

        Parameters
        ----------
        mesh : firedrake.MeshGeometry, int, str or pathlib.Path
            The new coarse mesh (on one process), a resolution of the problem's
            :meth:`~firedrake_msm.problems.Problem.mesh`, or a Gmsh ``.msh``/``.geo`` file.

        Returns
        -------
        MultiscaleModel
            In the same mode, dtype and device, with this model's :attr:`metadata`.

        Raises
        ------
        ValueError
            Where a parameter belongs to this mesh: a local decoder's weights (one per stencil
            entry), or boundary sources for other boundary markers than ``mesh`` has.
        """
        if self.config.local_decoder:
            raise ValueError("a local decoder's weights belong to the training meshes' stencil (one per "
                             "entry): only a model with local_decoder=False moves to another mesh")
        # What the config records of the new mesh: the resolution or file, else the mesh's name.
        mesh, coarse = _coarse_mesh(self.problem, mesh), mesh
        if isinstance(coarse, (MeshGeometry, MeshSequenceGeometry)):
            coarse = mesh.name
        images = {**self.images, "coarse": mesh_image(mesh), "coarse_name": mesh.name}
        parameter = next(self.parameters())
        moved = type(self)(replace(self.config, coarse=coarse), images)
        moved = moved.to(dtype=parameter.dtype, device=parameter.device)
        theirs = moved.state_dict()
        mismatched = [k for k, v in self.state_dict().items() if theirs[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"{', '.join(mismatched)} differ in shape on {mesh.name!r}: the two meshes' "
                             "boundaries are marked differently (the boundary sources are per marker)")
        moved.load_state_dict(self.state_dict())
        moved.metadata = getattr(self, "metadata", {})
        return moved.train(self.training)

    def save(self, path, **contents):
        """Write the model to ``path`` (atomically), with more ``contents`` (tensors, numbers,
        strings, lists and dicts: a training run adds its optimiser's state). The file is all that
        :meth:`load` needs."""
        checkpoint.save(path, {"model": self.state_dict(), "model_config": asdict(self.config),
                               "images": self.images,
                               "version": version("firedrake-msm"), **contents})

    @classmethod
    def load(cls, path, *, device="cpu"):
        """The model of a checkpoint, in evaluation mode, with the averaged parameters where the
        run kept an average. The checkpoint's other contents are in the model's ``metadata``.

        Raises
        ------
        FileNotFoundError, firedrake_msm.checkpoint.CheckpointError
            No such file; a corrupt, foreign or other-version file.
        firedrake_msm.problems.ProblemNotFound
            When the problem it names cannot be imported here.
        """
        contents = checkpoint.read(path, map_location=device)
        model = cls(ModelConfig(**contents["model_config"]), contents["images"])
        dtype = contents.get("train_config", {}).get("dtype", "float64")
        model = model.to(dtype=getattr(torch, dtype), device=device)
        model.load_state_dict({**contents["model"], **(contents.get("average") or {})})
        model.metadata = {k: v for k, v in contents.items() if k not in ("model", "average", "images")}
        return model.eval()

    def encode(self, fine):
        """Mean ``(..., D)`` of the latent state at fine snapshots ``(..., N_h)`` and the
        log-variance of each channel, ``(c + n_h,)`` (``self.sde.channel[d]`` is dof ``d``'s)."""
        coarse = self.transfer.restrict(fine.reshape(-1, fine.shape[-1])).view(*fine.shape[:-1], -1)
        residual = fine - self.transfer.prolong(coarse.reshape(-1, coarse.shape[-1])).view(fine.shape)
        return self.encoder(coarse, residual)

    @torch.no_grad()
    def calibrate(self, fine):
        """Scale the networks to data, ``(B, N_h)`` fine snapshots: the closure's inputs from the
        encoded states, the decoder from the restricted ones (:meth:`Decoder.calibrate`)."""
        mean, _ = self.encode(fine)
        self.sde.calibrate(mean)
        self.decoder.calibrate(self.transfer.restrict(fine), fine)

    @torch.no_grad()
    def calibrate_decoder(self, fine):
        """Fit the decoder to a trained encoder, from fine snapshots ``(B, N_h)``: its standard
        deviations, and local weights from the encoded :math:`(u, h)` (:meth:`Decoder.calibrate`).
        For a model warm-started with another kind of decoder."""
        mean, _ = self.encode(fine)
        h = self.sde.channels(mean)[..., self.decoder.n_components:]
        self.decoder.calibrate(self.transfer.restrict(fine), fine, h=h)

    def decode(self, z):
        """PoE mean ``(..., N_h)`` and variance of the fine field at states ``z`` ``(..., D)``."""
        return self.decoder(z[..., :self.sde.n_u], self.sde.channels(z))


def _coarse_mesh(problem, coarse):
    """The coarse mesh that ``coarse`` names, on one process: a mesh, a resolution of the
    problem's (None: its default) or a Gmsh file."""
    if isinstance(coarse, (MeshGeometry, MeshSequenceGeometry)):
        coarse = coarse.unique()        # a mixed space's mesh is a sequence of one mesh
        if coarse.comm.size != 1:
            raise ValueError(f"the coarse mesh is distributed over {coarse.comm.size} processes: load it "
                             "with comm=COMM_SELF (every process holds the whole coarse mesh)")
        return coarse
    coarse = problem.coarse if coarse is None else coarse
    if isinstance(coarse, (str, Path)) and Path(coarse).suffix in (".msh", ".geo"):
        return load_mesh(coarse, comm=COMM_SELF)[0]
    return problem.mesh(coarse, comm=COMM_SELF)
