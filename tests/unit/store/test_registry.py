"""The registry: private JSON records, prefixes, locked updates from several processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from jobstrap.errors import UserError
from jobstrap.store import registry
from jobstrap.store.registry import RunRecord


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_record(run_id: str = "run-20240506T100000-abc123", **changes: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": run_id,
        "kind": "app",
        "system": "slurm",
        "run_dir": f"/home/ada/.jobstrap/runs/{run_id}",
        "job_ids": ["123"],
        "tags": ["js0123456789"],
    }
    values.update(changes)
    return RunRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state" / "runs"


def test_the_registry_lives_in_jobstrap_state_dir() -> None:
    assert registry.registry_dir({"JOBSTRAP_STATE_DIR": "/s"}) == Path("/s/runs")


def test_the_registry_defaults_to_the_xdg_state_home() -> None:
    assert registry.registry_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/jobstrap/runs")


def test_a_saved_record_is_a_private_file_in_a_private_directory(where: Path) -> None:
    path = registry.save(make_record())

    assert path == where / "run-20240506T100000-abc123.json"
    assert mode(path) == 0o600
    assert mode(where) == 0o700


def test_a_saved_record_loads_back_equal(where: Path) -> None:
    record = make_record(logs={"123": {"out": "/l/123.out", "err": "/l/123.err"}})
    registry.save(record)

    loaded = registry.load(record.run_id)

    assert loaded == record


def test_a_unique_prefix_finds_the_run(where: Path) -> None:
    registry.save(make_record("run-a-1"))
    registry.save(make_record("run-b-1"))

    assert registry.load("run-b").run_id == "run-b-1"


def test_an_ambiguous_prefix_is_a_user_error_listing_the_matches(where: Path) -> None:
    registry.save(make_record("run-a-1"))
    registry.save(make_record("run-a-2"))

    with pytest.raises(UserError, match="ambiguous: run-a-1, run-a-2"):
        registry.load("run-a")


def test_an_unknown_run_is_a_user_error(where: Path) -> None:
    with pytest.raises(UserError, match="no run 'nope'"):
        registry.load("nope")


def test_an_exact_id_wins_over_a_longer_one_it_prefixes(where: Path) -> None:
    registry.save(make_record("run-a"))
    registry.save(make_record("run-a-2"))

    assert registry.load("run-a").run_id == "run-a"


def test_list_returns_records_oldest_first(where: Path) -> None:
    registry.save(make_record("second", created=2.0))
    registry.save(make_record("first", created=1.0))

    assert [r.run_id for r in registry.list()] == ["first", "second"]


def test_list_skips_files_it_cannot_read(where: Path) -> None:
    registry.save(make_record("good"))
    (where / "broken.json").write_text("{not json")

    assert [r.run_id for r in registry.list()] == ["good"]


def test_list_of_a_missing_registry_is_empty(where: Path) -> None:
    assert registry.list() == []


def test_update_changes_only_the_named_fields(where: Path) -> None:
    registry.save(make_record())

    updated = registry.update("run-2024", status="cancelled")

    assert updated.status == "cancelled"
    assert registry.load(updated.run_id).status == "cancelled"
    assert registry.load(updated.run_id).job_ids == ["123"]


def test_update_of_an_unknown_field_is_refused(where: Path) -> None:
    registry.save(make_record())

    with pytest.raises(TypeError):
        registry.update("run-2024", colour="red")


def _append_job(args: tuple[str, str, int]) -> None:
    state_dir, run_id, index = args
    os.environ["JOBSTRAP_STATE_DIR"] = state_dir

    def append(record: RunRecord) -> RunRecord:
        record.job_ids.append(f"job{index}")
        return record

    registry.modify(run_id, append)


def test_concurrent_updates_from_several_processes_lose_nothing(where: Path) -> None:
    registry.save(make_record("shared", job_ids=[]))
    state_dir = os.environ["JOBSTRAP_STATE_DIR"]

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_job, [(state_dir, "shared", i) for i in range(100)])

    assert sorted(registry.load("shared").job_ids) == sorted(f"job{i}" for i in range(100))


def test_unknown_keys_from_a_newer_version_are_kept_in_extra(where: Path) -> None:
    where.mkdir(parents=True)
    data = make_record("newer").to_json() | {"future_field": 1}
    (where / "newer.json").write_text(json.dumps(data))

    assert registry.load("newer").extra == {"future_field": 1}


def test_a_run_id_with_a_path_in_it_is_refused() -> None:
    with pytest.raises(UserError):
        make_record("../escape")


def test_log_paths_default_to_the_run_directory_s_logs() -> None:
    record = make_record(job_ids=["123_4"])

    assert record.log_paths("123_4") == (
        "/home/ada/.jobstrap/runs/run-20240506T100000-abc123/logs/123_4.out",
        "/home/ada/.jobstrap/runs/run-20240506T100000-abc123/logs/123_4.err",
    )


def test_remove_deletes_the_record(where: Path) -> None:
    registry.save(make_record("gone"))

    registry.remove("gone")

    assert registry.list() == []


# --- damaged records are reported and skipped ---------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2, 3]",
        '"a string"',
        "{not json",
        b"\xff\xfe not utf-8",
        '{"kind": "app", "system": "slurm", "run_dir": "/r"}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": 7}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": "/r", "job_ids": "123"}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": "/r", "job_ids": [1]}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": "/r", "logs": {"1": 2}}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": "/r", "created": "now"}',
        '{"run_id": "x", "kind": "app", "system": "slurm", "run_dir": "/r", "extra": []}',
        '{"run_id": "../x", "kind": "app", "system": "slurm", "run_dir": "/r"}',
        '{"run_id": "x", "kind": "nope", "system": "slurm", "run_dir": "/r"}',
    ],
)
def test_a_damaged_record_is_reported_once_and_the_others_still_list(
    where: Path, content: str | bytes
) -> None:
    registry.save(make_record("good"))
    damaged = where / "damaged.json"
    if isinstance(content, bytes):
        damaged.write_bytes(content)
    else:
        damaged.write_text(content)
    reported: list[str] = []

    assert [r.run_id for r in registry.list(report=reported.append)] == ["good"]
    assert len(reported) == 1
    assert str(damaged) in reported[0]
    assert "\n" not in reported[0]
    with pytest.raises(registry.DamagedRecordError, match="fix or delete the file"):
        registry.load("damaged")


def test_a_damaged_record_is_reported_on_stderr_by_default(
    where: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.save(make_record("good"))
    (where / "list.json").write_text("[]")

    assert [r.run_id for r in registry.list()] == ["good"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(where / "list.json") in err


# --- job keys -----------------------------------------------------------------------------


def test_a_record_written_before_controllers_were_saved_still_loads(where: Path) -> None:
    data = make_record().to_json()
    del data["controller"]
    where.mkdir(parents=True)
    (where / f"{data['run_id']}.json").write_text(json.dumps(data))

    record = registry.load(data["run_id"])

    assert record.controller == ""
    assert record.job_keys() == [registry.JobKey("slurm", "", "123", record.created)]


def test_a_controller_that_is_not_text_makes_the_record_damaged(where: Path) -> None:
    data = make_record().to_json()
    data["controller"] = 5
    where.mkdir(parents=True)
    (where / f"{data['run_id']}.json").write_text(json.dumps(data))

    with pytest.raises(registry.DamagedRecordError, match="controller is int, not str"):
        registry.load(data["run_id"])


def test_one_job_id_in_two_systems_or_two_lifetimes_of_a_controller_is_two_keys() -> None:
    local = make_record("run-a", system="local", controller="login1:/home/ada/.jobstrap/local")
    slurm = make_record("run-b", controller="hpc", created=local.created + 1)
    restarted = make_record("run-c", controller="hpc", created=local.created + 2)

    keys = {local.job_key("123"), slurm.job_key("123"), restarted.job_key("123")}

    assert len(keys) == 3
    assert slurm.job_key("123") == registry.JobKey("slurm", "hpc", "123", slurm.created)
