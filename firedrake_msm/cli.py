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
    dns.add_argument("case", help="the problem: pulse, kdv, burgers2d or cylinder")
    dns.add_argument("--trajectories", type=int, help="initial conditions (default: the problem's)")
    dns.add_argument("--seed", type=int, default=0)
    dns.add_argument("--resolution", type=int,
                     help="fine mesh resolution (default: the comparison's, compare.PROTOCOL)")
    dns.add_argument("--dt", type=float, help="time step and output interval")
    dns.add_argument("--t-end", type=float, help="end time")
    dns.add_argument("--output", type=Path, help="dataset file (default: data/<case>.h5)")
    dns.add_argument("--workers", type=int, default=1,
                     help="processes that share out the trajectories (instead of mpiexec's mesh partition)")

    train = commands.add_parser("train", help="train a multiscale model on a dataset")
    train.add_argument("dataset", type=Path)
    train.add_argument("--output", type=Path, help="run folder (default: runs/<problem>-n<n_latent>)")
    train.add_argument("--n-latent", type=int, default=5, help="auxiliary channels (0: implicit-scale model)")
    train.add_argument("--no-physics", action="store_true", help="learn the whole drift")
    train.add_argument("--flux", choices=("dissipative", "free"), default="dissipative",
                       help="the closure's flux (default: dissipative, an eddy diffusivity)")
    train.add_argument("--coarse", help="coarse mesh resolution (default: the problem's)")
    train.add_argument("--local-decoder", action="store_true",
                       help="decoder weights free per stencil entry (sub-grid fields tied to the geometry)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--warm-start", type=Path, help="initialise from another run's checkpoint")
    from firedrake_msm.train import TrainConfig
    for name, value in vars(TrainConfig()).items():
        train.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)

    forecast = commands.add_parser("forecast", help="ensemble forecasts of a trained model on test data")
    forecast.add_argument("checkpoint", type=Path)
    forecast.add_argument("--samples", type=int, default=64)
    forecast.add_argument("--seed", type=int, default=0)
    forecast.add_argument("--vtk", type=Path, help="write the first test trajectory's forecast here (.pvd)")
    compare = commands.add_parser("compare", help="coarse DNS, Smagorinsky LES and the learned models "
                                  "side by side on a reference case, into results/<case>/")
    compare.add_argument("case", help="the problem: pulse, kdv, burgers2d or cylinder")
    compare.add_argument("--fast", action="store_true", help="seconds-long settings, for tests only")
    compare.add_argument("--retrain", action="store_true", help="train the models even if runs/ has them")
    compare.add_argument("--steps", type=int, help="training steps per model")
    compare.add_argument("--validate-every", type=int,
                         help="steps between validation forecasts and checkpoints (default 1000 and 500)")
    compare.add_argument("--results", type=Path, default=Path("results"))
    compare.add_argument("--data", type=Path, default=Path("data"))
    compare.add_argument("--runs", type=Path, default=Path("runs"))
    compare.add_argument("--workers", type=int, default=2, help="parallel processes (training, baselines)")
    args = parser.parse_args(argv)
    commands = {"dns": _dns, "train": _train, "forecast": _forecast, "compare": _compare}
    return commands[args.command](parser, args)


def _dns(parser, args):
    from firedrake_msm.compare import Settings
    from firedrake_msm.dns import simulate
    from firedrake_msm.problems import PROBLEMS
    if args.case not in PROBLEMS:
        parser.error(f"unknown case {args.case!r}; choose from {', '.join(sorted(PROBLEMS))}")
    problem = PROBLEMS[args.case]()
    output = args.output or Path("data") / f"{args.case}.h5"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    given = {"resolution": args.resolution, "dt": args.dt, "t_end": args.t_end}
    options = {**Settings.for_case(args.case).dns, **{k: v for k, v in given.items() if v is not None}}
    simulate(problem, output, trajectories=args.trajectories or problem.trajectories, seed=args.seed,
             workers=args.workers, **options)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    return 0


def _train(parser, args):
    import h5py
    from firedrake_msm.model import ModelConfig
    from firedrake_msm.train import TrainConfig, train
    if not args.dataset.exists():
        parser.error(f"no dataset at {args.dataset}: make one with `firedrake-msm dns <case>`")
    with h5py.File(args.dataset, "r") as f:
        problem = f["msm"].attrs["problem"]
    coarse = int(args.coarse) if args.coarse and args.coarse.isdigit() else args.coarse
    model = ModelConfig(problem, coarse=coarse, n_latent=args.n_latent, physics=not args.no_physics,
                        flux=args.flux, local_decoder=args.local_decoder)
    config = TrainConfig(**{name: getattr(args, name) for name in vars(TrainConfig())})
    output = args.output or Path("runs") / f"{problem}-n{args.n_latent}"
    start = time.perf_counter()
    best = train(args.dataset, output, model, config, resume=args.resume, warm_start=args.warm_start)
    print(f"trained in {time.perf_counter() - start:.0f} s; model in {best}, log in {output / 'log.csv'}")
    return 0


def _forecast(parser, args):
    import torch
    from firedrake_msm.data import load_trajectories, splits
    from firedrake_msm.forecast import forecast, write_vtk
    from firedrake_msm.metrics import relative_l2, summary
    from firedrake_msm.train import load
    if not args.checkpoint.exists():
        parser.error(f"no checkpoint at {args.checkpoint}")
    model, checkpoint = load(args.checkpoint)
    times, truth = load_trajectories(checkpoint["dataset"], **splits(checkpoint["dataset"])["test"])
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=args.samples, seed=args.seed)
    mean, std = summary(relative_l2(truth, result.mean))
    print(f"relative L2 error over {truth.shape[0]} test trajectories x {len(times)} times: "
          f"{mean:.4f} ± {std:.4f}")
    if args.vtk:
        write_vtk(args.vtk, model, result, truth)
        print(f"wrote {args.vtk}")
    return 0


def _compare(parser, args):
    import dataclasses
    from firedrake_msm.compare import Settings, compare
    from firedrake_msm.problems import PROBLEMS
    if args.case not in PROBLEMS:
        parser.error(f"unknown case {args.case!r}; choose from {', '.join(sorted(PROBLEMS))}")
    settings = Settings.fast(args.case) if args.fast else Settings.for_case(args.case)
    if args.fast:       # never mix the tiny data and models with the real ones
        args.results, args.data, args.runs = (path / "fast" for path in (args.results, args.data, args.runs))
    if args.steps:
        settings.train = dataclasses.replace(settings.train, steps=args.steps)
    if args.validate_every:
        settings.train = dataclasses.replace(settings.train, validate_every=args.validate_every,
                                             checkpoint_every=args.validate_every)
    start = time.perf_counter()
    compare(args.case, folder=args.results, data=args.data, runs=args.runs, settings=settings,
            retrain=args.retrain, workers=args.workers)
    out = args.results / args.case
    print((out / "table.md").read_text())
    print(f"done in {time.perf_counter() - start:.0f} s; tables, plots and VTK files in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
