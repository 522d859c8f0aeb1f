"""The ``firedrake-msm`` command."""
import argparse
import json
import os
import sys
import time
from pathlib import Path


PROBLEM_HELP = ("a registered name (pulse, kdv, burgers2d, cylinder, or a plugin's), 'package.module:Class' "
                "or 'path/to/file.py:Class'")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="firedrake-msm", description="Stochastic multiscale models on "
                                     "coarse Firedrake meshes.")
    commands = parser.add_subparsers(dest="command", required=True)
    dns = commands.add_parser("dns", help="simulate a problem on its fine mesh into a dataset")
    dns.add_argument("protocol", help="a reference case (its protocol's [dns] settings), a protocol .toml, "
                     "or a problem: " + PROBLEM_HELP)
    dns.add_argument("--problem-options", type=json.loads,
                     help="keyword arguments of the problem's constructor, as JSON")
    dns.add_argument("--trajectories", type=int, help="initial conditions (default: the problem's)")
    dns.add_argument("--seed", type=int, default=0)
    dns.add_argument("--resolution",
                     help="fine mesh resolution (default: the protocol's, else the problem's)")
    dns.add_argument("--dt", type=float, help="time step and output interval")
    dns.add_argument("--t-end", type=float, help="end time")
    dns.add_argument("--output", type=Path, help="dataset file (default: data/<name>.h5)")
    dns.add_argument("--resume", action="store_true",
                     help="continue an interrupted run after its last complete trajectory")
    dns.add_argument("--workers", type=int, default=1,
                     help="processes that share out the trajectories (instead of mpiexec's mesh partition)")

    train = commands.add_parser("train", help="train a multiscale model on a dataset (data-parallel under "
                                "torchrun --nproc-per-node=K; --batch-size is per process)")
    train.add_argument("dataset", type=Path)
    train.add_argument("--output", type=Path, help="run folder (default: runs/<problem>-n<n_latent>)")
    train.add_argument("--problem", help="the problem (default: the dataset's): " + PROBLEM_HELP)
    train.add_argument("--problem-options", type=json.loads, default={},
                       help="keyword arguments of the problem's constructor, as JSON")
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
    forecast.add_argument("--dataset", type=Path,
                          help="forecast this dataset's test trajectories (default: the training data's)")
    forecast.add_argument("--samples", type=int, default=64)
    forecast.add_argument("--seed", type=int, default=0)
    forecast.add_argument("--device", default="cpu", help="torch device of the forecast (cpu, cuda)")
    forecast.add_argument("--vtk", type=Path, help="write the first test trajectory's forecast here (.pvd)")
    forecast.add_argument("--coarse", help="forecast on another coarse mesh of the domain: a resolution or "
                          "a Gmsh file (default: the one the model was trained on)")
    compare = commands.add_parser("compare", help="coarse DNS, Smagorinsky LES and the learned models "
                                  "side by side, into results/<name>/")
    compare.add_argument("protocol", help="a reference case (pulse, kdv, burgers2d, cylinder), a protocol "
                         ".toml file (copy one from firedrake_msm/configs/), or a problem: " + PROBLEM_HELP)
    compare.add_argument("--dataset", type=Path, help="the data to learn from and test on (default: the "
                         "protocol's, else a DNS into --data)")
    compare.add_argument("--problem-options", type=json.loads, help="keyword arguments of the problem's "
                         "constructor, as JSON")
    compare.add_argument("--fast", action="store_true", help="seconds-long settings, for tests only")
    compare.add_argument("--retrain", action="store_true", help="train the models even if runs/ has them")
    compare.add_argument("--steps", type=int, help="training steps per model")
    compare.add_argument("--validate-every", type=int,
                         help="steps between validation forecasts and checkpoints (default: the protocol's)")
    compare.add_argument("--results", type=Path, default=Path("results"))
    compare.add_argument("--data", type=Path, default=Path("data"))
    compare.add_argument("--runs", type=Path, default=Path("runs"))
    compare.add_argument("--workers", type=int, default=2, help="parallel processes (training, baselines)")
    args = parser.parse_args(argv)
    commands = {"dns": _dns, "train": _train, "forecast": _forecast, "compare": _compare}
    return commands[args.command](parser, args)


def _protocol(parser, spec):
    from firedrake_msm.problems import ProblemNotFound
    from firedrake_msm.protocol import Protocol
    try:
        return Protocol.load(spec)
    except (FileNotFoundError, ValueError, ProblemNotFound) as error:
        parser.error(str(error))


