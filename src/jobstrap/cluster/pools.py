"""Worker pools: one scheduler, several job shapes.

``SLURMCluster(pools={"cpu": dict(cores=8), "gpu": dict(queue="gpu", gpus=2)})``
gives each pool its own profile (the cluster's, with the pool's settings on top,
validated like the cluster's keywords), its own job shape and the Dask resources
its workers provide. A cluster without ``pools=`` is one pool named ``default``.

Job names carry the pool (``<prefix>-<pool>-<serial>.<task>``, the default pool
keeps ``<prefix>-<serial>.<task>``), and so do worker names, which start with
their job's. Everything here is pure: no processes, no event loop.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jobstrap.cluster.options import ClusterOptions, split_options
from jobstrap.cluster.scaling import JobShape
from jobstrap.config.profile import Profile
from jobstrap.errors import ConfigError

__all__ = [
    "DEFAULT_POOL",
    "Pool",
    "build_pools",
    "pick_pool",
    "pool_bounds",
    "pop_resources",
    "provides",
    "resources_env",
]

#: The name of the only pool of a cluster built without ``pools=``.
DEFAULT_POOL = "default"

#: Pool names end up in job names and in Dask worker names: short and plain.
_POOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")

#: distributed reads a worker's resources from this configuration variable when the
#: worker is not given any (a Python literal: dask lower-cases keys of nested
#: variables, and resource names are case-sensitive).
RESOURCES_VARIABLE = "DASK_DISTRIBUTED__WORKER__RESOURCES"

#: Pool keywords that are not profile settings.
_RESOURCE_KEYS = ("worker_resources", "resources")


@dataclass(frozen=True)
class Pool:
    """One shape of worker job in a cluster.

    Attributes
    ----------
    name
        The pool's name (``"default"`` for a single-shape cluster).
    profile
        The settings its jobs are built from.
    shape
        What one of its jobs brings (workers, threads, memory).
    resources
        The Dask resources each of its workers provides (``{"GPU": 1}``).
    options
        Cluster options with the pool's ``job_cpu``/``job_mem``.
    prefix
        Its jobs' name prefix.
    """

    name: str
    profile: Profile = field(repr=False)
    shape: JobShape
    resources: Mapping[str, float] = field(default_factory=dict)
    options: ClusterOptions = field(default_factory=ClusterOptions)
    prefix: str = "jobstrap"


def _resources(where: str, value: object) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, value, 'expected a dict of resource amounts ({"GPU": 1})')
    out: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise ConfigError(where, key, "resource names are letters, digits and _ . -")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ConfigError(f"{where}.{key}", amount, "expected a number")
        if not amount > 0 or math.isinf(amount):
            raise ConfigError(f"{where}.{key}", amount, "must be a positive, finite number")
        out[key] = amount
    return out


def pop_resources(settings: dict[str, Any], where: str = "worker_resources") -> dict[str, float]:
    """Take ``worker_resources`` (or ``resources``) out of ``settings``, validated."""
    found = {k: settings.pop(k) for k in _RESOURCE_KEYS if k in settings}
    if len(found) > 1:
        raise ConfigError("resources", found["resources"], "give worker_resources only once")
    return _resources(where, next(iter(found.values()), None))


def resources_env(resources: Mapping[str, float]) -> dict[str, str]:
    """The job environment that gives every worker of a job these resources."""
    if not resources:
        return {}
    literal = ", ".join(f"{name!r}: {amount!r}" for name, amount in sorted(resources.items()))
    return {RESOURCES_VARIABLE: "{" + literal + "}"}


def _provided(profile: Profile, explicit: Mapping[str, float]) -> dict[str, float]:
    # A GPU pool's workers run one per GPU (the job side sets GPU=1 on each), so
    # without resources of its own a pool with gpus provides GPU=1 per worker.
    if explicit:
        return dict(explicit)
    return {"GPU": 1} if profile.gpus > 0 else {}


def _with_resources(profile: Profile, resources: Mapping[str, float], source: str) -> Profile:
    if not resources:
        return profile
    env = {**dict(profile.env), **resources_env(resources)}
    return profile.with_overrides({"env": env}, source)


def _pool(
    name: str,
    base: Profile,
    settings: Mapping[str, Any],
    options: ClusterOptions,
    prefix: str,
) -> Pool:
    where = f"pools[{name!r}]"
    if not isinstance(settings, Mapping):
        raise ConfigError(where, settings, "expected a dict of settings (cores=8, queue=...)")
    given = dict(settings)
    explicit = pop_resources(given, f"{where}.worker_resources")
    try:
        overrides, pool_options = split_options(given)
        profile = base.with_overrides(overrides, source=f"pool {name}") if overrides else base
    except ConfigError as error:
        raise ConfigError(
            f"{where}.{error.field}", error.value, error.problem, error.suggestion
        ) from None
    for key in ("n_workers", "jobs", "scheduler_host", "dashboard_address", "name"):
        if getattr(pool_options, key) != getattr(ClusterOptions(), key):
            raise ConfigError(
                f"{where}.{key}", getattr(pool_options, key), "is a cluster setting, not a pool's"
            )
    if pool_options.scheduler_options or pool_options.scheduler_cls is not None:
        raise ConfigError(f"{where}.scheduler_options", "...", "is a cluster setting, not a pool's")
    merged = replace(
        options,
        job_cpu=pool_options.job_cpu if pool_options.job_cpu is not None else options.job_cpu,
        job_mem=pool_options.job_mem if pool_options.job_mem is not None else options.job_mem,
    )
    profile = _with_resources(profile, explicit, f"pool {name}")
    return Pool(
        name=name,
        profile=profile,
        shape=JobShape.from_profile(profile),
        resources=_provided(profile, explicit),
        options=merged,
        prefix=prefix if name == DEFAULT_POOL else f"{prefix}-{name}",
    )


def build_pools(
    profile: Profile,
    options: ClusterOptions,
    prefix: str,
    pools: Mapping[str, Any] | None = None,
    resources: Mapping[str, float] | None = None,
) -> dict[str, Pool]:
    """The cluster's pools, the default one first.

    Parameters
    ----------
    profile
        The cluster's resolved profile (each pool's settings go on top of it).
    options
        The cluster's options.
    prefix
        The cluster's job name prefix.
    pools
        ``{name: settings}``; ``None`` or empty: one pool, ``default``.
    resources
        The cluster-level ``worker_resources`` (the default pool's, without ``pools``).

    Returns
    -------
    dict
        Pools by name; the first is the default (``default`` if named so, else the
        first given): ``scale()`` and ``jobs=`` without a pool name it.

    Raises
    ------
    ConfigError
        A bad pool name or setting (one line naming ``pools['gpu'].field``).
    """
    if not pools:
        explicit = dict(resources or {})
        base = _with_resources(profile, explicit, "argument")
        shape = JobShape.from_profile(base)
        only = Pool(DEFAULT_POOL, base, shape, _provided(base, explicit), options, prefix)
        return {DEFAULT_POOL: only}
    if not isinstance(pools, Mapping):
        raise ConfigError("pools", pools, 'expected a dict of pools ({"cpu": dict(cores=8)})')
    if resources:
        raise ConfigError(
            "worker_resources", dict(resources), "with pools, give each pool its own resources"
        )
    built: dict[str, Pool] = {}
    for name, settings in pools.items():
        if not isinstance(name, str) or not _POOL_NAME.match(name):
            raise ConfigError(
                "pools", name, "pool names are lower-case letters, digits and _ (at most 16)"
            )
        built[name] = _pool(name, profile, settings, options, prefix)
    first = DEFAULT_POOL if DEFAULT_POOL in built else next(iter(built))
    return {first: built[first], **{k: v for k, v in built.items() if k != first}}


def pick_pool(pools: Mapping[str, Pool], name: str | None, where: str = "pool") -> Pool:
    """The pool called ``name`` (``None``: the default one), or a one-line error."""
    if name is None:
        return next(iter(pools.values()))
    if name in pools:
        return pools[name]
    close = difflib.get_close_matches(str(name), list(pools), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"pools: {', '.join(pools)}"
    raise ConfigError(where, name, "no such pool", hint)


def pool_bounds(
    pools: Mapping[str, Pool], bounds: Mapping[str, Any]
) -> dict[str, tuple[int, float]]:
    """``adapt(pools={"cpu": (0, 20), "gpu": (0, 4)})`` checked: bounds in jobs by pool.

    A bound is ``(minimum, maximum)`` or a single maximum; the maximum may be
    ``math.inf``. Pools not named are left as they are.
    """
    if not isinstance(bounds, Mapping) or not bounds:
        raise ConfigError("pools", bounds, 'expected {"pool": (minimum_jobs, maximum_jobs)}')
    out: dict[str, tuple[int, float]] = {}
    for name, value in bounds.items():
        pick_pool(pools, name, "pools")
        pair = list(value) if isinstance(value, tuple | list) and len(value) == 2 else [0, value]
        numbers: list[float] = []
        for label, number in zip(("minimum", "maximum"), pair, strict=True):
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ConfigError(f"pools[{name!r}]", value, f"the {label} must be a job count")
            if number < 0 or math.isnan(number):
                raise ConfigError(f"pools[{name!r}]", value, f"the {label} must not be negative")
            numbers.append(number)
        low, high = numbers
        if math.isinf(low) or low > high:
            raise ConfigError(f"pools[{name!r}]", value, "the minimum is above the maximum")
        out[name] = (math.ceil(low), high if math.isinf(high) else math.floor(high))
    return out


def provides(resources: Mapping[str, float], restrictions: Mapping[str, float]) -> bool:
    """Whether a worker with ``resources`` can ever run a task asking ``restrictions``."""
    return all(resources.get(name, 0) >= amount for name, amount in restrictions.items())
