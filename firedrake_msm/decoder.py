r"""The product-of-experts observation model on the fine mesh: how a coarse state and its
auxiliary channels explain a fine snapshot."""
import torch
from torch import nn
from torch.nn.functional import softplus

from firedrake_msm.elbo import product_of_experts
from firedrake_msm.networks import StencilField, inverse_softplus
from firedrake_msm.transfer import coarse_stencil


class Decoder(nn.Module):
    r"""The product-of-experts observation model on the fine mesh.

    Macro expert :math:`N(y; Pu, s_u^2)`, micro expert :math:`N(y; Pu + D_\theta(u, h), s_h^2)`,
    with the local neural field

    .. math:: D_\theta(u, h)(x_j) = \sum_{i \in K(x_j)} \phi_i(x_j)\sum_c \psi_c(\delta_{ij})\,z_{ic},
              \qquad z_i = (u_i, h_i),

    over the nodes :math:`i` of the coarse cell :math:`K` containing :math:`x_j`
    (:class:`~firedrake_msm.networks.StencilField`): a learned sub-cell basis that the state
    weighs. With :math:`n_h = 0` it still sharpens what :math:`u` alone determines. The normalised
    product (:func:`~firedrake_msm.elbo.product_of_experts`) has variance :math:`V` and mean
    :math:`Pu + (V/s_h^2) D_\theta`. The standard deviations are learned constants (softplus,
    initially ``std``; :meth:`calibrate` sets them from data).

    With ``local=True`` the weights are free per stencil entry, :math:`D_\theta(u, h)(x_j) =
    \sum_{i \in K(x_j)} W_{ji} z_i`, and :meth:`calibrate` starts them at the least-squares fit
    of :math:`y - Pu` from :math:`u`. Where the sub-grid field follows the geometry (a boundary
    layer on a graded mesh), a shared :math:`\psi(\delta)` of the offset alone cannot learn it,
    and weights free per stencil entry can: the local linear fit from :math:`u` alone already
    explains most of :math:`y - PRy`. The weights belong to the training data's fine mesh.
    """

    def __init__(self, transfer, n_latent, *, local=False, width=32, depth=2, std=0.02):
        super().__init__()
        self.transfer = transfer
        self.n_components = transfer.V_fine.block_size
        stencil = coarse_stencil(transfer.V_fine, transfer.V_coarse)
        self.field = StencilField(stencil, self.n_components, self.n_components + n_latent, local=local,
                                  width=width, depth=depth)
        raw = inverse_softplus(std)
        self.raw_std_u = nn.Parameter(torch.tensor(raw))
        self.raw_std_h = nn.Parameter(torch.tensor(raw))

    def forward(self, u, channels):
        """``u``: ``(..., N_u)``, ``channels``: ``(..., N_H, c + n_h)``; returns the mean
        ``(..., N_h)`` and the variance (a scalar tensor)."""
        macro = self.transfer.prolong(u.reshape(-1, u.shape[-1])).view(*u.shape[:-1], -1)
        correction = self.field(channels.flatten(-2)).flatten(-2)
        return product_of_experts(macro, softplus(self.raw_std_u) ** 2, correction,
                                  softplus(self.raw_std_h) ** 2)

    @torch.no_grad()
    def calibrate(self, u, fine, *, h=None, ridge=1e-2):
        """Set each expert's standard deviation to the size of what its own mean misses, from
        coarse states ``u`` ``(S, N_u)`` (the restricted data) and fine snapshots ``(S, N_h)``:
        :math:`s_u` from :math:`y - Pu`, and :math:`s_h` from what the least-squares fit of the
        local weights leaves of it (from their initial 0.02, the optimiser would take thousands of
        steps to get there). The fitted correction is scaled by :math:`(s_u^2 + s_h^2)/s_u^2`,
        so that the product's mean starts at :math:`Pu` plus the fit.

        The fit's ``ridge`` (:meth:`~firedrake_msm.networks.StencilField.fit`) keeps the decoder
        robust off the data: the restricted snapshots lie near a low-dimensional set, and an
        exact fit amplifies what a forecast's state has off it: a smaller ridge fits the
        snapshots closer but decodes a forecast worse than the prolongation alone, and the
        default ``1e-2`` gives up a little of the fit to decode no worse than the prolongation.

        ``h`` ``(S, N_H, n_h)``: auxiliary states to fit the local weights on as well (a trained
        encoder's); without them their weights start at zero."""
        missed = fine - self.transfer.prolong(u)
        # Floored: when the coarse space misses nothing (same meshes, no filter) the experts
        # still need a width the optimiser can move.
        floor = 1e-2 * float(fine.std())
        std_u = std_h = max(float(missed.pow(2).mean().sqrt()), floor)
        if self.field.local:
            S, c = u.shape[0], self.n_components
            channels = torch.zeros(S, self.field.n_cols, self.field.n_b, dtype=u.dtype, device=u.device)
            channels[..., :c] = u.view(S, -1, c)
            if h is not None:
                channels[..., c:] = h
            self.field.fit(channels, missed.view(S, -1, c), ridge=ridge)
            explained = self.field(channels.flatten(-2)).flatten(-2)
            std_h = max(float((missed - explained).pow(2).mean().sqrt()), floor)
            self.field.values.mul_((std_u ** 2 + std_h ** 2) / std_u ** 2)
        self.raw_std_u.fill_(inverse_softplus(std_u))
        self.raw_std_h.fill_(inverse_softplus(std_h))
