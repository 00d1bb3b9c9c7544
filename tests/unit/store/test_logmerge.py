"""Every job's logs of a run, merged in time order; and the tags the lines carry."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import pytest

from jobstrap.bootstrap import logtags
from jobstrap.store.logmerge import log_files, merge_logs, parse_since


def _stamp(seconds: int) -> str:
    when = datetime.datetime(2026, 1, 2, 3, 4, 0) + datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%d %H:%M:%S") + ",250"


def test_lines_of_several_jobs_come_out_in_time_order_with_their_source(tmp_path: Path) -> None:
    a, b = tmp_path / "1.err", tmp_path / "2.err"
    a.write_text(
        f"{_stamp(0)} - first\n{_stamp(20)} - third\nTraceback (most recent call last):\n  boom\n"
    )
    b.write_text(f"{_stamp(10)} - second\n{_stamp(30)} - fourth\n")

    lines = merge_logs([("1 err", a), ("2 err", b)])

    assert [str(line) for line in lines] == [
        f"[1 err] {_stamp(0)} - first",
        f"[2 err] {_stamp(10)} - second",
        f"[1 err] {_stamp(20)} - third",
        "[1 err] Traceback (most recent call last):",  # stays with its line
        "[1 err]   boom",
        f"[2 err] {_stamp(30)} - fourth",
    ]


def test_json_lines_merge_with_text_lines(tmp_path: Path) -> None:
    text, as_json = tmp_path / "1.err", tmp_path / "2.err"
    text.write_text(f"{_stamp(0)} - text early\n{_stamp(20)} - text late\n")
    middle = datetime.datetime(2026, 1, 2, 3, 4, 10).timestamp()
    as_json.write_text(json.dumps({"time": middle, "message": "json middle"}) + "\n")

    lines = merge_logs([("1 err", text), ("2 err", as_json)])

    assert [line.source for line in lines] == ["1 err", "2 err", "1 err"]


def test_grep_and_since_filter(tmp_path: Path) -> None:
    log = tmp_path / "1.err"
    log.write_text(
        f"{_stamp(0)} - rank=1 old\n{_stamp(60)} - rank=2 new\n{_stamp(90)} - rank=1 new\n"
    )
    since = datetime.datetime(2026, 1, 2, 3, 4, 30).timestamp()

    lines = merge_logs([("1 err", log)], grep=r"rank=1\b", since=since)

    assert [line.text for line in lines] == [f"{_stamp(90)} - rank=1 new"]


def test_since_takes_a_duration_ago_or_a_time() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert (
        parse_since("2026-01-02 03:04", now=0.0) == datetime.datetime(2026, 1, 2, 3, 4).timestamp()
    )
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now=0.0)


def test_every_job_s_files_then_the_other_logs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("5.out", "5.err", "scheduler.err", "notes.txt"):
        (logs / name).write_text("x\n")

    found = log_files([("5", str(logs / "5.out"), str(logs / "5.err"))], logs)

    assert [source for source, _ in found] == ["5 out", "5 err", "scheduler err"]


def test_log_records_carry_the_job_s_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTRAP_RUN_DIR", "/runs/run-x/")
    monkeypatch.setenv("JOBSTRAP_JOB_ID", "77")
    monkeypatch.setenv("JOBSTRAP_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("JOBSTRAP_RANK", "2")
    monkeypatch.setenv("JOBSTRAP_LOG_FORMAT", "json")
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    # A logger of this test's own: the session's real handlers stay as they are.
    logger = logging.getLogger("jobstrap-test-logtags")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        logtags.install((logger.name,))
        logtags.set_role("worker")
        logger.warning("hello %s", "there")
    finally:
        logger.removeHandler(handler)
        logtags.set_role("")

    [line] = [json.loads(text) for text in handler.lines]
    assert line["message"] == "hello there"
    assert line["level"] == "WARNING"
    assert {k: line[k] for k in logtags.TAGS} == {
        "run": "run-x",
        "job_id": "77",
        "array_task": "3",
        "node": line["node"],
        "rank": "2",
        "role": "worker",
    }
    assert line["node"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
