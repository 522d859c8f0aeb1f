"""The ``firedrake-msm`` command."""
import argparse
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="firedrake-msm", description="Stochastic multiscale models on "
                                     "coarse Firedrake meshes.")
    commands = parser.add_subparsers(dest="command", required=True)
    dns = commands.add_parser("dns", help="simulate a reference problem on its fine mesh into a dataset")
    dns.add_argument("case", help="the problem: pulse, kdv or burgers2d")
    dns.add_argument("--trajectories", type=int, help="initial conditions (default: the problem's)")
    dns.add_argument("--seed", type=int, default=0)
    dns.add_argument("--resolution", type=int, help="fine mesh resolution (default: the problem's)")
    dns.add_argument("--dt", type=float, help="time step and output interval")
    dns.add_argument("--t-end", type=float, help="end time")
    dns.add_argument("--output", type=Path, help="dataset file (default: data/<case>.h5)")
    args = parser.parse_args(argv)

    from firedrake_msm.dns import simulate
    from firedrake_msm.problems import PROBLEMS
    if args.case not in PROBLEMS:
        parser.error(f"unknown case {args.case!r}; choose from {', '.join(sorted(PROBLEMS))}")
    problem = PROBLEMS[args.case]()
    output = args.output or Path("data") / f"{args.case}.h5"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    simulate(problem, output, trajectories=args.trajectories or problem.trajectories, seed=args.seed,
             resolution=args.resolution, dt=args.dt, t_end=args.t_end)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
