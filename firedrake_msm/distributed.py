r"""Data-parallel training on several processes with :mod:`torch.distributed`.

:func:`~firedrake_msm.train.fit` trains one model on :math:`K` processes when it runs in a
process group: one that the caller has initialised, or the one it starts itself from the
variables that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), with the gloo backend on CPU and NCCL on CUDA. Each process builds the whole
model, its Firedrake meshes and tabulations on ``COMM_SELF``; the model is wrapped in
``DistributedDataParallel``, which copies rank 0's parameters to the others and averages the
gradients over the processes in every backward pass.

A step on :math:`K` processes of :math:`b` windows each is the step of one process on
:math:`Kb` windows, to round-off: the losses are batch means, so the average of the :math:`K`
gradients is the gradient of the whole batch, provided the processes hold the same windows and
random numbers as the one process would. They do: the windows of a step are positions
:math:`Kbk, \dots, Kb(k + 1) - 1` of one stream of seeded permutations of the windows (epochs of
a ``DistributedSampler``, position :math:`Kj + r` going to rank :math:`r`), whenever :math:`K`
divides the number of windows (otherwise the sampler pads each epoch with a few repeated
windows), and each window draws its random numbers from a generator seeded by the run's seed, the
step and its position in the step's batch (:func:`window_generators`).
"""
import datetime
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

# Rank 0 validates while the others wait for it at the next step's reduction: a group that
# fit starts waits this long (torch's default for NCCL is ten minutes). A caller who expects
# longer validations initialises the group with a longer timeout.
TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """The processes that train one model: this one's ``rank`` of ``size``, and its torch
    ``device``."""
    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def leader(self):
        """Whether this process logs, validates and writes the checkpoints (rank 0)."""
        return self.rank == 0


@contextmanager
def world(device):
    """The training processes, for the ``with`` block.

    Inside an initialised process group, that group; else, under ``torchrun`` with more than one
    process, a group started here (gloo on CPU, NCCL on CUDA) and ended on exit; else this
    process alone. A plain ``"cuda"`` device becomes this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if dist.is_initialized():
        yield _joined(device)
        return
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        yield World(device=device)
        return
    local = _local_device(device)
    if local.startswith("cuda"):
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if local.startswith("cuda") else "gloo", timeout=TIMEOUT)
    try:
        yield _joined(device)
    finally:
        dist.destroy_process_group()


def _joined(device):
    local = _local_device(device)
    if local.startswith("cuda"):
        torch.cuda.set_device(local)
    return World(dist.get_rank(), dist.get_world_size(), local)


def _local_device(device):
    if device != "cuda":
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def parallel(module, world):
    """``module`` wrapped in ``DistributedDataParallel`` on several processes (itself on one).

    The buffers (tabulations, sparse operators, calibrated scales) are the same on every process
    and constant during training, so they are not broadcast.
    """
    if world.size == 1:
        return module
    device = torch.device(world.device)
    with warnings.catch_warnings():
        # Its replacement, forward_sync_buffers=False, still broadcasts the buffers (sparse
        # tensors among them) at the start, as torch's deprecation notice itself says.
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                       broadcast_buffers=False)


def mean(values, world):
    """The mean over the processes of a tensor (the same on each); itself on one process."""
    if world.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world.size


def gather(value, world):
    """The list of every process's ``value`` (a picklable object), by rank."""
    if world.size == 1:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world):
    if world.size > 1:
        dist.barrier()


class Batches:
    r"""The training windows of each step for one process: its share of the step's global batch.

    The global batch of step :math:`k` is positions :math:`Bk, \dots, B(k + 1) - 1`, with
    :math:`B = K b`, of the concatenated epochs of a ``DistributedSampler`` seeded with
    ``seed`` (epoch :math:`e` a permutation seeded with ``seed + e``); rank :math:`r` holds
    the positions :math:`Kj + r` of it, :math:`j < b`. The stream depends on the step alone, so
    a resumed run needs no sampler state.

    Parameters
    ----------
    n : int
        Training windows.
    batch_size : int
        Windows per process and step, :math:`b`.
    world : World
    seed : int
    """

    def __init__(self, n, batch_size, world, seed):
        self.batch_size, self.world = batch_size, world
        self.sampler = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=seed)
        self.epoch, self.order = None, None

    def __call__(self, step):
        """``(windows, positions)``: this process's window indices at ``step`` and their
        positions in the step's global batch, lists of :math:`b` ints."""
        b, per_epoch = self.batch_size, len(self.sampler)
        windows = []
        for q in range(step * b, (step + 1) * b):
            epoch, p = divmod(q, per_epoch)
            if epoch != self.epoch:
                self.sampler.set_epoch(epoch)
                self.epoch, self.order = epoch, list(self.sampler)
            windows.append(self.order[p])
        return windows, [self.world.size * j + self.world.rank for j in range(b)]


def window_generators(seed, step, positions, device):
    """One torch generator on ``device`` per window, seeded from ``(seed, step, position)``:
    a window's random numbers do not depend on which process draws them."""
    generators = []
    for position in positions:
        state = np.random.SeedSequence([seed, step, position]).generate_state(1, dtype=np.uint64)[0]
        generators.append(torch.Generator(device=device).manual_seed(int(state)))
    return generators


def check_resumable(saved, world, path):
    """Raise ValueError unless the checkpoint ``saved`` (read from ``path``) was written by a run
    on ``world.size`` processes: its windows, random numbers and random states are shared out
    over that many."""
    size = saved["state"].get("world_size")
    if size is None:
        raise ValueError(f"{path} was written by an earlier version of the training loop (other windows and "
                         "random numbers at each step): it cannot be resumed exactly; start a new run, or "
                         "warm-start from it")
    if size != world.size:
        raise ValueError(f"{path} was written by a run on {size} processes, and this one has {world.size}: "
                         f"resume it on {size} (torchrun --nproc-per-node={size} ...), where each step takes "
                         "the same windows and random numbers, or warm-start a new run from it")
