"""A 128² DNS step of the radial dam break: SSP RK3 (the problem's scheme) against implicit midpoint
(Irksome's default, Newton and LU), after one step that compiles.

    python results/shallow_water/timing.py
"""
import time

from firedrake import Constant, Function
from irksome import GaussLegendre

from firedrake_msm.problems import ShallowWater
from firedrake_msm.stepping import time_stepper


class Midpoint(ShallowWater):
    scheme, stage_type = GaussLegendre(1), "deriv"


for cls, steps in ((ShallowWater, 30), (Midpoint, 5)):
    problem = cls()
    state = Function(problem.function_space(problem.mesh(128)))
    problem.set_initial_state(state, {"radius": Constant(0.5)})
    stepper = time_stepper(problem, state, Constant(0.0), Constant(0.01))
    stepper.advance()                 # compiles
    start = time.perf_counter()
    for _ in range(steps):
        stepper.advance()
    print(f"{cls.__name__}: {(time.perf_counter() - start) / steps:.3f} s a step", flush=True)
