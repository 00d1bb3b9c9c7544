"""The one settings schema, resolved once and validated once.

Layers, lowest first; a later layer overrides an earlier one key by key:

1. built-in defaults (the field defaults below),
2. a named site profile from the shipped ``configs/`` (``extends:`` chains allowed),
3. the user's own profile of the same name in ``$JOBSTRAP_CONFIG_DIR`` or
   ``$XDG_CONFIG_HOME/jobstrap`` (``~/.config/jobstrap``), or a YAML file given by path,
4. ``JOBSTRAP_<FIELD>`` environment variables (``JOBSTRAP_WALLTIME=2h``),
5. keyword arguments / CLI flags.

Every value remembers which layer it came from (:attr:`Profile.sources`). Unknown keys
are errors with a "did you mean"; dask-jobqueue's keyword names are accepted as aliases.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobstrap.config import resources
from jobstrap.config.choices import (
    DASHBOARD_BINDS,
    ENGINES,
    GRAPH_SCHEDULERS,
    LOG_FORMATS,
    MEMORY_UNITS,
    WORKER_LAYOUTS,
)
from jobstrap.config.gpus import check_gpus
from jobstrap.config.plugins import available_systems
from jobstrap.config.units import format_memory, format_walltime_slurm
from jobstrap.config.values import (
    MAX_PORT,
    _boolean,
    _choice,
    _did_you_mean,
    _environment,
    _integer,
    _interfaces,
    _job_name,
    _lines,
    _memory,
    _optional_choice,
    _optional_integer,
    _optional_text,
    _optional_walltime,
    _path,
    _site_name,
    _text,
    _walltime,
    _words,
)
from jobstrap.errors import ConfigError
from jobstrap.net.security import warn_insecure

LAUNCHERS = ("auto", "srun", "mpiexec", "mpirun", "none")
PROTOCOLS = ("tls", "tcp")
SCHEDULER_PLACEMENTS = ("local", "job")
#: Batch mode with GPUs: scheduler, app and one worker rank fit on the first node.
GPU_RANKS_PER_NODE = 3

#: dask-jobqueue (and common) spellings accepted for our fields.
ALIASES: dict[str, str] = {
    "partition": "queue",
    "project": "account",
    "job_extra_directives": "extra_directives",
    "job_extra": "extra_directives",
    "job_directives_skip": "skip_directives",
    "header_skip": "skip_directives",
    "job_script_prologue": "prologue",
    "env_extra": "prologue",
    "job_script_epilogue": "epilogue",
    "name": "job_name",
    "job_cpu": "cores",
    "job_mem": "memory",
    "scheduler_interface": "scheduler_interface",
    "ntasks_per_node": "tasks_per_node",
    "local_dir": "local_directory",
    "log_dir": "log_directory",
}

#: Internal variables the toolkit itself sets inside jobs; never profile fields.
_INTERNAL_ENV = frozenset({"PROFILE", "CONFIG_DIR", "RUN_DIR", "RUN_ID", "ROLE", "TAG",
                           # set in every job (templates, the local queue, its launcher)
                           "JOB_ID", "ARRAY_JOB_ID", "ARRAY_TASK_ID", "NTASKS", "SUBMIT_DIR",
                           "RANK", "WORLD_SIZE", "LOCALQ_JOB", "LOCALQ_SPOOL",
                           # settings of the local queue and of batch.submit, not profiles
                           "LOCAL_SPOOL", "LOCAL_KILL_WAIT", "MAX_INPUT_SIZE",
                           # the bootstrap's log level, passed to jobs like the rest
                           "LOG_LEVEL",
                           # metrics endpoints off (docs/metrics.md)
                           "METRICS",
                           # a GPU worker's device (jobstrap.bootstrap.gpus)
                           "GPU_ID"})  # fmt: skip


def _setting(default: Any, parse: Callable[[str, object], Any], doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


def _system(name: str, value: object) -> str:
    """A registered batch system's name (built in, or a ``jobstrap.systems`` plugin)."""
    return _choice(tuple(available_systems()))(name, value)


