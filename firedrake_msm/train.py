r"""Amortized variational training: the solver-free ELBO, Adam, checkpoints and exact resumption."""
import csv
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from firedrake_msm import checkpoint, distributed
from firedrake_msm.data import SnapshotWindows, check_space, load_trajectories, splits
from firedrake_msm.elbo import (drift_residual, elbo, gaussian_log_likelihood, reparametrise,
                                residual_energy, stratified_times)
from firedrake_msm.forecast import diagnose, forecast
from firedrake_msm.metrics import relative_l2
from firedrake_msm.model import ModelConfig, MultiscaleModel


@dataclass
class TrainConfig:
    r"""Optimisation settings (the reference protocol's by default, except the number of steps).

    Attributes
    ----------
    steps : int
        Optimiser steps in all (a resumed run continues up to it).
    batch_size : int
        Windows per step and process: a run on :math:`K` processes steps on :math:`K` times as
        many (:mod:`firedrake_msm.distributed`).
    window : int
        Snapshots per window, :math:`M`.
    lr, decay, decay_every : float, float, int
        Adam's learning rate, multiplied by ``decay`` every ``decay_every`` steps.
    beta_warmup : int
        Steps over which the residual term's weight grows linearly from 0 to 1.
    residual_times : int
        Stratified Monte Carlo times per window for the residual term.
    clip : float
        Gradient norm clipping.
    average : float
        Decay of an exponential moving average of the parameters (Polyak averaging; 0: none).
        The average is what validation forecasts, ``best.pt`` and :func:`load` use; the optimiser
        steps the raw parameters. Its decay ramps up as :math:`\min(a, (1 + k)/(10 + k))` at step
        :math:`k`, so that the initial parameters are soon forgotten.
    noise_std : float
        Observation noise added to the training data (seeded).
    validate_every, checkpoint_every : int
        Validation forecasts and checkpoints, in steps.
    validation_samples : int
        Ensemble members of a validation forecast.
    seed : int
        Seeds torch, numpy, Python, the window sampler, each window's random numbers and the
        data noise.
    device, dtype : str
        ``"cuda"`` on several processes is each process's own GPU (``cuda:LOCAL_RANK``).
    """
    steps: int = 4000
    batch_size: int = 8
    window: int = 64
    lr: float = 1e-3
    decay: float = 0.9
    decay_every: int = 2000
    beta_warmup: int = 1600
    residual_times: int = 32
    clip: float = 10.0
    average: float = 0.0
    noise_std: float = 0.0
    validate_every: int = 500
    checkpoint_every: int = 500
    validation_samples: int = 8
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def negative_elbo(model, batch, generators, *, beta, residual_times):
    r"""Minus the ELBO of a batch of windows, and its terms.

    Each window's snapshots are encoded, smoothed in time by the Gaussian process, sampled once at
    the data times for the PoE likelihood and once at ``residual_times`` stratified times for the
    drift-matching residual (:mod:`firedrake_msm.elbo`).

    Parameters
    ----------
    batch : dict
        ``"fine"``: ``(B, M, N_h)``, ``"times"``: ``(B, M)``.
    generators : sequence of torch.Generator
        ``B`` generators on the batch's device: window ``k`` draws its samples and times from
        ``generators[k]`` alone, so that its terms do not depend on the rest of the batch.

    Returns
    -------
    loss : torch.Tensor
    terms : dict of float
        ``elbo``, ``likelihood`` and ``kl`` per observed value.
    """
    fine, times = batch["fine"], batch["times"]
    B, M, _ = fine.shape
    mean, log_var = model.encode(fine)                                                # (B, M, D), (C,)
    D = mean.shape[-1]
    path = model.smoother(times, mean, log_var.exp(), model.sde.channel)

    m, log_S = path(times)[0]
    predicted, var = model.decode(reparametrise(m, log_S, _normal(generators, m)))
    log_likelihood = gaussian_log_likelihood(fine, predicted, var)                   # (B, M)

    t = torch.cat([stratified_times(times[k:k + 1, 0], times[k:k + 1, -1], residual_times, generator=g)
                   for k, g in enumerate(generators)])
    (m, log_S), (dm, dlog_S) = path(t)
    z = reparametrise(m, log_S, _normal(generators, m))
    f = model.sde.f(t, z.reshape(-1, D)).view(B, residual_times, D)
    sigma2 = model.sde.sigma() ** 2
    r = drift_residual(z, m, dm, log_S, dlog_S, f, sigma2)
    energy = residual_energy(r, sigma2, model.sde.mask)

    value, likelihood, kl = elbo(log_likelihood, energy, times[:, -1] - times[:, 0], beta=beta,
                                 n_observed=M * fine.shape[-1])
    return -value, {"elbo": value.item(), "likelihood": likelihood.item(), "kl": kl.item()}


