"""The run directory: layout, private modes, atomic JSON."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobstrap.engines.dask.graph_runner import read_framed, write_framed
from jobstrap.errors import ConfigError
from jobstrap.store.rundir import (
    RunDir,
    SchedulerInfo,
    UnsafePathError,
    atomic_write_json,
    default_run_root,
    ensure_private_dir,
    new_run_id,
    read_json,
    read_private_bytes,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_create_makes_the_run_directory_and_logs_private(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "run-1")

    assert run.path == tmp_path / "runs" / "run-1"
    assert mode(run.path) == 0o700
    assert mode(run.logs_dir) == 0o700


def test_create_makes_missing_parents_private(tmp_path: Path) -> None:
    RunDir.create(tmp_path / "a" / "b", "run-1")

    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700


def test_create_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run = RunDir.create(tmp_path, "run-1")
    finally:
        os.umask(old)

    assert mode(run.path) == 0o700


def test_create_refuses_to_reuse_an_existing_run_directory(tmp_path: Path) -> None:
    RunDir.create(tmp_path, "run-1")

    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path, "run-1")


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".", "..", "-flag", "x" * 200])
def test_create_rejects_run_ids_that_are_not_plain_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="run_id"):
        RunDir.create(tmp_path, bad)


def test_layout_paths_match_the_documented_names(tmp_path: Path) -> None:
    run = RunDir(tmp_path)

    relative = {
        name: getattr(run, name).relative_to(tmp_path).as_posix()
        for name in (
            "run_json",
            "job_script",
            "ca_file",
            "cert_file",
            "key_file",
            "scheduler_file",
            "info_file",
            "logs_dir",
            "input_file",
            "result_file",
            "error_file",
            "progress_file",
            "exit_code_file",
            "drain_file",
        )
    }

    assert relative == {
        "run_json": "run.json",
        "job_script": "job.sh",
        "ca_file": "tls/ca.pem",
        "cert_file": "tls/cert.pem",
        "key_file": "tls/key.pem",
        "scheduler_file": "scheduler.json",
        "info_file": "info.json",
        "logs_dir": "logs",
        "input_file": "input.pkl",
        "result_file": "result.pkl",
        "error_file": "error.pkl",
        "progress_file": "progress.json",
        "exit_code_file": "exit_code",
        "drain_file": "drain",
    }


def test_run_dir_is_path_like(tmp_path: Path) -> None:
    run = RunDir(tmp_path)

    assert os.fspath(run) == str(tmp_path)


def test_open_fails_for_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir.open(tmp_path / "nope")


def test_atomic_write_json_creates_a_0600_file_that_reads_back(tmp_path: Path) -> None:
    target = tmp_path / "x.json"

    atomic_write_json(target, {"b": [1, 2], "a": "z"})

    assert read_json(target) == {"a": "z", "b": [1, 2]}
    assert mode(target) == 0o600


def test_atomic_write_json_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    old = os.umask(0)
    try:
        atomic_write_json(target, {})
    finally:
        os.umask(old)

    assert mode(target) == 0o600


def test_atomic_write_json_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})

    atomic_write_json(target, {"v": 2})

    assert read_json(target) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_atomic_write_json_keeps_the_old_content_when_serialisation_fails(
    tmp_path: Path,
) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})

    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})

    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_info_round_trips_through_info_json(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    info = SchedulerInfo(
        scheduler_address="tls://10.1.0.1:4000",
        dashboard_address="http://10.1.0.1:8787/status",
        host="node1",
        job_id="42",
        started=1700000000.5,
        pid=123,
        launch="42.0.0",
    )

    run.write_info(info)

    assert run.read_info() == info
    assert mode(run.info_file) == 0o600


def test_info_json_has_the_documented_keys(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.write_info(SchedulerInfo("tcp://h:1", None, "h", None, 1.0, 2))

    keys = set(run.read_json("info.json"))

    assert {"scheduler_address", "dashboard_address", "host", "job_id", "started", "pid"} <= keys


def test_read_info_rejects_a_file_without_scheduler_address(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.write_json("info.json", {"host": "h"})

    with pytest.raises(ValueError, match="scheduler_address"):
        run.read_info()


def test_exit_code_round_trips(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")

    run.write_exit_code(3)

    assert run.read_exit_code() == 3
    assert mode(run.exit_code_file) == 0o600


def test_exit_code_is_none_before_the_app_ends(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")

    assert run.read_exit_code() is None


def test_default_run_root_prefers_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "env"))

    assert default_run_root(tmp_path / "profile") == tmp_path / "env"


def test_default_run_root_uses_the_profile_setting_without_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JOBSTRAP_RUN_ROOT", raising=False)

    assert default_run_root(tmp_path / "profile") == tmp_path / "profile"


def test_default_run_root_falls_back_to_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JOBSTRAP_RUN_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert default_run_root() == tmp_path / ".jobstrap" / "runs"


def test_new_run_ids_are_valid_and_distinct(tmp_path: Path) -> None:
    ids = {new_run_id() for _ in range(50)}

    assert len(ids) == 50
    for run_id in list(ids)[:3]:
        RunDir.create(tmp_path, run_id)


def test_ensure_private_dir_accepts_an_existing_directory_unchanged(tmp_path: Path) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)

    ensure_private_dir(existing)

    assert mode(existing) == 0o755


# --- a run directory nobody else could have written -------------------------------------

NOBODY = 65534


@pytest.fixture
def reachable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root-owned 0755 directory in /tmp that another uid can traverse."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    path = Path(tempfile.mkdtemp(prefix="jobstrap-shared-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child that has become uid/gid 65534."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's child failed"


def test_a_result_planted_by_another_user_in_a_shared_run_root_is_refused(
    reachable: Path,
) -> None:
    shared = reachable / "runs"
    shared.mkdir()
    os.chmod(shared, 0o777)  # group-shared by mistake, no sticky bit
    run = RunDir.create(reachable / "mine", "run-1")
    victim = RunDir(shared / "run-1")
    os.rename(run.path, victim.path)  # what a user with run_root=shared ends up with
    write_framed(victim.result_file, pickle.dumps("honest"))

    def attack() -> None:
        os.rename(victim.path, shared / "moved-away")
        os.mkdir(victim.path, 0o700)
        write_framed(victim.result_file, pickle.dumps("planted"))

    _as_nobody(attack)
    assert victim.result_file.stat().st_uid == NOBODY

    with pytest.raises(UnsafePathError, match="owned by uid 65534") as caught:
        read_framed(victim.result_file)
    assert "\n" not in str(caught.value)
    with pytest.raises(UnsafePathError, match="choose a run_root you own"):
        RunDir.open(victim.path)


def test_a_run_directory_under_a_world_writable_parent_without_sticky_bit_is_refused(
    reachable: Path,
) -> None:
    shared = reachable / "runs"
    shared.mkdir()
    os.chmod(shared, 0o777)

    with pytest.raises(UnsafePathError, match=f"chmod go-w {shared}"):
        RunDir.create(shared, "run-1")


def test_a_sticky_world_writable_run_root_is_accepted(reachable: Path) -> None:
    shared = reachable / "runs"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename what is ours
    run = RunDir.create(shared, "run-1")
    write_framed(run.result_file, pickle.dumps("honest"))

    assert pickle.loads(read_framed(run.result_file)) == "honest"
    assert RunDir.open(run.path) == run


def test_a_group_writable_result_file_is_refused(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-1")
    write_framed(run.result_file, pickle.dumps("x"))
    os.chmod(run.result_file, 0o620)

    with pytest.raises(UnsafePathError, match=f"chmod go-w {run.result_file}"):
        read_private_bytes(run.result_file)


def test_tls_files_planted_by_another_user_are_refused(reachable: Path) -> None:
    from jobstrap.net.security import create_tls, load_security

    run = RunDir.create(reachable, "run-1")
    create_tls(run.path)
    os.chown(run.ca_file, NOBODY, NOBODY)

    with pytest.raises(UnsafePathError, match=r"ca\.pem is owned by uid 65534"):
        load_security(run)
