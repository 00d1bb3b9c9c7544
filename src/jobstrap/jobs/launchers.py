"""Launchers are argv -> argv: how a job starts its tasks (srun, mpiexec, mpirun, none).

Pure functions; choose one by profile (``launcher:``), test each by its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jobstrap.jobs.model import JobSpec


def _srun(spec: JobSpec, argv: Sequence[str]) -> list[str]:
    # PMI-2 is what the mpich wheel and most MPIs speak under Slurm; without --mpi every
    # rank would be a singleton rank 0.
    head = ["srun", "--mpi=pmi2"] if spec.mpi else ["srun"]
    if spec.mpi:
        # One allocation is one program: once a rank gives up (the client rank whose
        # scheduler froze, exit 1), end them all. Without this srun waits for every
        # rank, and a frozen or hung one keeps the job until its walltime (mpiexec
        # already tears the launch down this way).
        head.append("--kill-on-bad-exit=1")
    head += [f"--nodes={spec.nodes}", f"--ntasks={spec.ntasks}"]
    head += [f"--ntasks-per-node={spec.tasks_per_node}", f"--cpus-per-task={spec.cpus_per_task}"]
    return [*head, *argv]


def _mpiexec(spec: JobSpec, argv: Sequence[str]) -> list[str]:
    head = ["mpiexec", "-n", str(spec.ntasks)]
    if spec.nodes > 1:
        head += ["-ppn", str(spec.tasks_per_node)]
    return [*head, *argv]


def _mpirun(spec: JobSpec, argv: Sequence[str]) -> list[str]:
    return ["mpirun", "-np", str(spec.ntasks), *argv]


def _none(spec: JobSpec, argv: Sequence[str]) -> list[str]:
    return list(argv)


LAUNCHERS: dict[str, Callable[[JobSpec, Sequence[str]], list[str]]] = {
    "srun": _srun,
    "mpiexec": _mpiexec,
    "mpirun": _mpirun,
    "none": _none,
}


def launch_argv(spec: JobSpec) -> list[str]:
    """The full command a job script runs: the spec's command behind its launcher."""
    try:
        wrap = LAUNCHERS[spec.launcher]
    except KeyError:
        raise ValueError(f"unknown launcher {spec.launcher!r}") from None
    return wrap(spec, spec.command)
