r"""A pulse narrower than a coarse cell: the advected-pulse case
=============================================================

The simplest reference case is pure advection on the periodic unit interval,

.. math:: \partial_t u + c\,\partial_x u = 0,\qquad x \in [0, 1),\quad c = 1,

of a Gaussian pulse :math:`u_0 = e^{-((x - 1/2)/w)^2}`, its width :math:`w \sim U(0.01, 0.02)`
drawn per trajectory. The exact solution only moves the pulse. The fine mesh (1000 P1 cells)
resolves it; the coarse one (20 cells, :math:`H = 0.05`) cannot: the pulse is narrower than one
coarse cell, so its best coarse representation is a low, wide bump, and the coarse Galerkin scheme,
which has no dissipation, disperses that bump into trailing wiggles. A stochastic multiscale model
on the same 20 cells carries what the mesh cannot see in an auxiliary field :math:`h` and decodes it
back to the fine mesh.

The steps every case shares (protocol, fine data, transfer, training, forecast, baselines, errors,
figure, VTK) are those of ``walkthrough.py``; this demo adds what is the pulse's own. Run it as
``python demos/pulse.py`` (the real sizes of its protocol, ``firedrake_msm/configs/pulse.toml``:
a long run) or with ``--fast`` (tiny sizes for the tests, seconds, meaningless numbers).
"""
from walkthrough import main


# The residual is :math:`F(u; v) = (c\,u_x, v)`, nothing else: no viscosity and no boundary, so
# the coarse scheme conserves the energy of the wide bump and only disperses it. What the coarse
# state misses is a sharpening. A learned closure with the default, dissipative flux
# :math:`-\nu(\xi)\nabla h` can only smooth, whatever the network learns; the pulse's protocol
# asks for the free flux (``flux = "free"`` in its ``[model]`` table), any learned function of the
# channels and their gradients, which can act as an anti-diffusion. That freedom is the pulse's
# need and its risk: a free flux can also grow grid-scale modes, which is why the viscous cases
# (Burgers, the cylinder) keep the dissipative one.
def free_flux(run):
    print(f"closure flux: {run.config.flux} ({run.config.n_latent} auxiliary channels)")


if __name__ == "__main__":
    main("pulse", description="The advected pulse, step by step.", after_problem=free_flux)