def _dns(parser, args):
    from firedrake_msm.dns import simulate
    from firedrake_msm.problems import ProblemNotFound, resolve
    protocol = _protocol(parser, args.protocol)
    try:
        problem = resolve(protocol.problem, args.problem_options or protocol.problem_options)
    except ProblemNotFound as error:
        parser.error(str(error))
    output = args.output or Path("data") / f"{protocol.name}.h5"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    resolution = int(args.resolution) if args.resolution and args.resolution.isdigit() else args.resolution
    given = {"trajectories": args.trajectories, "resolution": resolution, "dt": args.dt, "t_end": args.t_end}
    options = {**protocol.dns, **{k: v for k, v in given.items() if v is not None}}
    simulate(problem, output, **{"trajectories": problem.trajectories, **options}, seed=args.seed,
             workers=args.workers, resume=args.resume)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    return 0


def _train(parser, args):
    from firedrake_msm.data import dataset_problem
    from firedrake_msm.model import ModelConfig
    from firedrake_msm.train import TrainConfig, fit
    if not args.dataset.exists():
        parser.error(f"no dataset at {args.dataset}: make one with `firedrake-msm dns <problem>`")
    problem = args.problem
    coarse = int(args.coarse) if args.coarse and args.coarse.isdigit() else args.coarse
    model = ModelConfig(problem, problem_options=args.problem_options, coarse=coarse, n_latent=args.n_latent,
                        physics=not args.no_physics, flux=args.flux, local_decoder=args.local_decoder)
    config = TrainConfig(**{name: getattr(args, name) for name in vars(TrainConfig())})
    label = (problem or dataset_problem(args.dataset)[0]).rpartition(":")[2].lower()
    output = args.output or Path("runs") / f"{label}-n{args.n_latent}"
    start = time.perf_counter()
    best = fit(args.dataset, output, model, config, resume=args.resume, warm_start=args.warm_start)
    if int(os.environ.get("RANK", 0)) == 0:        # once, not from every torchrun process
        print(f"trained in {time.perf_counter() - start:.0f} s; model in {best}, log in {output / 'log.csv'}")
    return 0


def _forecast(parser, args):
    import torch
    from firedrake_msm.data import check_space, load_trajectories, splits
    from firedrake_msm.forecast import forecast, write_vtk
    from firedrake_msm.metrics import relative_l2, summary
    from firedrake_msm.model import MultiscaleModel
    model = MultiscaleModel.load(args.checkpoint, device=args.device)
    if args.coarse:
        try:
            model = model.on_mesh(int(args.coarse) if args.coarse.isdigit() else args.coarse)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
    dataset = args.dataset or Path(model.metadata.get("dataset", ""))
    if not dataset.is_file():
        parser.error(f"the checkpoint's training data {dataset} is gone: give the data to forecast with "
                     "--dataset")
    check_space(dataset, model.transfer.V_fine)
    times, truth = load_trajectories(dataset, **splits(dataset)["test"])
    result = forecast(model, torch.as_tensor(truth[:, 0]), times, samples=args.samples, seed=args.seed)
    mean, std = summary(relative_l2(truth, result.mean.cpu()))
    print(f"relative L2 error over {truth.shape[0]} test trajectories x {len(times)} times: "
          f"{mean:.4f} ± {std:.4f}")
    if args.vtk:
        write_vtk(args.vtk, model, result, truth)
        print(f"wrote {args.vtk}")
    return 0


def _compare(parser, args):
    import dataclasses
    from firedrake_msm.compare import compare
    protocol = _protocol(parser, args.protocol)
    if args.problem_options:
        protocol = dataclasses.replace(protocol, problem_options=args.problem_options)
    if args.dataset:
        protocol = dataclasses.replace(protocol, dataset=args.dataset)
    if args.fast:       # never mix the tiny data and models with the real ones
        protocol = protocol.fast()
        args.results, args.data, args.runs = (path / "fast" for path in (args.results, args.data, args.runs))
    if args.steps:
        protocol.train = dataclasses.replace(protocol.train, steps=args.steps)
    if args.validate_every:
        protocol.train = dataclasses.replace(protocol.train, validate_every=args.validate_every,
                                             checkpoint_every=args.validate_every)
    start = time.perf_counter()
    compare(protocol, folder=args.results, data=args.data, runs=args.runs, retrain=args.retrain,
            workers=args.workers)
    out = args.results / protocol.name
    print((out / "table.md").read_text())
    print(f"done in {time.perf_counter() - start:.0f} s; tables, plots and VTK files in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
