"""Constructor keywords of notebook clusters: ours and dask-jobqueue's.

A dask-jobqueue user changes the import and keeps the keywords. Most keywords are
profile settings (``profile.ALIASES`` maps dask-jobqueue's spellings); the rest are
cluster-level (``n_workers``, ``scheduler_options``, ...) or describe the job request
apart from the workers (``job_cpu``, ``job_mem``). :func:`split_options` sorts them
into profile overrides and :class:`ClusterOptions`, validating what only makes
sense here; every difference from dask-jobqueue is listed in ``docs/migration.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobstrap.config.profile import Profile, load_profile
from jobstrap.config.units import parse_memory
from jobstrap.errors import ConfigError

__all__ = ["ClusterOptions", "resolve_profile", "split_options"]

#: dask-jobqueue keywords that mean nothing here; accepted so old code runs.
_IGNORED = {
    "shared_temp_directory": "certificates live in the cluster's private run directory",
    "config_name": "jobstrap reads profiles (profile=...), not jobqueue.yaml sections",
}

#: dask-jobqueue keywords with no equivalent: using them would change behaviour.
_REJECTED = {
    "worker_command": "the jobstrap bootstrap starts the workers; pass worker_extra_args",
    "scheduler_file": "the cluster writes the run directory's scheduler.json itself",
}


@dataclass(frozen=True)
class ClusterOptions:
    """Cluster-level settings that are not part of a profile.

    Attributes
    ----------
    n_workers
        Workers to start at once (rounded up to whole jobs).
    jobs
        Jobs to start at once (ours; the larger of the two wins).
    scheduler_options
        Extra keyword arguments of the in-process ``distributed.Scheduler``.
    scheduler_host
        Address the scheduler binds to, overriding the interface choice.
    dashboard_address
        ``host:port`` of the dashboard, overriding the default (the scheduler node's
        loopback, or its address with ``dashboard_bind: interface``); ``":8787"``
        sets only the port.
    scheduler_cls
        The scheduler class (default ``distributed.Scheduler``).
    job_cpu
        CPUs requested per node when they differ from ``cores`` (dask-jobqueue).
    job_mem
        Memory requested per node when it differs from ``memory`` (dask-jobqueue).
    name
        The cluster's name; job and worker names start with it.
    """

    n_workers: int = 0
    jobs: int = 0
    scheduler_options: Mapping[str, Any] = field(default_factory=dict)
    scheduler_host: str | None = None
    dashboard_address: str | None = None
    scheduler_cls: Any = None
    job_cpu: int | None = None
    job_mem: int | None = None
    name: str | None = None


def _protocol(value: object) -> str:
    text = str(value).strip().lower().removesuffix("://")
    if text not in ("tls", "tcp"):
        raise ConfigError("protocol", value, "must be tls or tcp (tls:// and tcp:// also work)")
    return text


def _whole(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, value, "expected a whole number")
    if value < 0:
        raise ConfigError(name, value, "must not be negative")
    return value


def _words(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(w.strip() for w in value.split(",") if w.strip())
    if isinstance(value, list | tuple):
        return tuple(str(w) for w in value)
    raise ConfigError("scheduler_options.interface", value, "expected a name or a list of names")


def split_options(
    settings: Mapping[str, Any],
) -> tuple[dict[str, Any], ClusterOptions]:
    """Sort constructor keywords into profile overrides and cluster options.

    Parameters
    ----------
    settings
        The keywords given to the cluster class, ``None`` values included (they
        mean "not given").

    Returns
    -------
    tuple
        ``(profile_overrides, options)``. Unknown names stay in the overrides so
        profile validation rejects them with a "did you mean".

    Raises
    ------
    ConfigError
        A keyword that cannot be honoured, with what to use instead.
    """
    given = {k: v for k, v in settings.items() if v is not None}
    overrides: dict[str, Any] = {}
    scheduler_options: dict[str, Any] = {}
    opts: dict[str, Any] = {}

    for key in list(given):
        if key in _REJECTED:
            raise ConfigError(key, given[key], "not supported", _REJECTED[key])
        if key in _IGNORED:
            value = given.pop(key)
            warnings.warn(f"{key}={value!r} is ignored: {_IGNORED[key]}", UserWarning, stacklevel=3)

    if "scheduler_options" in given:
        raw = given.pop("scheduler_options")
        if not isinstance(raw, Mapping):
            raise ConfigError("scheduler_options", raw, "expected a dict of Scheduler keywords")
        scheduler_options = dict(raw)
    # dask-jobqueue insists on scheduler_options for these; we take them either way.
    for key in ("host", "interface", "dashboard_address", "protocol", "security"):
        if key in scheduler_options:
            value = scheduler_options.pop(key)
            if key == "host":
                opts["scheduler_host"] = str(value)
            elif key == "interface":
                overrides["scheduler_interface"] = list(_words(value))
            elif key == "dashboard_address":
                opts["dashboard_address"] = str(value)
            elif key == "protocol":
                overrides["protocol"] = _protocol(value)
            else:
                given.setdefault("security", value)
    if "host" in given:
        opts["scheduler_host"] = str(given.pop("host"))
    if "dashboard_address" in given:
        opts["dashboard_address"] = str(given.pop("dashboard_address"))
    if "scheduler_cls" in given:
        opts["scheduler_cls"] = given.pop("scheduler_cls")

    if "n_workers" in given:
        opts["n_workers"] = _whole("n_workers", given.pop("n_workers"))
    if "jobs" in given:
        opts["jobs"] = _whole("jobs", given.pop("jobs"))
    if "name" in given:
        # dask-jobqueue's cluster ``name`` names the cluster (and so its workers);
        # the batch job name is ``job_name``.
        opts["name"] = str(given.pop("name"))

    if "job_cpu" in given:
        job_cpu = given.pop("job_cpu")
        if isinstance(job_cpu, bool) or not isinstance(job_cpu, int) or job_cpu < 1:
            raise ConfigError("job_cpu", job_cpu, "expected a whole number of CPUs, at least 1")
        opts["job_cpu"] = job_cpu
    if "job_mem" in given:
        opts["job_mem"] = parse_memory(given.pop("job_mem"), "job_mem")

    if "protocol" in given:
        overrides["protocol"] = _protocol(given.pop("protocol"))
    if "security" in given:
        security = given.pop("security")
        if security is True:
            overrides.setdefault("protocol", "tls")
        elif security is False:
            overrides["protocol"] = "tcp"
        else:
            raise ConfigError(
                "security",
                type(security).__name__,
                "jobstrap makes per-cluster TLS certificates itself",
                "leave security unset (TLS) or pass protocol='tcp' to turn TLS off",
            )
    if "extra" in given:
        # dask-jobqueue's deprecated name of worker_extra_args.
        given.setdefault("worker_extra_args", given.pop("extra"))
    if "resource_spec" in given:
        # PBS: dask-jobqueue's "-l select=..." line; an extra directive replaces ours.
        spec = str(given.pop("resource_spec"))
        extra = list(_as_lines(given.get("job_extra_directives")))
        given["job_extra_directives"] = [f"-l {spec}", *extra]
    if "worker_extra_args" in given:
        given["worker_extra_args"] = [str(a) for a in _as_lines(given["worker_extra_args"])]

    # dask-jobqueue's interface is the workers' *and* the scheduler's unless the
    # scheduler is given its own; profiles keep the two apart.
    if (
        "interface" in given
        and "scheduler_interface" not in given
        and "scheduler_interface" not in overrides
        and "scheduler_host" not in opts
    ):
        overrides["scheduler_interface"] = given["interface"]

    overrides.update(given)
    options = ClusterOptions(scheduler_options=scheduler_options, **opts)
    return overrides, options


def _as_lines(value: object) -> tuple[object, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(value, Mapping):
        # dask-jobqueue also takes {"--flag": "value"} for directives/arguments.
        return tuple(f"{k}={v}" if v not in (None, "") else str(k) for k, v in value.items())
    return (value,)


def resolve_profile(
    profile: str | Profile | None,
    overrides: Mapping[str, Any],
    system: str | None,
    class_name: str,
    class_of_system: Mapping[str | None, str],
) -> Profile:
    """The profile a cluster class is built from: named, given, or the defaults.

    ``system`` is the class's batch system (``None`` for ``BatchCluster``): with no
    profile named, the defaults on that system; a profile that chose another system
    explicitly is refused, naming the class to use (``class_of_system``).
    """
    if isinstance(profile, Profile):
        resolved = profile.with_overrides(overrides) if overrides else profile
    else:
        named = profile or os.environ.get("JOBSTRAP_PROFILE")
        if system is not None and not named:
            # SLURMCluster() with no profile: the defaults, on this class's system.
            overrides = {"system": system, **overrides}
        resolved = load_profile(profile, overrides)
    if system is not None and resolved.system != system:
        if resolved.sources.get("system") in ("default", None):
            return resolved.with_overrides({"system": system})
        raise ConfigError(
            "system",
            resolved.system,
            f"{class_name} submits to {system}, but the profile is for"
            f" {resolved.system} (from {resolved.sources.get('system')})",
            f"use {class_of_system.get(resolved.system, 'BatchCluster')} for this profile",
        )
    return resolved
