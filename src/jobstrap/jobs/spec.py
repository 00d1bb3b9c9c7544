"""Building a ``JobSpec`` from a profile and a role (worker, app, scheduler jobs).

The spec itself is plain data (:mod:`jobstrap.jobs.model`). It knows nothing of
``#SBATCH`` or ``#PBS``: the builders in ``systems/`` turn it into directives and the
templates into a script. These builders ask the profile's batch system only for its
launcher defaults (``launcher: auto``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from jobstrap.config.choices import LOG_FORMAT_VARIABLE
from jobstrap.config.profile import Profile
from jobstrap.jobs.model import ArraySpec, JobSpec, Role, new_tag
from jobstrap.systems import get_system

__all__ = [
    "ArraySpec",
    "JobSpec",
    "Role",
    "app_job",
    "in_process_job",
    "new_tag",
    "resolve_launcher",
    "scheduler_job",
    "worker_job",
]


def resolve_launcher(profile: Profile) -> str:
    """Turn ``launcher: auto`` into the launcher each batch system starts ranks with."""
    if profile.launcher != "auto":
        return profile.launcher
    return _launchers(profile)[0]


def _launchers(profile: Profile) -> tuple[str, str | None]:
    """The profile's batch system's ``default_launcher`` and ``node_launcher``."""
    system = get_system(profile.system)
    return system.default_launcher, system.node_launcher


#: Environment of jobs that run workers, unless the profile's ``env`` sets the same
#: variables. Both act only when an interpreter starts, and a nanny here forks its
#: worker (see the bootstrap's ``_choose_start_method``) instead of starting one, so
#: what distributed would set for a worker it spawns is set for the whole job (see
#: ``distributed.nanny``): one string-hash seed, without which workers hash strings
#: differently from job to job (dask/dask#6640; the nanny-less workers of an app job
#: need the same agreement), and, under nannies, the memory-trim threshold. The
#: bootstrap applies the rest of distributed's pre-spawn environment (thread counts).
WORKER_ENVIRONMENT = {"PYTHONHASHSEED": "6640"}
NANNY_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": "65536"}


def _common(
    profile: Profile, run_dir: str, tag: str, *, workers: bool = False
) -> dict[str, object]:
    env = dict(WORKER_ENVIRONMENT) if workers else {}
    if workers and profile.nanny:
        env.update(NANNY_ENVIRONMENT)
    if profile.log_format != "text":
        # Only the opt-in is exported: text is the job side's default. The profile's
        # own env (the older way to ask for JSON) still wins below.
        env[LOG_FORMAT_VARIABLE] = profile.log_format
    env.update(profile.env)
    env["JOBSTRAP_RUN_DIR"] = run_dir
    env["JOBSTRAP_TAG"] = tag
    return {
        "run_dir": run_dir,
        "tag": tag,
        "walltime": profile.walltime,
        "queue": profile.queue,
        "account": profile.account,
        "qos": profile.qos,
        "gpus": profile.gpus,
        "gpus_per_job": profile.gpus_per_job,
        "gpu_type": profile.gpu_type,
        "memory_per": profile.memory_unit,
        "mem_per_gpu": profile.mem_per_gpu,
        "gpu_bind": profile.gpu_bind,
        "env": tuple(env.items()),
        "prologue": profile.prologue,
        "epilogue": profile.epilogue,
        "extra_directives": profile.extra_directives,
        "skip_directives": profile.skip_directives,
        "submit_args": profile.submit_args,
        "log_directory": profile.log_directory or os.path.join(run_dir, "logs"),
        "shebang": profile.shebang,
        "python": profile.python,
    }


def _bootstrap_argv(
    profile: Profile, run_dir: str, mode: str, *, memory_limit: int | None
) -> list[str]:
    argv = [
        profile.python, "-m", "jobstrap.bootstrap",
        "--run-dir", run_dir,
        "--mode", mode,
        "--interface", ",".join(profile.interface),
        "--scheduler-interface", ",".join(profile.scheduler_interface),
        "--protocol", profile.protocol,
        "--nthreads", str(profile.threads_per_worker),
        "--death-timeout", str(profile.death_timeout),
    ]  # fmt: skip
    if memory_limit is not None:
        argv += ["--memory-limit", str(memory_limit)]
    if profile.local_directory:
        argv += ["--local-directory", profile.local_directory]
    if not profile.nanny:
        argv.append("--no-nanny")
    if profile.worker_class:
        argv += ["--worker-class", profile.worker_class]
    # Ray's dashboard is a process of its own on the head: only when asked for.
    ray_default = profile.engine == "ray" and profile.sources.get("dashboard") in (None, "default")
    if profile.dashboard and not ray_default:
        # 0 (the default) lets the node pick a free port: shared login nodes collide on 8787.
        argv += ["--dashboard-port", str(profile.dashboard_port)]
        if profile.dashboard_bind != "loopback":
            # Only the opt-in is spelled out: the default needs no flag.
            argv += ["--dashboard-bind", profile.dashboard_bind]
    else:
        argv.append("--no-dashboard")
    return argv


def worker_job(
    profile: Profile,
    run_dir: str,
    tag: str,
    *,
    scheduler_address: str | None = None,
    lifetime: int | None = None,
    name: str | None = None,
) -> JobSpec:
    """A job of Dask workers for a scheduler elsewhere (one launcher task per node).

    Each node runs one bootstrap process that starts ``profile.processes`` workers, so a
    job is one unit for scaling whatever its size.
    """
    argv = _bootstrap_argv(profile, run_dir, "workers", memory_limit=profile.memory_per_worker)
    argv += ["--worker-processes", str(profile.processes)]
    if profile.gpus_on_a_node:
        argv.append("--gpu-workers")
    if scheduler_address:
        argv += ["--scheduler-address", scheduler_address]
    if lifetime is not None:
        argv += ["--lifetime", str(lifetime)]
    argv += list(profile.worker_extra_args)
    launcher = resolve_launcher(profile)
    node_launcher = _launchers(profile)[1]
    if node_launcher is not None:
        # e.g. srun (without --mpi): one bootstrap per node, tracked as a job step.
        launcher = node_launcher
    elif profile.nodes == 1:
        launcher = "none"
    return JobSpec(
        name=name or profile.job_name,
        role=Role.WORKERS,
        command=tuple(argv),
        nodes=profile.nodes,
        tasks_per_node=1,
        cpus_per_task=profile.cores,
        memory=profile.memory,
        launcher=launcher,
        mpi=False,
        **_common(profile, run_dir, tag, workers=True),  # type: ignore[arg-type]
    )


def app_job(
    profile: Profile,
    run_dir: str,
    tag: str,
    app_argv: Sequence[str],
    *,
    name: str | None = None,
    client_on_scheduler_rank: bool = False,
    start_after_workers: int | None = None,
) -> JobSpec:
    """A whole application in one allocation: scheduler, client and workers as MPI ranks.

    ``start_after_workers`` starts the app once that many workers joined (default: all).
    """
    argv = _bootstrap_argv(profile, run_dir, "mpi", memory_limit=profile.memory_per_rank_worker)
    if profile.workers_per_rank > 1 and profile.engine == "dask":
        # One interpreter per worker rank, its workers forked by their nannies: a
        # node imports distributed once per rank instead of once per worker, which is
        # most of a large launch's start-up on busy nodes.
        argv += ["--worker-processes", str(profile.workers_per_rank)]
    if profile.worker_layout != "node":
        argv += ["--worker-layout", profile.worker_layout]
    if profile.gpus_on_a_node:
        # Each node's first worker rank runs a worker per GPU of the node.
        argv.append("--gpu-workers")
    if profile.engine != "dask":
        argv += ["--engine", profile.engine]
    if client_on_scheduler_rank or profile.engine == "ray":
        # Ray's driver belongs on the head's node: rank 0 runs the head and the app,
        # every other rank (one per node, see batch_profile) one Ray worker node.
        argv.append("--client-on-scheduler-rank")
    if start_after_workers is not None:
        argv += ["--start-after-workers", str(start_after_workers)]
    argv += ["--", *app_argv]
    ranks = profile.ranks_per_node
    return JobSpec(
        name=name or profile.job_name,
        role=Role.APP,
        command=tuple(argv),
        nodes=profile.nodes,
        tasks_per_node=ranks,
        cpus_per_task=max(1, profile.cores // ranks),
        memory=profile.memory,
        launcher=resolve_launcher(profile),
        mpi=True,
        **_common(profile, run_dir, tag, workers=True),  # type: ignore[arg-type]
    )


def in_process_job(
    profile: Profile, run_dir: str, tag: str, app_argv: Sequence[str], *, name: str | None = None
) -> JobSpec:
    """The app alone in the job's one process: no scheduler, no workers, no MPI.

    Every core of the node goes to the one task. ``srun`` (chosen or the system's
    default) still starts it, as a job step; an MPI launcher would only add its start-up.
    """
    argv = [profile.python, "-m", "jobstrap.bootstrap", "--run-dir", run_dir,
            "--mode", "in-process", "--", *app_argv]  # fmt: skip
    launcher = resolve_launcher(profile)
    return JobSpec(
        name=name or profile.job_name,
        role=Role.APP,
        command=tuple(argv),
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=profile.cores,
        memory=profile.memory,
        launcher=launcher if launcher == "srun" else "none",
        mpi=False,
        **_common(profile, run_dir, tag),  # type: ignore[arg-type]
    )


def scheduler_job(profile: Profile, run_dir: str, tag: str, *, name: str | None = None) -> JobSpec:
    """A scheduler in its own job, for login nodes that kill long processes or block ports."""
    argv = _bootstrap_argv(profile, run_dir, "scheduler", memory_limit=None)
    return JobSpec(
        name=name or f"{profile.job_name}-scheduler",
        role=Role.SCHEDULER,
        command=tuple(argv),
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=1,
        memory=min(profile.memory or 2**30, 2**30 * 2),
        launcher="none",
        **_cpu_only(_common(profile, run_dir, tag)),  # type: ignore[arg-type]
    )


def _cpu_only(common: dict[str, object]) -> dict[str, object]:
    """``common`` without GPUs: a scheduler alone needs none, nor a per-GPU memory request."""
    unit = common["memory_per"]
    return {
        **common, "gpus": 0, "gpus_per_job": 0, "gpu_type": None, "mem_per_gpu": None,
        "gpu_bind": None, "memory_per": "node" if unit == "gpu" else unit,
    }  # fmt: skip
