"""A Ray node's process group: torn down whole by the run, failures in one line.

A shell stands in for ``ray start --block``: what is tested is the process-group
handling, not Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobstrap.engines.ray.node import RayNode, RayStartError

# A parent that, like ``ray start``, leaves a child behind that ignores SIGTERM.
STUBBORN = (
    "import os, signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: only not yet reaped by its (new) parent.
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_stop_ends_every_process_of_the_node_and_removes_its_directory(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    pid_file = tmp_path / "child.pid"
    node = RayNode(
        [sys.executable, "-c", STUBBORN, str(pid_file)],
        dict(os.environ),
        str(node_dir),
        tmp_path / "logs" / "ray.log",
    )
    node.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert node.pid is not None
    assert os.getpgid(child) == node.pid
    assert os.getpgid(child) != os.getpgid(0)

    node.stop(grace=0.5)

    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert not node_dir.exists()


def test_a_head_that_ends_before_serving_is_one_line_with_the_logs_last_words(
    tmp_path: Path,
) -> None:
    node = RayNode(
        [sys.executable, "-c", "import sys; print('PANIC port in use', flush=True); sys.exit(1)"],
        dict(os.environ),
        str(tmp_path),
        tmp_path / "ray.log",
    )
    node.start()
    with pytest.raises(RayStartError) as caught:
        node.wait_for_address(timeout=60)
    message = str(caught.value)
    assert "\n" not in message
    assert "exit code 1" in message
    assert "PANIC port in use" in message


def test_the_heads_address_is_read_from_its_own_directory(tmp_path: Path) -> None:
    script = (
        "import sys, time; time.sleep(0.2); "
        "open(sys.argv[1] + '/ray_current_cluster', 'w').write('10.0.0.1:4242'); time.sleep(600)"
    )
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    node = RayNode([sys.executable, "-c", script, str(node_dir)], {}, str(node_dir), tmp_path / "l")
    node.start()
    try:
        assert node.wait_for_address(timeout=60) == "10.0.0.1:4242"
    finally:
        node.stop(grace=0.5)


def test_a_node_ends_when_the_rank_that_started_it_is_killed(tmp_path: Path) -> None:
    # A rank (here a child process) starts a node, then dies without tearing it down.
    pid_file = tmp_path / "node.pid"
    rank = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from jobstrap.engines.ray.node import RayNode\n"
        "node = RayNode([sys.executable, '-c', 'import time; time.sleep(600)'], dict(os.environ),"
        " sys.argv[1], Path(sys.argv[1]) / 'log')\n"
        "node.start()\n"
        "open(sys.argv[2], 'w').write(str(node.pid))\n"
        "time.sleep(600)\n"
    )
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", rank, str(node_dir), str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        node_pid = int(pid_file.read_text())
        assert _alive(node_pid)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 10
    while _alive(node_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(node_pid)


def test_a_head_asked_for_a_dashboard_without_its_packages_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Plain `ray` lacks the dashboard's packages: Ray's own error names neither the
    # setting nor the package, ours names both (before any Ray process starts).
    import importlib
    import importlib.util

    from jobstrap.errors import UserError

    # (the package's `engine` attribute is its factory function, not this module)
    engine = importlib.import_module("jobstrap.engines.ray.engine")

    real_find_spec = importlib.util.find_spec

    def without_aiohttp(name: str, package: str | None = None) -> object:
        return None if name == "aiohttp" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_aiohttp)
    with pytest.raises(UserError, match=r"^dashboard: .*aiohttp.*jobstrap\[ray-dashboard\]"):
        engine._require_ray_dashboard()
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    if all(real_find_spec(name) for name in engine._DASHBOARD_MODULES):
        engine._require_ray_dashboard()