def _normal(generators, like):
    """Standard normal samples shaped as ``like`` ``(B, ...)``, row ``k`` from ``generators[k]``."""
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype, device=like.device)
                        for g in generators])


class _Objective(torch.nn.Module):
    """:func:`negative_elbo` as a module's forward: the call that ``DistributedDataParallel``
    wraps to average the gradients over the processes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, generators, *, beta, residual_times):
        return negative_elbo(self.model, batch, generators, beta=beta, residual_times=residual_times)


def relative_errors(model, snapshots, times, *, samples, seed=0):
    """Relative L2 errors ``(n, T)`` of the ensemble mean forecast from each trajectory's first
    snapshot, against ``snapshots`` ``(n, T, N_h)`` (numpy), and what :func:`diagnose` says of it
    (None when it stayed finite)."""
    result = forecast(model, torch.as_tensor(snapshots[:, 0]), times, samples=samples, seed=seed)
    return relative_l2(snapshots, result.mean.cpu()), diagnose(model, result)


def fit(dataset, folder, model_config=None, config=TrainConfig(), *, mesh=None, resume=False, warm_start=None,
        progress=True, position=None):
    r"""Train a :class:`~firedrake_msm.model.MultiscaleModel` on ``dataset``.

    Writes into ``folder``: ``checkpoint.pt`` (the last state: model, optimiser, scheduler, step
    and every process's random states, replaced atomically), ``best.pt`` (the best validation
    forecast so far) and ``log.csv`` (one row per step: ELBO, likelihood, KL, beta, learning rate,
    seconds; validation error when measured). Both checkpoints hold the meshes: they load with
    :meth:`~firedrake_msm.model.MultiscaleModel.load` and nothing else.

    In a process group, or under ``torchrun --nproc-per-node=K``, the processes train one model
    data-parallel (:mod:`firedrake_msm.distributed`): each takes ``config.batch_size`` windows a
    step, and the run trains what one process would with :math:`K` times the batch, to round-off.
    Rank 0 alone logs, validates and writes the files.

    Parameters
    ----------
    dataset : str or pathlib.Path
        A file written by :class:`~firedrake_msm.recorder.Recorder` (or
        :func:`~firedrake_msm.dns.simulate`).
    folder : str or pathlib.Path
    model_config : firedrake_msm.model.ModelConfig, optional
        Default ``ModelConfig()``: the dataset's problem on its default coarse mesh.
    config : TrainConfig
    mesh : firedrake.MeshGeometry, optional
        The coarse mesh (see :meth:`~firedrake_msm.model.MultiscaleModel.build`).
    resume : bool
        Continue from ``folder/checkpoint.pt``: the same parameters and losses as a run that was
        never interrupted. On as many processes as the run that wrote it.
    warm_start : str or pathlib.Path, optional
        A checkpoint whose matching parameters initialise the model (e.g. a model with fewer
        auxiliary channels, as the reference grows :math:`n_h` in stages). A decoder of another
        kind (local weights after a shared field) is fitted to the warm-started encoder
        (:meth:`~firedrake_msm.model.MultiscaleModel.calibrate_decoder`).
    progress, position : bool, int
        Show a progress bar, on this line (for runs side by side).

    Returns
    -------
    pathlib.Path
        ``folder/best.pt`` (``checkpoint.pt`` when there was no validation).

    Raises
    ------
    TrainingDiverged
        When the loss is NaN or infinite; ``checkpoint.pt`` keeps the last good state.
    ValueError
        For settings that cannot train, and when resuming a run written on another number of
        processes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / "checkpoint.pt"
    _check(config)
    with distributed.world(config.device) as world:
        _seed(config.seed)
        saved = checkpoint.read(last) if resume and last.exists() else None
        if saved is not None:
            distributed.check_resumable(saved, world, last)
        model = _model(dataset, model_config or ModelConfig(), mesh, saved)
        model = model.to(dtype=_dtype(config), device=world.device)
        parts = splits(dataset)
        windows = SnapshotWindows(dataset, window=config.window, noise_std=config.noise_std, seed=config.seed,
                                  dtype=_dtype(config), **parts["train"])
        run = _Run(model, folder, dataset, config, world)
        if saved is not None:
            run.restore(saved)
        else:
            if warm_start is not None:
                missing = _load_matching(model, _evaluated(checkpoint.read(warm_start)))
                if "decoder.field.values" in missing:          # local weights after a shared field
                    model.calibrate_decoder(_sample_snapshots(windows, config.seed, world.device))
            else:
                model.calibrate(_sample_snapshots(windows, config.seed, world.device))
            run.start()
        validation = load_trajectories(dataset, **parts["validation"]) if world.leader else None
        run.train(windows, validation, progress=progress, position=position)
    return run.best if run.best.exists() else last


