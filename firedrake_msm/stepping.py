"""Time stepping and solver helpers shared by the fine DNS and the coarse baselines."""
from firedrake import TestFunction
from firedrake.petsc import PETSc
from irksome import TimeStepper

# Newton with a direct solve, by :attr:`Problem.lu <firedrake_msm.problems.Problem>`'s package.
SOLVER = {"snes_type": "newtonls", "snes_rtol": 1e-10, "snes_atol": 1e-13, "mat_type": "aij",
          "ksp_type": "preonly", "pc_type": "lu"}


def direct_solver(problem, comm):
    """:data:`SOLVER` with the problem's LU package on one process, MUMPS on more (PETSc's own LU
    is serial)."""
    return {**SOLVER, "pc_factor_mat_solver_type": problem.lu if comm.size == 1 else "mumps"}


def time_stepper(problem, state, t, dt, *, residual=None, solver_parameters=None):
    r"""Irksome's stepper for :math:`(\partial_t u, v) + F(u; v) = 0` with the problem's
    Runge-Kutta scheme, stage type and boundary conditions.

    Parameters
    ----------
    problem : Problem
    state : firedrake.Function
        The state, advanced in place by ``stepper.advance()``.
    t, dt : firedrake.Constant
        Time and time step (assign to them between steps).
    residual : callable, optional
        ``residual(u, v)`` replacing ``problem.residual`` (a closure added to it, say).
    solver_parameters : dict, optional
        Default :func:`direct_solver`.
    """
    test = TestFunction(state.function_space())
    residual = problem.residual if residual is None else residual
    F = problem.time_derivative(state, test) + residual(state, test)
    return TimeStepper(F, problem.scheme, t, dt, state, bcs=problem.bcs(state.function_space()),
                       stage_type=problem.stage_type,
                       solver_parameters=(direct_solver(problem, state.comm) if solver_parameters is None
                                          else solver_parameters))


def restart(stepper):
    """Zero the unknowns that ``stepper``'s next solve starts from (otherwise the last step's
    stages), so that no step depends on the one before it: all the stages of a fully implicit
    Runge-Kutta method, or the one stage that a DIRK or explicit method solves for at a time."""
    (stepper.stages if hasattr(stepper, "stages") else stepper.kgac[0]).assign(0.0)


class Gather:
    """The global vector of a Function on rank 0 (None elsewhere), in PETSc's global order."""

    def __init__(self, like):
        with like.dat.vec_ro as vec:
            self.scatter, self.target = PETSc.Scatter.toZero(vec)
            self.size = vec.getSize()
        self.work = like

    def __call__(self, f):
        self.work.assign(f)
        with self.work.dat.vec_ro as vec:
            self.scatter.scatter(vec, self.target, addv=PETSc.InsertMode.INSERT_VALUES,
                                 mode=PETSc.ScatterMode.FORWARD)
        return self.target.array_r.copy() if self.work.comm.rank == 0 else None
