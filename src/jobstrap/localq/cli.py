"""The local queue: a small batch system whose "nodes" are this machine.

It is what ``system: local`` submits to, through the same batchctl and the same kind of
job script as Slurm or PBS, so a newcomer without a batch system runs exactly what a
cluster would. Commands (argv only; ``jobstrap.systems.local`` builds them)::

    python -m jobstrap.localq submit [--key=value ...] SCRIPT   -> prints the job id
    python -m jobstrap.localq status ID [ID ...]                -> ID|STATE|EXIT|REASON|NAME
    python -m jobstrap.localq cancel ID [ID ...]
    python -m jobstrap.localq signal --signal=SIG ID [ID ...]
    python -m jobstrap.localq find NAME                         -> ids of live jobs so named
    python -m jobstrap.localq limits                            -> MaxArraySize=1001
                                                                   Controller=HOST:SPOOL
    python -m jobstrap.localq launch -n N -- COMMAND            -> N ranks, without MPI

``submit`` reads ``#JOBSTRAP --key=value`` directives from the script's header (the
first block of comment lines, as ``sbatch`` does); command-line options override them:

``--job-name``, ``--output``, ``--error`` (``%j`` job id, ``%A`` array id, ``%a`` task,
``%x`` name, ``%%``), ``--time`` (seconds or any walltime form), ``--ntasks``,
``--array=0-9[%limit]`` (or ``1,3,5``), ``--signal=[B:]SIG@SECONDS``.

Each job gets a numeric id from a counter file under a lock and a *supervisor*
(``python -m jobstrap.localq _supervise ID``) in a session of its own, detached from
the submitting process. The supervisor starts every array task as its own process
group (its own session, so a job never receives the terminal's signals), with
``JOBSTRAP_JOB_ID``, ``JOBSTRAP_ARRAY_JOB_ID``, ``JOBSTRAP_ARRAY_TASK_ID`` and
``JOBSTRAP_NTASKS`` set, and enforces the walltime the way Slurm does: the ``--signal``
warning first, ``SIGTERM`` at the walltime, ``SIGKILL`` after a grace
(``$JOBSTRAP_LOCAL_KILL_WAIT`` seconds, default 10) -> ``TIMEOUT``.

Every process a task starts also carries ``JOBSTRAP_LOCALQ_JOB=<id>[_<task>]`` in its
environment. That is the local stand-in for a cgroup: processes that left the task's
process group (``setsid``, daemons) are still found and ended with it.

The spool lives in ``$JOBSTRAP_LOCAL_SPOOL`` or ``~/.jobstrap/local`` (0700)::

    <spool>/lock  next_id
    <spool>/jobs/<id>/state.json   the job and its tasks (atomic rewrites under jobs/<id>/lock)
    <spool>/jobs/<id>/script       the script as submitted
    <spool>/jobs/<id>/cancel       exists once the job was cancelled
    <spool>/jobs/<id>/supervisor.log

If the supervisor dies (``kill -9``, a reboot), ``status`` notices (pid plus process
start time, so a reused pid is not mistaken for it): tasks whose processes are gone
become ``MISSING``; tasks still running are killed (nobody enforces their walltime
any more) and become ``FAILED``; both with reason ``SupervisorLost``.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from jobstrap.localq.control import cmd_cancel, cmd_find, cmd_signal, cmd_status
from jobstrap.localq.directives import MAX_ARRAY_SIZE
from jobstrap.localq.launch import cmd_launch
from jobstrap.localq.spool import LocalQueueError, spool_dir
from jobstrap.localq.submit import cmd_submit
from jobstrap.localq.supervisor import cmd_supervise

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobstrap.localq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="queue a job script, print its id")  # see main
    submit.add_argument("options", nargs="*", metavar="--key=value")
    submit.add_argument("script")
    status = commands.add_parser("status", help="ID|STATE|EXIT|REASON|NAME per task")
    status.add_argument("ids", nargs="+")
    cancel = commands.add_parser("cancel", help="cancel jobs or array tasks")
    cancel.add_argument("ids", nargs="+")
    sig = commands.add_parser("signal", help="signal running jobs")
    sig.add_argument("--signal", "-s", required=True)
    sig.add_argument("ids", nargs="+")
    find = commands.add_parser("find", help="ids of live jobs with this name")
    find.add_argument("--uid", type=int, help="only jobs of this user id")
    find.add_argument("name")
    commands.add_parser("limits", help="print the queue's limits")
    launch = commands.add_parser("launch", help="start N ranks of a command (no MPI)")
    launch.add_argument("-n", "--ntasks", type=int, required=True)
    launch.add_argument("argv", nargs="+", metavar="-- COMMAND")
    supervise = commands.add_parser("_supervise", help=argparse.SUPPRESS)
    supervise.add_argument("job_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one localq command; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["submit"] and not {"-h", "--help"} & set(words):
        # Options come before the script, as with sbatch; argparse would take them as its own.
        try:
            if len(words) < 2 or words[-1].startswith("--"):
                raise LocalQueueError("submit needs a script: submit [--key=value ...] SCRIPT")
            print(cmd_submit(words[1:-1], words[-1]), flush=True)
        except LocalQueueError as error:
            print(f"localq: error: {error}", file=sys.stderr)
            return 1
        return 0
    args = _parser().parse_args(words)
    try:
        if args.command == "status":
            for line in cmd_status(args.ids):
                print(line)
        elif args.command == "cancel":
            cmd_cancel(args.ids)
        elif args.command == "signal":
            cmd_signal(args.signal, args.ids)
        elif args.command == "find":
            for job_id in cmd_find(args.name, args.uid):
                print(job_id)
        elif args.command == "limits":
            print(f"MaxArraySize={MAX_ARRAY_SIZE}")
            # Job ids count per spool and host: this names whose ids they are.
            print(f"Controller={socket.gethostname()}:{spool_dir().resolve()}")
        elif args.command == "_supervise":
            cmd_supervise(args.job_id)
        elif args.command == "launch":
            return cmd_launch(args.ntasks, args.argv)
    except LocalQueueError as error:
        print(f"localq: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
