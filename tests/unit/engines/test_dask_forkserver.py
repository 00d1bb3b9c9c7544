"""The node layout's fork server: a fork of the rank that imported Dask, or a fresh one.

Each case runs in its own interpreter: multiprocessing keeps one fork server per
process, and the point is what that process's children look like.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

#: Starts the server as the bootstrap does, then a worker-like process through it.
SCRIPT = textwrap.dedent(
    """\
    import json, multiprocessing, os, signal, sys, threading, time

    def child(queue):
        queue.put({"ppid": os.getppid(), "dask_loaded": "distributed" in sys.modules})

    if __name__ == "__main__":
        import jobstrap.engines.dask.servers  # the preload, as the rank imported it
        from multiprocessing import forkserver
        from jobstrap.engines.dask.forkserver import start_fork_server

        if sys.argv[1] == "busy":  # a second thread: a fork could copy a held lock
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        start_fork_server()
        server = forkserver._forkserver._forkserver_pid
        deadline = time.monotonic() + 30
        while True:  # a new interpreter's command line reads empty while it execs
            with open(f"/proc/{server}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\\0", b" ").decode()
            if cmdline or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with open(f"/proc/{server}/status") as handle:
            ignored = int(next(l for l in handle if l.startswith("SigIgn:")).split()[1], 16)
        if sys.argv[2] == "term":  # the batch system signals the step's processes
            os.kill(server, signal.SIGTERM)
            time.sleep(0.3)
        context = multiprocessing.get_context("forkserver")
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,))
        process.start()
        got = queue.get(timeout=60)
        process.join(60)
        print(json.dumps({
            "me": os.getpid(), "server": server, "server_ppid": int(open(
                f"/proc/{server}/stat").read().rsplit(")", 1)[1].split()[1]),
            "cmdline": cmdline, "ignored": ignored, "exitcode": process.exitcode, **got,
        }))
    """
)


def _run(tmp_path: Path, *args: str) -> dict[str, object]:
    script = tmp_path / "server.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def _mask(*signals: signal.Signals) -> int:
    return sum(1 << (sig - 1) for sig in signals)


def test_the_server_is_a_fork_of_the_rank_and_its_workers_find_dask_loaded(
    tmp_path: Path,
) -> None:
    report = _run(tmp_path, "quiet", "-")

    # A fork of the rank (its command line), not a new interpreter importing Dask again.
    assert report["server_ppid"] == report["me"]
    assert "forkserver import main" not in str(report["cmdline"])
    assert "server.py" in str(report["cmdline"])
    assert report["ppid"] == report["server"]  # the worker came from that server
    assert report["dask_loaded"] is True
    assert report["exitcode"] == 0
    # It ends with the rank: nothing is left behind.
    assert _gone(int(str(report["server"])))


def test_the_server_outlives_the_batch_system_s_signals(tmp_path: Path) -> None:
    report = _run(tmp_path, "quiet", "term")

    batch = _mask(signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    assert int(str(report["ignored"])) & batch == batch
    assert report["ppid"] == report["server"]  # SIGTERM did not end it
    assert report["exitcode"] == 0


def test_with_a_second_thread_the_usual_server_is_started(tmp_path: Path) -> None:
    report = _run(tmp_path, "busy", "-")

    assert "forkserver import main" in str(report["cmdline"])
    assert report["ppid"] == report["server"]
    assert report["exitcode"] == 0


def test_the_rank_s_signal_handlers_are_back_after_the_fork() -> None:
    code = textwrap.dedent(
        """\
        import signal
        import jobstrap.engines.dask.servers
        from jobstrap.engines.dask.forkserver import start_fork_server
        handler = lambda *a: None
        signal.signal(signal.SIGUSR1, handler)
        start_fork_server()
        assert signal.getsignal(signal.SIGUSR1) is handler
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
