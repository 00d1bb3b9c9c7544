"""Every run of a benchmark, kept in its results file, and the pooled figures of the current code.

A results file is ``{"benchmark": name, "script": ..., "runs": [...], "summary": {...}}``.
Each run is appended, never replaced: choosing the best of several runs is how a table
comes to say more than the measurements do. A run holds its ``date``, its ``code``
identity (:func:`code_identity`), ``versions``, ``settings``, its ``workload`` (the
settings that change what is measured), whether it ``finished``,
the raw per-round values of every method (``series``), which pairs of them are compared
(``measures``) and the script's own ``detail``.

``summary`` is recomputed on every append from the runs of the newest run's measured
code and workload (:func:`pool_key`): their rounds are pooled (rounds are paired
within a run: the same round saw the same cluster) and :mod:`stats`' paired bootstrap
puts an interval around the ratio.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stats import paired_ratio

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# What a benchmark measures besides its own script: the package, and the helper that
# places submissions in Slurm's scheduling cycle. stats, history and report only
# summarise, so changing them keeps the pool.
MEASURED_TREES = ("src/jobstrap",)
MEASURED_HELPERS = ("bench/slurm_phase.py",)
SKIPPED_PARTS = ("__pycache__",)


def measured_files(script: str, repo: Path = REPO) -> list[str]:
    """The repository-relative paths whose contents make up a benchmark's measured code."""
    paths = {script, *MEASURED_HELPERS}
    for tree in MEASURED_TREES:
        for path in (repo / tree).rglob("*"):
            skipped = any(p in SKIPPED_PARTS for p in path.parts) or path.suffix == ".pyc"
            if path.is_file() and not skipped:
                paths.add(path.relative_to(repo).as_posix())
    return sorted(p for p in paths if (repo / p).is_file())


def measured_hash(files: Iterable[tuple[str, bytes]]) -> str:
    """A hash over (path, content) pairs, independent of their order."""
    digest = hashlib.sha256()
    for name, content in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


