"""Benchmark: data-parallel training on K = 1 and K = 2 processes (torchrun, gloo, CPU).

The KdV model of the demo (fine 1000 -> coarse 20 P1 dofs, 5 auxiliary channels, the free flux,
windows of 64 snapshots, float32) trains on a small DNS of it (4 trajectories to t = 0.2, 2 of
them for training: 276 windows) with ``torchrun --nproc-per-node=K -m firedrake_msm.cli train``,
no validation, one process per core:

- K = 1, batch 8, one thread (the reference), and with two torch threads (the other way to use
  a second core);
- K = 2, batch 4 each: the same global batch of 8, so the same training step for step
  (``tests/test_distributed.py``): its time to any accuracy is the reference's over the
  steps/s ratio;
- K = 2, batch 8 each: twice the windows a step for the same per-process work.

Steps/s is measured from the run's ``log.csv`` between step ``--skip`` and the last one (the
start-up, model build and first steps left out); windows/s is steps/s times the global batch.
The runs take turns, ``--repeats`` rounds of them in this one invocation, and each keeps its
fastest round, so that the ratios compare like with like on a machine whose load varies (the
load average is printed with the table).

Usage: python benchmarks/bench_distributed.py [--steps 80] [--skip 20] [--repeats 2]
The last line is a JSON summary.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from firedrake_msm.dns import simulate

RUNS = [  # label, processes, batch per process, torch threads per process
    ("K = 1, batch 8", 1, 8, 1),
    ("K = 1, batch 8, 2 threads", 1, 8, 2),
    ("K = 2, batch 4 each (global 8)", 2, 4, 1),
    ("K = 2, batch 8 each (global 16)", 2, 8, 1),
]


def steps_per_second(data, run, processes, batch, threads, steps, skip):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "firedrake_msm.cli", "train", str(data), "--n-latent", "5", "--flux", "free",
               "--batch-size", str(batch), "--steps", str(steps), "--validate-every", "0",
               "--checkpoint-every", str(steps), "--output", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PETSC_OPTIONS": "-options_left no"}
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    log = np.genfromtxt(run / "log.csv", delimiter=",", names=True)
    seconds = log["seconds"]
    return (steps - skip) / (seconds[steps - 1] - seconds[skip - 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rates = {label: 0.0 for label, *_ in RUNS}
    with tempfile.TemporaryDirectory() as folder:
        data = simulate("kdv", Path(folder) / "kdv.h5", trajectories=4, t_end=0.2, progress=False)
        for round_ in range(args.repeats):
            for label, processes, batch, threads in RUNS:
                run = Path(folder) / f"{round_}-{processes}-{batch}-{threads}"
                rates[label] = max(rates[label], steps_per_second(data, run, processes, batch, threads,
                                                                  args.steps, args.skip))
    rows = [{"run": label, "processes": processes, "batch": batch, "threads": threads,
             "steps_per_s": rates[label], "windows_per_s": rates[label] * processes * batch}
            for label, processes, batch, threads in RUNS]
    base = rows[0]
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print("| run | steps/s | windows/s | steps/s ratio | windows/s ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        row["steps_ratio"] = row["steps_per_s"] / base["steps_per_s"]
        row["windows_ratio"] = row["windows_per_s"] / base["windows_per_s"]
        print(f"| {row['run']} | {row['steps_per_s']:.2f} | {row['windows_per_s']:.1f} | "
              f"{row['steps_ratio']:.2f} | {row['windows_ratio']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
