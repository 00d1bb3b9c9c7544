"""Progress of a batch run as people see it: queue wait first, then tasks done.

The job's client rank keeps ``progress.json`` in the run directory current (see
:mod:`jobstrap.engines.dask.graph_runner`); the submitting side reads it and shows

* in a terminal, one line redrawn in place (tqdm when it is installed, else a bar of
  our own), and a plain line per change of phase when the output is not a terminal
  (logs stay readable);
* in a notebook, an HTML snippet (``JobFuture._repr_html_``) that a live display
  handle redraws while ``result()`` waits; no ipywidgets needed.

Nothing here talks to the batch system: callers pass the job's state in.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from jobstrap.config.units import format_duration
from jobstrap.states import JobState

__all__ = ["Progress", "ProgressDisplay", "read_progress", "render_html", "render_text"]

_BAR_WIDTH = 30


@dataclass(frozen=True)
class Progress:
    """One snapshot of ``progress.json``.

    Attributes
    ----------
    phase
        ``loading``, ``connecting``, ``computing`` / ``running``, ``saving``, ``done``
        or ``failed``.
    total, done, erred
        Tasks the scheduler has seen, finished, and failed.
    workers, threads
        Workers connected and their threads (a graph job computed in-process: one,
        the job's own process, and its thread pool).
    started, updated
        Epoch seconds: when the client rank started and last wrote the file.
    """

    phase: str = "starting"
    total: int = 0
    done: int = 0
    erred: int = 0
    workers: int = 0
    threads: int = 0
    started: float = 0.0
    updated: float = 0.0
    error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        """Build from the JSON object; unknown keys are ignored, bad values become 0."""

        def number(key: str) -> float:
            try:
                return float(data.get(key, 0) or 0)
            except (TypeError, ValueError):
                return 0.0

        return cls(
            phase=str(data.get("phase", "starting")),
            total=int(number("total")),
            done=int(number("done")),
            erred=int(number("erred")),
            workers=int(number("workers")),
            threads=int(number("threads")),
            started=number("started"),
            updated=number("updated"),
            error=str(data.get("error", "")),
        )

    @property
    def fraction(self) -> float | None:
        """Finished share of the tasks seen so far (None before any task is known)."""
        if self.total <= 0:
            return None
        return min(1.0, self.done / self.total)


def read_progress(run_dir: str | os.PathLike[str]) -> Progress | None:
    """The run's latest progress, or None if the job has not reported any yet."""
    try:
        data = json.loads((Path(run_dir) / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written yet, or mid-replacement on a lagging file system
    return Progress.from_json(data) if isinstance(data, dict) else None


def _bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    filled = round(fraction * width)
    return "#" * filled + "." * (width - filled)


def render_text(
    state: JobState | str,
    progress: Progress | None,
    *,
    reason: str = "",
    waited: float | None = None,
    now: float | None = None,
) -> str:
    """One line for a terminal: the queue wait, then the phase and a bar of tasks."""
    state_text = str(state)
    if state_text == "PENDING" or progress is None:
        line = state_text
        if waited is not None:
            line += f" {format_duration(waited)}"
        if reason and reason != "None":
            line += f" ({reason})"
        return line
    clock = time.time() if now is None else now
    elapsed = format_duration(clock - progress.started) if progress.started else ""
    parts = [state_text, progress.phase]
    fraction = progress.fraction
    if fraction is not None:
        parts.append(f"[{_bar(fraction)}] {progress.done}/{progress.total} tasks")
        parts.append(f"{fraction:4.0%}")
    if progress.erred:
        parts.append(f"{progress.erred} erred")
    if progress.workers:
        parts.append(f"{progress.workers} workers")
    if elapsed:
        parts.append(elapsed)
    return " ".join(parts)


def render_html(
    state: JobState | str,
    progress: Progress | None,
    *,
    title: str = "",
    reason: str = "",
    waited: float | None = None,
) -> str:
    """A small HTML block for notebooks: title, state, a progress bar, counts."""
    fraction = progress.fraction if progress is not None else None
    percent = 0.0 if fraction is None else 100.0 * fraction
    colour = {"FAILED": "#d9534f", "COMPLETED": "#5cb85c"}.get(str(state), "#337ab7")
    if progress is not None and progress.phase == "failed":
        colour = "#d9534f"
    caption = html.escape(render_text(state, progress, reason=reason, waited=waited))
    heading = f"<strong>{html.escape(title)}</strong><br>" if title else ""
    return (
        f'<div class="jobstrap-progress" style="font-family: monospace; max-width: 40em">'
        f"{heading}"
        f'<div style="background: #eee; height: 0.8em; border-radius: 3px">'
        f'<div style="background: {colour}; width: {percent:.1f}%; height: 100%;'
        f' border-radius: 3px"></div></div>'
        f"<span>{caption}</span></div>"
    )


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class ProgressDisplay:
    """Shows a run's progress while someone waits: terminal line, log lines or notebook.

    Parameters
    ----------
    title
        Shown first (the run id).
    stream
        Where terminal output goes (default ``sys.stderr``).
    """

    def __init__(self, title: str = "", stream: TextIO | None = None) -> None:
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self._notebook = _in_notebook()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._handle: Any = None
        self._tqdm: Any = None
        self._last_line = ""
        self._last_key: tuple[str, str] | None = None
        self._last_decile = -1
        self._width = 0

    def update(
        self,
        state: JobState | str,
        progress: Progress | None,
        *,
        reason: str = "",
        waited: float | None = None,
    ) -> None:
        """Redraw with the latest state and progress."""
        if self._notebook:
            self._update_notebook(state, progress, reason=reason, waited=waited)
        elif self._tty:
            self._update_terminal(state, progress, reason=reason, waited=waited)
        else:
            self._update_log(state, progress, reason=reason)

    def clear(self) -> None:
        """Erase the redrawn terminal line, so other output can be printed cleanly."""
        if self._tqdm is not None:
            self._tqdm.clear()
        elif self._tty and self._last_line:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._last_line = ""
            self._width = 0

    def close(self) -> None:
        """Finish the display (ends the redrawn line)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()
        self._last_line = ""

    # -- the three outputs --------------------------------------------------------------

    def _update_notebook(
        self, state: JobState | str, progress: Progress | None, *, reason: str, waited: float | None
    ) -> None:
        # Imported by name: IPython is optional and only present inside a notebook.
        display_module: Any = importlib.import_module("IPython.display")
        text = render_html(state, progress, title=self.title, reason=reason, waited=waited)
        block = display_module.HTML(text)
        if self._handle is None:
            self._handle = display_module.display(block, display_id=True)
        else:
            self._handle.update(block)

    def _update_terminal(
        self, state: JobState | str, progress: Progress | None, *, reason: str, waited: float | None
    ) -> None:
        if progress is not None and progress.total and self._use_tqdm():
            self._tqdm_update(state, progress)
            return
        line = f"{self.title}: " if self.title else ""
        line += render_text(state, progress, reason=reason, waited=waited)
        if line == self._last_line:
            return
        padding = " " * max(0, self._width - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._width = len(line)
        self._last_line = line

    def _use_tqdm(self) -> bool:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            return False
        return True

    def _tqdm_update(self, state: JobState | str, progress: Progress) -> None:
        from tqdm import tqdm

        if self._tqdm is None:
            if self._last_line:  # leave the queue-wait line in place
                self.stream.write("\n")
            self._tqdm = tqdm(total=progress.total, desc=self.title or "tasks", file=self.stream,
                              unit="task", dynamic_ncols=True)  # fmt: skip
        bar = self._tqdm
        bar.total = max(progress.total, bar.n)
        bar.set_postfix_str(f"{state} {progress.phase} {progress.workers} workers", refresh=False)
        bar.update(progress.done - bar.n)

    def _update_log(self, state: JobState | str, progress: Progress | None, *, reason: str) -> None:
        # Not a terminal: a line when the state or phase changes, and every tenth of the
        # way, so a log file shows the story without thousands of redraws.
        phase = progress.phase if progress is not None else ""
        fraction = progress.fraction if progress is not None else None
        decile = -1 if fraction is None else int(fraction * 10)
        key = (str(state), phase)
        if key == self._last_key and decile == self._last_decile:
            return
        self._last_key = key
        self._last_decile = decile
        line = f"{self.title}: " if self.title else ""
        self.stream.write(line + render_text(state, progress, reason=reason) + "\n")
        self.stream.flush()