def _git(*args: str, repo: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def code_identity(script: str, repo: Path = REPO) -> dict[str, Any]:
    """The code a run measures.

    Parameters
    ----------
    script
        The benchmark script, relative to the repository (``bench/bench_cluster.py``).
    repo
        The repository's root.

    Returns
    -------
    dict
        ``rev`` (``git rev-parse HEAD``), ``dirty`` (uncommitted changes anywhere) and
        ``measured``: the hash of the files the benchmark measures, read from the
        working tree, so a run on uncommitted code is told apart and a commit that
        touches neither the package nor the script keeps the pool.
    """
    files = measured_files(script, repo)
    return {
        "rev": _git("rev-parse", "HEAD", repo=repo) or "<unknown>",
        "dirty": bool(_git("status", "--porcelain", repo=repo)),
        "measured": measured_hash((f, (repo / f).read_bytes()) for f in files),
    }


def code_key(code: Mapping[str, Any]) -> str:
    """What runs must share to be pooled: the measured hash, else the revision.

    Runs from before the history carry only the commit that added their file, and no
    two such commits are assumed to hold the same measured code.
    """
    measured = code.get("measured")
    return f"measured:{measured}" if measured else f"rev:{code.get('rev', '<unknown>')}"


def pool_key(run: Mapping[str, Any]) -> str:
    """What runs must share to be pooled: their code (:func:`code_key`) and their
    ``workload``, the settings that change what is measured (array size, job shape)."""
    workload = json.dumps(run.get("workload", {}), sort_keys=True)
    return f"{code_key(run.get('code', {}))} {workload}"


def _pairs(runs: Sequence[Mapping[str, Any]], measure: str) -> tuple[list[float], list[float]]:
    """The paired rounds of one measure pooled over runs; a round either side lacks is out."""
    ours: list[float] = []
    theirs: list[float] = []
    for run in runs:
        spec = run.get("measures", {}).get(measure)
        if spec is None:
            continue
        series = run.get("series", {}).get(spec["series"], {})
        a = series.get(spec["ours"], [])
        b = series.get(spec["anchor"], [])
        for x, y in zip(a, b, strict=False):
            if x is not None and y is not None:
                ours.append(float(x))
                theirs.append(float(y))
    return ours, theirs


def pool(runs: Sequence[Mapping[str, Any]], measure: str) -> dict[str, Any] | None:
    """The pooled figure of one measure over ``runs`` (all of one :func:`pool_key`).

    The bootstrap resamples the pooled rounds as if independent: a shift between runs
    (another day, another load on the machine) widens the spread of the rounds but is
    not resampled as a unit, so with few runs the interval understates that part.

    Returns
    -------
    dict or None
        ``ratio`` (of medians), ``ratio_of_means``, ``ci`` and ``ci_of_means`` (95 %
        paired bootstrap over the pooled rounds; None below three rounds), ``ours`` and
        ``anchor`` (names), ``ours_median``, ``anchor_median``, ``ours_mean``,
        ``anchor_mean``, ``unit``, ``runs`` and ``rounds``; None when no run has a
        paired round of it.
    """
    holding = [r for r in runs if measure in r.get("measures", {})]
    ours, theirs = _pairs(holding, measure)
    if not ours:
        return None
    spec = holding[-1]["measures"][measure]
    a = dict(enumerate(ours))
    b = dict(enumerate(theirs))
    by_median = paired_ratio(a, b, statistics.median)
    by_mean = paired_ratio(a, b, statistics.fmean)

    def ratio(x: float, y: float) -> float | None:
        return round(x / y, 3) if y else None

    def interval(found: Mapping[str, float | int] | None) -> list[float] | None:
        return None if found is None else [float(found["low"]), float(found["high"])]

    return {
        "ratio": ratio(statistics.median(ours), statistics.median(theirs)),
        "ratio_of_means": ratio(statistics.fmean(ours), statistics.fmean(theirs)),
        "ci": interval(by_median),
        "ci_of_means": interval(by_mean),
        "ours": spec["ours"],
        "anchor": spec["anchor"],
        "ours_median": round(statistics.median(ours), 3),
        "anchor_median": round(statistics.median(theirs), 3),
        "ours_mean": round(statistics.fmean(ours), 3),
        "anchor_mean": round(statistics.fmean(theirs), 3),
        "unit": spec.get("unit", "s"),
        "runs": sum(1 for r in holding if _pairs([r], measure)[0]),
        "rounds": len(ours),
        "unfinished_runs": sum(1 for r in holding if r.get("finished") is False),
    }


def current_runs(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs of the newest run's code and workload (see :func:`pool_key`)."""
    if not runs:
        return []
    key = pool_key(runs[-1])
    return [r for r in runs if pool_key(r) == key]


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{measure: pooled figure}`` over the runs of the newest run's code identity."""
    pooled = current_runs(runs)
    measures: dict[str, None] = {}
    for run in pooled:
        measures.update(dict.fromkeys(run.get("measures", {})))
    summary: dict[str, Any] = {}
    for measure in measures:
        figure = pool(pooled, measure)
        if figure is not None:
            summary[measure] = figure
    return summary


def last_pooled(runs: Sequence[Mapping[str, Any]], measure: str) -> dict[str, Any] | None:
    """The pooled figure of the newest code and workload that has ``measure``, with its
    ``code``."""
    holding = [r for r in runs if measure in r.get("measures", {})]
    if not holding:
        return None
    key = pool_key(holding[-1])
    same = [r for r in holding if pool_key(r) == key]
    figure = pool(same, measure)
    if figure is None:
        return None
    return {**figure, "code": dict(same[-1].get("code", {})), "date": same[-1].get("date")}


def write_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: a run cut off while
    writing leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp's file is private (0600); keep the old file's mode, else the umask's.
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(data, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    """A results file, or an empty one if there is none yet."""
    if not path.exists():
        return {"benchmark": path.stem, "runs": [], "summary": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    if "runs" not in data or not isinstance(data["runs"], list):
        raise ValueError(f"{path} is not a results history (no 'runs' list)")
    return data


def append_run(
    path: Path, run: dict[str, Any], *, benchmark: str | None = None, script: str | None = None
) -> dict[str, Any]:
    """Append one run to a results file and recompute its summary.

    Parameters
    ----------
    path
        The results file (created if missing).
    run
        The run: ``date``, ``code``, ``versions``, ``settings``, ``finished``,
        ``series`` (``{series: {method: [value or None per round]}}``), ``measures``
        (``{measure: {"series", "ours", "anchor", "unit"}}``) and ``detail``.
    benchmark, script
        The file's benchmark name and script, set when given.

    Returns
    -------
    dict
        The file's new contents.
    """
    data = load(path)
    if benchmark is not None:
        data["benchmark"] = benchmark
    if script is not None:
        data["script"] = script
    data["runs"].append(run)
    data["summary"] = summarise(data["runs"])
    write_atomic(path, data)
    return data


def new_run(
    script: str,
    *,
    versions: Mapping[str, Any],
    settings: Mapping[str, Any],
    series: Mapping[str, Mapping[str, Sequence[float | None]]],
    measures: Mapping[str, Mapping[str, str]],
    detail: Mapping[str, Any],
    workload: Mapping[str, Any] | None = None,
    finished: bool = True,
    date: str | None = None,
) -> dict[str, Any]:
    """A run entry for :func:`append_run`, stamped with the date and code identity.

    ``workload`` holds the settings that change what is measured: only runs with the
    same workload (and code) are pooled.
    """
    return {
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": code_identity(script),
        "versions": dict(versions),
        "settings": dict(settings),
        "workload": dict(workload or {}),
        "finished": finished,
        "series": {k: {m: list(v) for m, v in s.items()} for k, s in series.items()},
        "measures": {k: dict(v) for k, v in measures.items()},
        "detail": dict(detail),
    }