@dataclass(frozen=True)
class Profile:
    """Every setting a job needs, validated, with the source of each value.

    Build one with :func:`load_profile`; derive variants with :meth:`with_overrides`.
    Sizes are bytes and durations are seconds.
    """

    system: str = _setting("local", _system, "batch system: local, slurm, pbs or a plugin's")
    queue: str | None = _setting(None, _site_name, "partition (Slurm) or queue (PBS)")
    account: str | None = _setting(None, _site_name, "account/project charged")
    qos: str | None = _setting(None, _site_name, "quality of service")
    walltime: int = _setting(3600, _walltime, "walltime per job (01:30:00, 90m, 1-00:00:00)")
    nodes: int = _setting(1, _integer(1), "nodes per job")
    cores: int = _setting(1, _integer(1), "cores per node for each job")
    memory: int | None = _setting(
        2 * 2**30, _memory, "memory per node for each job (4GiB, 4GB, 4000M)"
    )
    processes: int = _setting(1, _integer(1), "Dask worker processes per node of a job")
    threads: int | None = _setting(None, _optional_integer(1), "threads per worker")
    gpus: int = _setting(0, _integer(0), "GPUs per node (one worker per GPU)")
    gpus_per_job: int = _setting(
        0, _integer(0), "GPUs per job, placed by the batch system (Slurm --gpus); instead of gpus"
    )
    gpu_type: str | None = _setting(
        None, _site_name, "GPU model the site names (gpu:TYPE:N), e.g. a100; needs gpus"
    )
    mem_per_gpu: int | None = _setting(
        None, _memory, "memory per allocated GPU (Slurm --mem-per-gpu); needs gpus"
    )
    memory_per: str | None = _setting(
        None,
        _optional_choice(MEMORY_UNITS),
        "what the job's memory request counts: node (--mem), cpu (--mem-per-cpu) or gpu "
        "(--mem-per-gpu); default node, or gpu when mem_per_gpu is set",
    )
    gpu_bind: str | None = _setting(
        None, _site_name, "Slurm --gpu-bind of the job's tasks (closest, map_gpu:0,1, ...)"
    )
    worker_class: str | None = _setting(
        None,
        _optional_text,
        "worker class as module.Class (a distributed.Worker subclass, or "
        "dask_cuda.CUDAWorker if installed); default jobstrap's",
    )
    tasks_per_node: int | None = _setting(
        None, _optional_integer(1), "MPI ranks per node (batch mode; default: processes)"
    )
    interface: tuple[str, ...] = _setting(
        ("auto",), _interfaces, "worker network interfaces in order of preference, or auto"
    )
    scheduler_interface: tuple[str, ...] = _setting(
        ("auto",), _interfaces, "scheduler network interfaces in order of preference, or auto"
    )
    protocol: str = _setting("tls", _choice(PROTOCOLS), "tls (per-run certificates) or tcp")
    python: str = _setting(sys.executable, _text, "python on the compute nodes")
    prologue: tuple[str, ...] = _setting((), _lines, "shell lines before the main command")
    epilogue: tuple[str, ...] = _setting((), _lines, "shell lines after the main command")
    extra_directives: tuple[str, ...] = _setting((), _lines, "extra #SBATCH/#PBS directives")
    skip_directives: tuple[str, ...] = _setting(
        (), _words, "directives to drop, matched by name (--mem never drops --mem-per-cpu)"
    )
    submit_args: tuple[str, ...] = _setting((), _words, "extra arguments for sbatch/qsub")
    log_directory: str | None = _setting(None, _path, "job logs (default: the run directory)")
    local_directory: str | None = _setting(None, _path, "node-local scratch for workers")
    run_root: str = _setting(
        "~/.jobstrap/runs", _text, "where run directories go (must be shared with the nodes)"
    )
    job_name: str = _setting("jobstrap", _job_name, "job name prefix")
    env: tuple[tuple[str, str], ...] = _setting((), _environment, "variables exported in jobs")
    shebang: str = _setting("#!/usr/bin/env bash", _text, "first line of the job script")
    launcher: str = _setting("auto", _choice(LAUNCHERS), "srun, mpiexec, mpirun, none or auto")
    death_timeout: int = _setting(
        60, _walltime, "seconds a worker waits for a lost scheduler before exiting"
    )
    template: str | None = _setting(None, _path, "a job-script template of your own")
    max_array_size: int | None = _setting(
        None, _optional_integer(1), "cap on tasks per job array (default: the site's)"
    )
    dashboard: bool = _setting(True, _boolean, "start the scheduler dashboard")
    nanny: bool = _setting(
        True, _boolean, "run workers under a nanny (restarts after memory kills; costs a process)"
    )
    workers_per_rank: int = _setting(
        1, _integer(1), "batch mode: workers each worker rank forks (one import per rank)"
    )
    worker_layout: str = _setting(
        "node",
        _choice(WORKER_LAYOUTS),
        "batch mode: node (one process per node forks the workers of its worker ranks) "
        "or rank (each worker rank runs its own)",
    )
    dashboard_port: int = _setting(0, _integer(0, MAX_PORT), "dashboard port (0: a free port)")
    dashboard_bind: str = _setting(
        "loopback",
        _choice(DASHBOARD_BINDS),
        "where the dashboard (plain HTTP, no login) listens: loopback (reach it with "
        "jobstrap tunnel) or interface (the scheduler's address: anyone on that network)",
    )
    log_format: str = _setting(
        "text",
        _choice(LOG_FORMATS),
        "jobs' tagged log lines: text (Dask's layout) or json (one object per line)",
    )
    engine: str = _setting(
        "dask",
        _choice(ENGINES),
        "batch mode: dask, or ray (a Ray head and one Ray node per node; the app's "
        "ray.init() joins)",
    )
    scheduler: str = _setting(
        "local", _choice(SCHEDULER_PLACEMENTS), "scheduler here (local) or in its own job (job)"
    )
    graph_scheduler: str = _setting(
        "auto",
        _choice(GRAPH_SCHEDULERS),
        "graph jobs: auto (one node asking for no distributed workers: Dask's threads in "
        "the job's own process) or distributed (always a scheduler and workers)",
    )
    worker_extra_args: tuple[str, ...] = _setting((), _words, "extra worker arguments")
    lifetime_margin: int | None = _setting(
        None, _optional_walltime, "retire workers this long before walltime (default: auto)"
    )
    lifetime_stagger: int | None = _setting(
        None, _optional_walltime, "minimum gap between two job retirements (default: auto)"
    )
    tunnel_via: str | None = _setting(
        None, _optional_text, "login host(s) for SSH tunnels to dashboards: login or gw,login"
    )
    max_failures: int = _setting(3, _integer(1), "consecutive failed jobs before giving up")
    poll_interval: int = _setting(5, _integer(1), "seconds between job-state polls")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    # -- derived values -------------------------------------------------------------------

    @property
    def threads_per_worker(self) -> int:
        """Threads of each worker: ``threads`` or the cores divided among the processes."""
        return self.threads or max(1, self.cores // self.processes)

    @property
    def memory_per_worker(self) -> int | None:
        """Memory limit of each worker process (bytes), or None when memory is unset."""
        return None if self.memory is None else self.memory // self.processes

    @property
    def memory_per_rank_worker(self) -> int | None:
        """Memory limit of each worker in batch mode (bytes), or None when memory is unset.

        The node's memory over every rank's workers there (on the first node the
        scheduler and the app take the share of a rank each), so that Dask spills
        and pauses before the job's memory limit kills a process. With GPUs, over
        the node's GPU workers plus the scheduler and the app.
        """
        if self.memory is None:
            return None
        if self.gpus_on_a_node:
            return self.memory // (self.gpus_on_a_node + 2)
        return self.memory // (self.ranks_per_node * self.workers_per_rank)

    @property
    def memory_unit(self) -> str:
        """What the memory request counts: ``memory_per``, else gpu or node."""
        return self.memory_per or ("gpu" if self.mem_per_gpu is not None else "node")

    @property
    def gpus_on_a_node(self) -> int:
        """GPUs each node of a job gets (``gpus_per_job`` spread evenly, rounded up)."""
        if self.gpus:
            return self.gpus
        return -(-self.gpus_per_job // self.nodes)

    @property
    def ranks_per_node(self) -> int:
        """MPI ranks per node in batch mode.

        With GPUs, 3 unless ``tasks_per_node`` says: the first node holds the
        scheduler, the app and the worker rank that runs a worker per GPU (one rank
        per node runs them; a node's other ranks stand by).
        """
        if self.gpus_on_a_node:
            return self.tasks_per_node or GPU_RANKS_PER_NODE
        return self.tasks_per_node or self.processes

    def with_overrides(self, overrides: Mapping[str, object], source: str = "argument") -> Profile:
        """Return a copy with ``overrides`` applied and validated (same rules as loading)."""
        layer = _normalise({k: v for k, v in overrides.items() if v is not None}, source)
        return _build({**self._raw(), **layer}, {**self.sources, **dict.fromkeys(layer, source)})

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able values in human units (the form a profile file uses)."""
        out: dict[str, Any] = {}
        for f in fields():
            value = getattr(self, f.name)
            if f.name in ("walltime", "death_timeout") or (
                f.name.startswith("lifetime_") and value is not None
            ):
                value = format_walltime_slurm(value)
            elif f.name in ("memory", "mem_per_gpu") and value is not None:
                value = format_memory(value)
            elif f.name == "env":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def _raw(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields()}


def fields() -> tuple[dataclasses.Field[Any], ...]:
    """The settable fields of :class:`Profile` (``sources`` excluded)."""
    return tuple(f for f in dataclasses.fields(Profile) if f.name != "sources")


FIELD_NAMES = tuple(f.name for f in fields())


def _normalise(layer: Mapping[str, object], source: str) -> dict[str, object]:
    """Map aliases to field names and reject unknown keys with a suggestion."""
    out: dict[str, object] = {}
    for raw_key, value in layer.items():
        key = str(raw_key).strip().replace("-", "_").lower()
        key = ALIASES.get(key, key)
        if key not in FIELD_NAMES:
            hint = _did_you_mean(key, (*FIELD_NAMES, *ALIASES))
            where = "" if source == "argument" else f" in {source}"
            raise ConfigError(str(raw_key), value, f"unknown setting{where}", hint)
        out[key] = value
    return out


def _build(raw: Mapping[str, object], sources: Mapping[str, str]) -> Profile:
    values: dict[str, Any] = {}
    for f in fields():
        if f.name not in raw:
            continue
        parse = f.metadata["parse"]
        try:
            values[f.name] = parse(f.name, raw[f.name])
        except ConfigError as error:
            source = sources.get(f.name)
            if source and source not in ("default", "argument") and not error.suggestion:
                raise ConfigError(
                    error.field, error.value, error.problem, f"from {source}"
                ) from None
            raise
    profile = Profile(**values, sources={n: sources.get(n, "default") for n in FIELD_NAMES})
    check_gpus(profile)
    if profile.gpus_on_a_node and profile.processes != profile.gpus_on_a_node:
        # A site profile's processes (often 1) gives way to the GPUs; the same call
        # asking for both, differently, is a contradiction.
        if profile.sources.get("processes") == "argument":
            raise ConfigError(
                "processes",
                profile.processes,
                f"one worker per GPU: with {profile.gpus_on_a_node} GPUs per node each node "
                f"runs {profile.gpus_on_a_node} workers; drop processes or set it to that",
            )
        # Workers per node follow the GPUs; the cluster plans its names from this.
        profile = dataclasses.replace(
            profile,
            processes=profile.gpus_on_a_node,
            sources={**profile.sources, "processes": "gpus"},
        )
    if profile.mem_per_gpu is not None:
        # The job gets mem_per_gpu per GPU whatever memory says (only one request is
        # rendered), so the node's memory, which workers' limits share, follows from it.
        memory = profile.mem_per_gpu * profile.gpus_on_a_node
        profile = dataclasses.replace(profile, memory=memory)
    _check_consistency(profile)
    if profile.protocol == "tcp":
        warn_insecure("plaintext", profile.sources.get("protocol", "default"))
    if profile.dashboard and profile.dashboard_bind == "interface":
        warn_insecure("dashboard", profile.sources.get("dashboard_bind", "default"))
    return profile


logger = logging.getLogger(__name__)


def _check_consistency(profile: Profile) -> None:
    from_gpus = profile.sources.get("processes") == "gpus"  # GPU workers may share a core
    if profile.processes > profile.cores and profile.threads is None and not from_gpus:
        raise ConfigError(
            "processes",
            profile.processes,
            f"{profile.processes} workers per node need at least as many cores"
            f" (cores={profile.cores}); raise cores or set threads",
        )
    if profile.gpus_on_a_node > 1 and not profile.nanny:
        raise ConfigError(
            "nanny",
            False,
            "one worker per GPU needs nannies (each worker its own process and "
            "CUDA_VISIBLE_DEVICES); set nanny: true",
        )
    if profile.workers_per_rank > 1 and not profile.nanny:
        raise ConfigError(
            "workers_per_rank",
            profile.workers_per_rank,
            "several workers per rank need nannies (each nanny forks its worker); "
            "set nanny: true or workers_per_rank: 1",
        )
    if profile.memory is not None and profile.memory < profile.processes * 2**20:
        raise ConfigError(
            "memory", format_memory(profile.memory), "less than 1 MiB per worker process"
        )


# --- profile files ---------------------------------------------------------------------------


def user_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's profile directory: ``$JOBSTRAP_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/jobstrap``."""
    env = os.environ if environ is None else environ
    if env.get("JOBSTRAP_CONFIG_DIR"):
        return Path(env["JOBSTRAP_CONFIG_DIR"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
    return Path(base).expanduser() / "jobstrap"


def available_profiles(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of the shipped site profiles and the user's own."""
    names = {p.stem for p in resources.configs_dir().glob("*.yaml")}
    user_dir = user_config_dir(environ)
    if user_dir.is_dir():
        names |= {p.stem for p in user_dir.glob("*.yaml")}
    return sorted(names)


def read_profile_file(path: Path) -> dict[str, object]:
    """Read one YAML profile file into a mapping (no validation beyond its shape)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(
            "profile", str(path), f"not valid YAML: {' '.join(str(error).split())}"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError("profile", str(path), f"not UTF-8 text ({error.reason})") from None
    except ValueError as error:  # a scalar YAML reads but Python cannot hold
        raise ConfigError("profile", str(path), f"not a valid profile: {error}") from None
    except OSError as error:
        raise ConfigError("profile", str(path), f"cannot be read: {error.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("profile", str(path), "must be a mapping of settings")
    return data


def _profile_layers(
    name: str, environ: Mapping[str, str], seen: tuple[str, ...] = ()
) -> list[tuple[dict[str, object], str]]:
    """The file layers for profile ``name``, lowest first, following ``extends:``."""
    if name in seen:
        raise ConfigError("extends", name, f"circular: {' -> '.join((*seen, name))}")
    candidates: list[Path] = []
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        candidates.append(Path(name).expanduser())
    else:
        candidates.append(resources.configs_dir() / f"{name}.yaml")
        candidates.append(user_config_dir(environ) / f"{name}.yaml")
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        hint = _did_you_mean(name, available_profiles(environ))
        known = ", ".join(available_profiles(environ))
        raise ConfigError("profile", name, f"no such profile (known: {known})", hint)
    layers: list[tuple[dict[str, object], str]] = []
    for path in existing:
        data = read_profile_file(path)
        parent = data.pop("extends", None)
        data.pop("description", None)
        if parent is not None:
            layers.extend(_profile_layers(str(parent), environ, (*seen, name)))
        layers.append((data, _display_path(path)))
    return layers


def _display_path(path: Path) -> str:
    try:
        return "configs/" + str(path.resolve().relative_to(resources.configs_dir().resolve()))
    except ValueError:
        home = str(Path.home())
        text = str(path)
        return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


def _environment_layer(environ: Mapping[str, str]) -> dict[str, object]:
    layer: dict[str, object] = {}
    for var, value in environ.items():
        if not var.startswith("JOBSTRAP_"):
            continue
        key = var[len("JOBSTRAP_") :]
        if key in _INTERNAL_ENV:
            continue
        name = ALIASES.get(key.lower(), key.lower())
        if name in FIELD_NAMES:
            layer[name] = value
        elif _did_you_mean(name, FIELD_NAMES):
            # A near-miss is almost certainly a typo; silently ignoring it would surprise.
            raise ConfigError(var, value, "unknown setting", _did_you_mean(name, FIELD_NAMES))
    return layer


def load_profile(
    name: str | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Profile:
    """Resolve and validate a profile from every layer.

    Parameters
    ----------
    name
        A profile name (``configs/<name>.yaml`` and/or the user's ``<name>.yaml``) or a
        path to a YAML file. Default: ``$JOBSTRAP_PROFILE``, else ``default``.
    overrides
        Keyword arguments / CLI flags, the highest layer. ``None`` values are ignored so
        callers can pass optional keywords through unchanged.
    environ
        The environment to read ``JOBSTRAP_*`` from (default ``os.environ``).

    Returns
    -------
    Profile

    Raises
    ------
    ConfigError
        A one-line message naming the field, the value and what is allowed.
    """
    env = os.environ if environ is None else environ
    name = name or env.get("JOBSTRAP_PROFILE") or "default"
    raw: dict[str, object] = {}
    sources: dict[str, str] = {}
    layers = _profile_layers(name, env)
    layers.append((_environment_layer(env), "environment"))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "argument"))
    for layer, source in layers:
        normalised = _normalise(layer, source)
        raw.update(normalised)
        sources.update(dict.fromkeys(normalised, source))
    return _build(raw, sources)


def parse_assignments(items: Iterable[str]) -> dict[str, object]:
    """Parse CLI ``--set key=value`` items; values are YAML scalars/lists (``[a, b]``)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "expected key=value")
        if "\n" in value or "\r" in value:
            out[key.strip()] = value  # let validation reject it by name, never drop it
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except (yaml.YAMLError, ValueError):  # ValueError: an int too long for Python
            parsed = value
        # Keep time-like strings as text: YAML 1.1 reads 01:30:00 as a sexagesimal int.
        if isinstance(parsed, int) and ":" in value:
            parsed = value
        out[key.strip()] = parsed
    return out
