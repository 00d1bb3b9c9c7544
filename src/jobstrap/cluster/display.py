"""What a notebook cluster shows: its ``repr`` and the jobs table of ``_repr_html_``.

The table (job id, name, state, node or pending reason, time left, workers) and the
summary line above it are rendered from one jinja2 template; distributed's own
cluster widget is placed below them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jinja2

from jobstrap.cluster.jobs import JobStatus
from jobstrap.cluster.rotation import JobLifetime

__all__ = ["job_counts", "jobs_html", "repr_with_jobs"]

_COLUMNS = ("Job id", "Name", "State", "Node / reason", "Time left", "Workers")

_TEMPLATE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
    """\
<p style='text-align: left;'>Jobs: {{ running }} running, {{ pending }} pending \
({{ system }}, run {{ run_id }})</p>
{%- if error %}<p style='text-align: left; color: #c00;'>{{ error }}</p>{% endif %}
{%- if rows %}<table><tr>
{%- for column in columns %}<th style='text-align: left;'>{{ column }}</th>{% endfor %}</tr>
{%- for row in rows %}<tr>
{%- for cell in row %}<td style='text-align: left;'>{{ cell }}</td>{% endfor %}</tr>
{%- endfor %}</table>{% endif %}"""
)


def job_counts(jobs: Iterable[JobStatus]) -> dict[str, int]:
    """Live jobs by state (``PENDING`` and ``RUNNING`` always present)."""
    counts = {"PENDING": 0, "RUNNING": 0}
    for status in jobs:
        counts[status.state.value] = counts.get(status.state.value, 0) + 1
    return counts


def repr_with_jobs(text: str, counts: Mapping[str, int], rotation: str | None) -> str:
    """distributed's cluster repr with the job counts (and the rotation) added."""
    jobs = f"jobs={counts['RUNNING']} running, {counts['PENDING']} pending"
    if rotation:
        jobs += f" ({rotation})"
    return text[:-1] + f", {jobs})" if text.endswith(")") else text


def jobs_html(
    jobs: Iterable[JobStatus],
    lifetimes: Mapping[str, JobLifetime],
    *,
    system: str,
    run_id: str,
    error: BaseException | None,
    pools: bool = False,
) -> str:
    """The summary line, the cluster's error (if any) and the table of live jobs.

    With ``pools`` (a cluster of several worker pools) a Pool column follows the name.
    """
    live = list(jobs)
    rows: list[tuple[object, ...]] = []
    for status in sorted(live, key=lambda s: s.submitted):
        left = "" if status.remaining is None else f"{status.remaining / 60:.0f} min"
        life = lifetimes.get(status.name)
        if life is not None and life.phase != "running":
            left += f" ({life.phase})"
        node = status.node or status.reason
        row = (status.job_id, status.name, status.state.value, node, left, len(status.workers))
        rows.append((*row[:2], status.pool, *row[2:]) if pools else row)
    counts = job_counts(live)
    return _TEMPLATE.render(
        running=counts["RUNNING"],
        pending=counts["PENDING"],
        system=system,
        run_id=run_id,
        error=str(error).splitlines()[0] if error is not None else "",
        columns=(*_COLUMNS[:2], "Pool", *_COLUMNS[2:]) if pools else _COLUMNS,
        rows=rows,
    )