class _Run:
    """The state of a training run (optimiser, scheduler, average, step and best error) and its
    steps, logs and checkpoints, on one of the ``world``'s processes."""

    def __init__(self, model, folder, dataset, config, world):
        self.model, self.folder, self.dataset, self.config, self.world = model, folder, dataset, config, world
        self.last, self.best = folder / "checkpoint.pt", folder / "best.pt"
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.decay_every,
                                                         gamma=config.decay)
        self.state = {"step": 0, "best": float("inf"), "seconds": 0.0, "world_size": world.size}
        self.average = None

    def start(self):
        if self.world.leader:
            _truncate_log(self.folder / "log.csv")
        if self.config.average:
            self.average = {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def restore(self, saved):
        self.model.load_state_dict(saved["model"])
        self.average = saved.get("average")
        if self.config.average and self.average is None:      # an average begun at the resume
            self.average = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        _set_rng(saved["rng"][self.world.rank])
        self.state = dict(saved["state"])
        if self.world.leader:
            _truncate_log(self.folder / "log.csv", self.state["step"])

    def train(self, windows, validation, *, progress, position):
        config, leader = self.config, self.world.leader
        objective = distributed.parallel(_Objective(self.model), self.world)
        batches = distributed.Batches(len(windows), config.batch_size, self.world, config.seed)
        bar = tqdm(total=config.steps, initial=self.state["step"], desc=f"training {self.folder.name}",
                   unit="step", disable=not (progress and leader), position=position)
        # Rank 0 logs; the others write the same rows to nowhere, so that every process runs
        # the same steps.
        with open(self.folder / "log.csv" if leader else os.devnull, "a", newline="") as log_file:
            log = csv.writer(log_file, lineterminator="\n")
            if self.state["step"] == 0:
                log.writerow(["step", "elbo", "likelihood", "kl", "beta", "lr", "seconds",
                              "validation_error"])
            # The log's seconds count the whole training, across resumes.
            start = time.perf_counter() - self.state["seconds"]
            for step in range(self.state["step"], config.steps):
                beta = min(1.0, (step + 1) / config.beta_warmup)
                terms = self.step(objective, windows, batches, beta)
                self.state["step"] = step + 1
                error = ""
                if leader and config.validate_every and self.state["step"] % config.validate_every == 0:
                    error = self.validate(validation)
                self.state["seconds"] = time.perf_counter() - start
                log.writerow([self.state["step"], terms["elbo"], terms["likelihood"], terms["kl"], beta,
                              self.scheduler.get_last_lr()[0], self.state["seconds"], error])
                bar.update()
                bar.set_postfix(elbo=f"{terms['elbo']:.3g}", kl=f"{terms['kl']:.3g}",
                                val=f"{self.state['best']:.3g}")
                if self.state["step"] % config.checkpoint_every == 0 or self.state["step"] == config.steps:
                    log_file.flush()
                    self.save(self.last, rng=distributed.gather(_get_rng(), self.world))
        bar.close()
        distributed.barrier(self.world)         # the last checkpoint is on disk for every process

    def step(self, objective, windows, batches, beta):
        """One optimiser step on this process's windows of the step's batch; the ELBO's terms,
        averaged over the processes (those of the whole batch)."""
        config, world, step = self.config, self.world, self.state["step"]
        index, positions = batches(step)
        batch = _collate([windows[k] for k in index], world.device)
        generators = distributed.window_generators(config.seed, step, positions, world.device)
        loss, terms = objective(batch, generators, beta=beta, residual_times=config.residual_times)
        values = torch.tensor([loss.item(), terms["elbo"], terms["likelihood"], terms["kl"]],
                              dtype=torch.float64, device=world.device)
        values = distributed.mean(values, world).tolist()
        terms = dict(zip(("elbo", "likelihood", "kl"), values[1:]))
        if not math.isfinite(values[0]):
            raise TrainingDiverged(f"the loss is {values[0]} at step {step + 1} (terms {terms}); the last "
                                   f"good state is in {self.last}: resume from it with a lower learning rate")
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            _update_average(self.average, self.model, min(config.average, (1 + step) / (10 + step)))
        return terms

    def validate(self, validation):
        """The mean relative error of validation forecasts (with the averaged parameters); keeps
        the best model in ``best.pt``. On rank 0 only."""
        times, snapshots = validation
        with _parameters(self.model, self.average):
            errors, blew_up = relative_errors(self.model, snapshots, times,
                                              samples=self.config.validation_samples, seed=self.config.seed)
        error = float(errors.mean())
        if blew_up or not np.isfinite(error):
            # Reported, not kept: a run whose early forecasts blow up often recovers.
            tqdm.write(f"{self.folder.name}, step {self.state['step']}: validation diverged: {blew_up}")
            error = float("inf")
        if error < self.state["best"]:
            self.state["best"] = error
            self.save(self.best)
        return error

    def save(self, path, **contents):
        """Write the run's state to ``path`` (from rank 0), with more ``contents``: ``checkpoint.pt``
        adds every process's random states, ``rng``, a list by rank."""
        if not self.world.leader:
            return
        self.model.save(path, average=self.average, optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(), state=dict(self.state),
                        train_config=asdict(self.config), dataset=str(Path(self.dataset).resolve()),
                        **contents)


def _model(dataset, model_config, mesh, saved):
    """The model to train: new, or as a checkpoint to resume from holds it (its meshes too)."""
    if saved is None:
        return MultiscaleModel.build(dataset, model_config, mesh=mesh)
    model = MultiscaleModel(ModelConfig(**saved["model_config"]), saved["images"])
    given, kept = asdict(model_config), saved["model_config"]
    # None is the default, which the checkpoint's model has fixed (a reference width, say).
    differ = [k for k, v in given.items()
              if k not in ("problem", "problem_options", "coarse") and v is not None and kept.get(k) != v]
    if differ:
        was = ", ".join(f"{k}={kept.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={given[k]!r}" for k in differ)
        raise ValueError(f"the run to resume was trained with {was}, not {now}: resume with its settings or "
                         "start a new run")
    check_space(dataset, model.transfer.V_fine)
    return model


def _check(config):
    """Clear errors for settings that cannot train."""
    positive = ("steps", "batch_size", "beta_warmup", "residual_times", "decay_every", "checkpoint_every",
                "validation_samples")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"TrainConfig.{name} must be at least 1, not {getattr(config, name)}")
    if config.validate_every < 0 or not config.lr >= 0 or not 0 <= config.average < 1:
        raise ValueError(f"TrainConfig needs validate_every >= 0, lr >= 0 and 0 <= average < 1, not "
                         f"{config.validate_every}, {config.lr} and {config.average}")
    if config.seed < 0:
        raise ValueError(f"TrainConfig.seed must be at least 0, not {config.seed}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"TrainConfig.dtype must be 'float32' or 'float64', not {config.dtype!r}")
    try:
        torch.empty(0, device=config.device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"TrainConfig.device {config.device!r} is not available here: {error}") from None


def _dtype(config):
    return getattr(torch, config.dtype)


def _evaluated(saved):
    """A checkpoint's state dict with the averaged parameters, where it has them."""
    return {**saved["model"], **(saved.get("average") or {})}


# Not torch.optim.swa_utils.AveragedModel: it deep-copies the module, and ours holds Firedrake
# meshes, spaces and assembled operators. An average of the parameters is all that is needed.
@torch.no_grad()
def _update_average(average, model, decay):
    for name, p in model.named_parameters():
        average[name].lerp_(p, 1.0 - decay)


@contextmanager
def _parameters(model, average):
    """The model with the averaged parameters (when there is an average), restored on exit."""
    if average is None:
        yield
        return
    raw = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.load_state_dict(average, strict=False)
    try:
        yield
    finally:
        model.load_state_dict(raw, strict=False)


def _seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _get_rng():
    """Every random state, as tensors, numbers and tuples (a checkpoint loads with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                     has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng):
    torch.set_rng_state(rng["torch"])
    kind, keys, position, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _collate(items, device):
    return {key: torch.stack([item[key] for item in items]).to(device) for key in ("fine", "times")}


def _sample_snapshots(windows, seed, device, n_windows=16):
    """The snapshots of a few training windows, ``(n, N_h)``, to calibrate the model with;
    drawn with a generator of their own, so that calibrating leaves the training sequence alone."""
    draw = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(len(windows), (n_windows,), generator=draw)
    fine = _collate([windows[int(k)] for k in index], device)["fine"]
    return fine.reshape(-1, fine.shape[-1])


def _load_matching(model, state_dict):
    """Copy the parameters whose names and shapes match; the rest keep their initial values.
    Returns the names of the rest."""
    own = model.state_dict()
    matching = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    own.update(matching)
    model.load_state_dict(own)
    return [k for k in own if k not in matching]


def _truncate_log(path, step=0):
    """Keep the log's rows up to ``step`` (a resumed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    header, *rows = path.read_text().splitlines(keepends=True)
    path.write_text(header + "".join(row for row in rows if int(row.split(",", 1)[0]) <= step))
