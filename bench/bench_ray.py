"""Ray in one allocation against Ray's own recipes: same cluster, same run, same app.

Three ways to get a Ray cluster on N nodes of one Slurm job, each running the same
app (``ray.init()``, wait for N alive nodes, 100 remote tasks, measure):

* **jobstrap**: ``jobstrap submit --engine ray`` (per-run ports, private directories,
  token and TLS; workers start when the head's address reaches them, the app when
  every node joined);
* **slurm_basic**: Ray's ``slurm-basic.sh`` as published: ``ray start --head
  --port=6379 ... --block &``, ``sleep 10``, then one ``ray start --address ...
  --block &`` per other node with ``sleep 5`` between them, then the app (plain TCP,
  no token: the recipe's defaults; ``--node-ip-address`` on ib0 as the recipe's
  ``head_node_ip`` would be);
* **symmetric_run**: ``srun ray symmetric-run --address HEAD:6379 --min-nodes N --
  python app.py`` (Ray >= 2.49), where it runs here.

Measured per run:

* **launch to joined**: from the batch script's first line (a timestamp it writes)
  to the app seeing all N nodes alive;
* **submit to result**: from the submission to the 100 tasks' sum in hand;
* **memory per node**: the proportional set size (PSS) of every process of the
  Ray node on each node (the parent of that node's ``raylet`` and all it started),
  averaged over the nodes.

Runs are interleaved (one of each method per round). Run on the test cluster's
login node; appends a run to ``bench/results/ray.json``::

    scripts/testcluster on head .venv/bin/python bench/bench_ray.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from history import append_run, new_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "ray.json"
PROFILE = "testcluster"
CPUS_PER_NODE = 2
MEMORY = "3GiB"
WALLTIME_MIN = 15

#: The app every method runs (argv: report path, nodes expected).
APP = """\
import json, os, sys, time
import ray

report, expected = sys.argv[1], int(sys.argv[2])
ray.init()
while len([n for n in ray.nodes() if n["Alive"]]) < expected:
    time.sleep(0.1)
joined = time.time()


@ray.remote
def square(x):
    return x * x


total = sum(ray.get([square.remote(i) for i in range(100)]))
done = time.time()


@ray.remote(num_cpus=0)
def node_pss():
    import psutil

    me = ray.util.get_node_ip_address()
    for proc in psutil.process_iter(["name", "cmdline"]):
        words = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "raylet" and f"--node_ip_address={me}" in words:
            root = proc.parent()
            members = [root, *root.children(recursive=True)]
            return me, sum(p.memory_full_info().pss for p in members if p.is_running())
    return me, None


from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

per_node = dict(
    ray.get(
        [
            node_pss.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote()
            for n in ray.nodes()
            if n["Alive"]
        ]
    )
)
tmp = report + ".tmp"
with open(tmp, "w") as handle:
    json.dump({"joined": joined, "done": done, "sum": total, "pss": per_node}, handle)
os.replace(tmp, report)
"""

#: Ray's slurm-basic.sh (doc/source/cluster/doc_code/slurm-basic.sh), the cluster part
#: as published; the app line and the address family are the only changes.
SLURM_BASIC = """\
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
nodes_array=($nodes)
head_node=${nodes_array[0]}
head_node_ip=$(ib0_ip "$head_node")
port=6379
ip_head=$head_node_ip:$port
export ip_head
srun --nodes=1 --ntasks=1 -w "$head_node" \\
    ray start --head --node-ip-address="$head_node_ip" --port=$port \\
    --num-cpus "${SLURM_CPUS_PER_TASK}" --num-gpus 0 --block &
sleep 10
worker_num=$((SLURM_JOB_NUM_NODES - 1))
for ((i = 1; i <= worker_num; i++)); do
    node_i=${nodes_array[$i]}
    node_ip=$(ib0_ip "$node_i")
    srun --nodes=1 --ntasks=1 -w "$node_i" \\
        ray start --address "$ip_head" --node-ip-address="$node_ip" \\
        --num-cpus "${SLURM_CPUS_PER_TASK}" --num-gpus 0 --block &
    sleep 5
done
RAY_ADDRESS=$ip_head python -u APP
"""

SYMMETRIC_RUN = """\
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
nodes_array=($nodes)
head_ip=$(ib0_ip "${nodes_array[0]}")
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \\
    ray symmetric-run --address "$head_ip:6379" --min-nodes "$SLURM_JOB_NUM_NODES" \\
    --num-cpus "${SLURM_CPUS_PER_TASK}" -- python -u APP
