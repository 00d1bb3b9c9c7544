"""A worker process its nanny left behind does not keep the rank from ending."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_worker_process_that_ignores_sigterm_is_killed_when_the_nannies_are_done(
    tmp_path: Path,
) -> None:
    # As a batch job's workers do: SIGTERM ignored (they drain on it instead), so a
    # nanny's terminate is not enough. Without the reaping the interpreter's exit
    # would join this child for ever; the probe must end, and say so.
    probe = textwrap.dedent(
        """
        import multiprocessing, os, signal, time
        from jobstrap.engines.dask.workers import reap_worker_processes

        def orphan(ready) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ready.set()
            time.sleep(600)

        if __name__ == "__main__":
            context = multiprocessing.get_context("forkserver")
            ready = context.Event()
            child = context.Process(target=orphan, args=(ready,))
            child.start()
            assert ready.wait(50)  # its SIGTERM is ignored from here on
            os.kill(child.pid, signal.SIGTERM)
            time.sleep(0.2)
            assert child.is_alive()
            print(reap_worker_processes() == [child.pid], child.is_alive(), child.exitcode)
        """
    )
    script = tmp_path / "probe.py"  # a file: the fork server imports the target from it
    script.write_text(probe)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", str(-signal.SIGKILL)]
    assert "outlived its nanny; killing it" in done.stderr


def test_nothing_is_killed_when_nothing_is_left() -> None:
    from jobstrap.engines.dask.workers import reap_worker_processes

    assert reap_worker_processes() == []
