"""What a problem is."""
import inspect

from firedrake import SpatialCoordinate, dx, inner
from irksome import Dt, GaussLegendre


class Problem:
    r"""A time-dependent PDE in semi-discrete form,

    .. math:: (\partial_t u, v) + F(u; v) = 0 \quad \forall v,

    on a fine or a coarse mesh, with Dirichlet conditions and a seeded random family of initial
    conditions. The same residual :math:`F` serves the fine DNS (through Irksome), the coarse
    baselines and the torch bridge. Problems know nothing of torch.

    Subclasses set :attr:`t_end`, :attr:`dt`, :attr:`parameter_names` and implement
    :meth:`mesh`, :meth:`function_space`, :meth:`residual`, :meth:`draw` and
    :meth:`initial_condition`; :meth:`bcs`, :meth:`time_derivative` and :meth:`observed` have
    defaults. A subclass may take keyword arguments (physical parameters, a mesh file): they are
    recorded as :attr:`options` and stored with datasets and checkpoints, so that another process
    rebuilds the same problem from its class's import path
    (:func:`~firedrake_msm.problems.resolve`). They must then be numbers, strings, lists or dicts.

    Attributes
    ----------
    name : str
        A label for files and progress bars (default: the class's name in lower case).
    options : dict
        The keyword arguments the problem was constructed with.
    """
    t_end = 1.0            # simulated time of one trajectory
    spin_up = 0.0          # time simulated before the first stored snapshot
    dt = 1e-3              # DNS time step, and the interval between stored snapshots
    parameter_names = ()   # the random parameters of one initial condition
    scheme = GaussLegendre(1)   # the DNS's Runge-Kutta method (implicit midpoint)
    stage_type = "deriv"   # Irksome's formulation of the stages
    fine, coarse = None, None   # default resolutions (what :meth:`mesh` takes)
    trajectories = 30      # default dataset size: 20 train, 5 validation, 5 test
    prognostic = None      # the subspaces of a mixed space that carry a time derivative (None: all)
    # PETSc's LU package for the implicit stages: MUMPS pivots through the zero block of a saddle
    # point. Problems without one may take PETSc's own LU (serial runs only), with no pivoting and
    # less overhead: a DNS step is up to several times faster, and the states agree to round-off.
    lu = "mumps"
    # The step of the learned SDE's explicit forecasts on the coarse mesh (None: the output
    # interval dt). Shorter where the output interval is too long for the learned model
    # (unstable on the cylinder's small cells, not converged on the pulse); longer where the
    # coarse dynamics are slow next to it, since a forecast's cost is its number of steps.
    forecast_dt = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.options = {}
        signature = constructor_signature(cls)
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{cls.__qualname__} takes *{name}: a problem's arguments are recorded by "
                                "name, so that it can be rebuilt; take keyword arguments instead")
            self.options.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        return self

    def __reduce__(self):
        # Pickled by name, as datasets and checkpoints store it: a worker process imports a class
        # defined in the user's own file from that file.
        from firedrake_msm.problems.lookup import reference, resolve
        return resolve, reference(self)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__qualname__}({arguments})"

    def mesh(self, resolution, comm):
        """The mesh at ``resolution`` (cells per side or a problem-specific key)."""
        raise NotImplementedError

    def function_space(self, mesh):
        raise NotImplementedError

    def residual(self, u, v):
        """The 1-form :math:`F(u; v)`."""
        raise NotImplementedError

    def draw(self, rng):
        """Values of :attr:`parameter_names` for one trajectory, from a numpy Generator."""
        raise NotImplementedError

    def initial_condition(self, x, p):
        """UFL expression of the initial state in the coordinates ``x``, with the parameters as
        the Constants ``p[name]`` (so one compiled kernel serves every trajectory)."""
        raise NotImplementedError

    def bcs(self, V):
        return []

    def time_derivative(self, u, v):
        r"""The form :math:`(\partial_t u, v)` (mixed problems restrict it to their prognostic
        part)."""
        return inner(Dt(u), v) * dx

    def set_initial_state(self, u, p):
        """Assign the initial condition with parameters ``p`` (Constants) to the Function ``u``."""
        u.interpolate(self.initial_condition(SpatialCoordinate(u.function_space().mesh()), p))

    def observed(self, u):
        """The field that is stored and learned from (a component, for mixed formulations)."""
        return u

    def diagnostics(self, u):
        """Scalars stored beside each snapshot (name to value), e.g. a lift coefficient."""
        return {}


def constructor_signature(cls):
    """The signature of a problem class's constructor, without ``self`` (empty where the class
    defines no ``__init__``)."""
    if cls.__init__ is object.__init__:
        return inspect.Signature()
    return inspect.signature(cls.__init__).replace(
        parameters=list(inspect.signature(cls.__init__).parameters.values())[1:])