"""


#: A node's ib0 address (the recipe's ``hostname --ip-address``, on the fast network).
IB0_IP = """\
ib0_ip() {
  srun --nodes=1 --ntasks=1 -w "$1" ip -4 -o addr show ib0 | awk '{print $4}' | cut -d/ -f1
}
"""


class RunFailedError(Exception):
    """One run ended without a report; the message says how (kept in the results)."""


def _stamp(path: Path) -> str:
    return f"date +%s.%N > {shlex.quote(str(path))}"


def _job_ended(job_id: str) -> bool:
    queue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    return queue.returncode == 0 and not queue.stdout.strip()


def _wait_report(report: Path, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not report.exists():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            raise RunFailedError(f"no report after {timeout:g} s (job {job_id})")
        if _job_ended(job_id) and not report.exists():
            raise RunFailedError(f"job {job_id} ended without a report")
        time.sleep(0.5)
    deadline = time.monotonic() + 120
    while not _job_ended(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)  # the next run starts on free nodes
    if not _job_ended(job_id):
        subprocess.run(["scancel", job_id], check=False)


def _result(report: Path, launch: Path, submitted: float) -> dict[str, Any]:
    data = json.loads(report.read_text())
    launched = float(launch.read_text().strip())
    pss = [v for v in data["pss"].values() if v is not None]
    return {
        "launch_to_joined_s": data["joined"] - launched,
        "submit_to_result_s": data["done"] - submitted,
        "pss_per_node_mib": statistics.mean(pss) / 2**20 if pss else None,
        "nodes_measured": len(pss),
        "sum_ok": data["sum"] == 328350,
    }


def run_jobstrap(nodes: int, workdir: Path, timeout: float) -> dict[str, Any]:
    from jobstrap.batch.submit import submit_run
    from jobstrap.config.profile import load_profile

    job_dir = Path(tempfile.mkdtemp(prefix="jobstrap-", dir=workdir))
    app, report, launch = job_dir / "app.py", job_dir / "report.json", job_dir / "launch"
    app.write_text(APP)
    profile = load_profile(
        PROFILE,
        {
            "engine": "ray",
            "nodes": nodes,
            "cores": CPUS_PER_NODE,
            "memory": MEMORY,
            "walltime": f"00:{WALLTIME_MIN:02d}:00",
            "prologue": [_stamp(launch)],
        },
    )
    submitted = time.time()
    run = submit_run(profile, PROFILE, "app", lambda _run: [str(app), str(report), str(nodes)])
    _wait_report(report, run.job_id, timeout)
    return _result(report, launch, submitted)


def _sbatch(name: str, body: str, nodes: int, job_dir: Path, launch: Path) -> str:
    script = job_dir / "job.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --job-name=bench-{name}
            #SBATCH --nodes={nodes}
            #SBATCH --ntasks-per-node=1
            #SBATCH --cpus-per-task={CPUS_PER_NODE}
            #SBATCH --mem={MEMORY.replace("iB", "")}
            #SBATCH --time={WALLTIME_MIN}
            #SBATCH --output={job_dir}/%j.out
            """
        )
        + f"{_stamp(launch)}\nexport PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH\n"
        + IB0_IP
        + body
    )
    done = subprocess.run(
        ["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True
    )
    return done.stdout.strip().split(";")[0]


def _run_script(name: str, template: str) -> Callable[[int, Path, float], dict[str, Any]]:
    def run(nodes: int, workdir: Path, timeout: float) -> dict[str, Any]:
        job_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        app, report, launch = job_dir / "app.py", job_dir / "report.json", job_dir / "launch"
        app.write_text(APP)
        words = " ".join(shlex.quote(str(w)) for w in (app, report, nodes))
        submitted = time.time()
        job_id = _sbatch(name, template.replace("APP", words), nodes, job_dir, launch)
        _wait_report(report, job_id, timeout)
        return _result(report, launch, submitted)

    return run


METHODS: dict[str, Callable[[int, Path, float], dict[str, Any]]] = {
    "jobstrap": run_jobstrap,
    "slurm_basic": _run_script("slurm_basic", SLURM_BASIC),
    "symmetric_run": _run_script("symmetric_run", SYMMETRIC_RUN),
}
KEYS = {
    "joined": "launch_to_joined_s",
    "result": "submit_to_result_s",
    "memory": "pss_per_node_mib",
}
UNITS = {"joined": "s", "result": "s", "memory": "MiB"}


def _versions() -> dict[str, str]:
    import ray

    from jobstrap import _version

    return {"ray": ray.__version__, "jobstrap": _version.__version__, "python": sys.version}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(os.environ.get("JOBSTRAP_BENCH_DIR", str(REPO / ".testcluster" / "bench-ray")))
    workdir.mkdir(parents=True, exist_ok=True)

    raw: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for nodes in args.nodes:
        raw[nodes] = {m: [] for m in args.methods}
        for repeat in range(args.repeats):
            for method in args.methods:
                try:
                    result = METHODS[method](nodes, workdir, args.timeout)
                except Exception as error:  # kept in the report: a failure is a result
                    result = {"error": f"{type(error).__name__}: {error}"}
                raw[nodes][method].append(result)
                print(nodes, repeat, method, json.dumps(result), flush=True)

    series: dict[str, dict[str, list[float | None]]] = {}
    measures: dict[str, dict[str, str]] = {}
    for nodes, by_method in raw.items():
        for name, key in KEYS.items():
            label = f"{name}_{nodes}"
            series[label] = {
                m: [None if "error" in r else r.get(key) for r in runs]
                for m, runs in by_method.items()
            }
            for anchor in ("slurm_basic", "symmetric_run"):
                if "jobstrap" in by_method and anchor in by_method:
                    measures[f"{label}_vs_{anchor}"] = {
                        "series": label,
                        "ours": "jobstrap",
                        "anchor": anchor,
                        "unit": UNITS[name],
                    }
    run = new_run(
        "bench/bench_ray.py",
        versions=_versions(),
        settings={"nodes": args.nodes, "repeats": args.repeats, "cpus_per_node": CPUS_PER_NODE},
        series=series,
        measures=measures,
        workload={"nodes": args.nodes, "cpus_per_node": CPUS_PER_NODE},
        detail={"runs": {str(n): r for n, r in raw.items()}},
        finished=not any("error" in r for rs in raw.values() for v in rs.values() for r in v),
    )
    append_run(
        args.output,
        run,
        benchmark="Ray start-up and memory vs slurm-basic.sh and ray symmetric-run",
        script="bench/bench_ray.py",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
