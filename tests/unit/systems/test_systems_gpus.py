"""GPU settings from profile to directives: golden directive blocks and one-line errors.

Regenerate the golden files with ``JOBSTRAP_UPDATE_GOLDEN=1`` (then read the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobstrap.config.profile import Profile, load_profile
from jobstrap.errors import ConfigError
from jobstrap.jobs.spec import app_job, scheduler_job, worker_job
from jobstrap.systems import get_system

GOLDEN = Path(__file__).parents[1] / "golden" / "gpus"
UPDATE = os.environ.get("JOBSTRAP_UPDATE_GOLDEN") == "1"
RUN_DIR = "/home/ada/.jobstrap/runs/r1"
TAG = "js0123456789"


def _profile(**settings: object) -> Profile:
    return load_profile("default", {"cores": 8, "memory": "32GiB", **settings}, environ={})


CASES: dict[str, tuple[str, dict[str, object]]] = {
    "slurm-gpus-per-node": ("slurm", {"gpus": 4}),
    "slurm-typed-gpus": ("slurm", {"gpus": 2, "gpu_type": "a100"}),
    "slurm-mem-per-gpu": ("slurm", {"gpus": 2, "mem_per_gpu": "16GiB"}),
    "slurm-memory-per-gpu-from-memory": ("slurm", {"gpus": 4, "memory_per": "gpu"}),
    "slurm-memory-per-cpu": ("slurm", {"memory_per": "cpu"}),
    "slurm-gpus-per-job-bound": (
        "slurm",
        {"nodes": 2, "gpus_per_job": 6, "gpu_type": "h100", "gpu_bind": "closest"},
    ),
    "pbs-gpus-per-node": ("pbs", {"nodes": 2, "gpus": 4}),
    "pbs-mem-per-gpu": ("pbs", {"gpus": 2, "mem_per_gpu": "16GiB"}),
    "pbs-gpus-per-job": ("pbs", {"nodes": 2, "gpus_per_job": 4}),
}


def _directives(system: str, settings: dict[str, object]) -> str:
    spec = worker_job(_profile(system=system, **settings), RUN_DIR, TAG)
    return "\n".join(get_system(system).directives(spec)) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_worker_job_directives_match_golden_file(case: str) -> None:
    system, settings = CASES[case]
    text = _directives(system, settings)
    golden = GOLDEN / f"{case}.txt"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_exactly_one_memory_request_is_rendered(case: str) -> None:
    system, settings = CASES[case]
    lines = _directives(system, settings).splitlines()
    if system == "slurm":
        memory = [line for line in lines if line.startswith("#SBATCH --mem")]
        assert len(memory) == 1, lines
    else:
        select = [line for line in lines if line.startswith("#PBS -l select=")]
        assert len(select) == 1
        assert select[0].count(":mem=") == 1


def test_mem_per_gpu_sets_the_node_memory_workers_share() -> None:
    profile = load_profile("default", {"gpus": 2, "mem_per_gpu": "16GiB"}, environ={})
    assert profile.memory == 32 * 2**30


def test_mem_per_gpu_decides_the_node_memory_even_beside_memory() -> None:
    # Only --mem-per-gpu is rendered, so that is what the job gets.
    profile = load_profile(
        "default", {"gpus": 2, "mem_per_gpu": "16GiB", "memory": "20GiB"}, environ={}
    )
    assert profile.memory == 32 * 2**30
    assert profile.memory_unit == "gpu"


def test_a_scheduler_job_asks_for_no_gpu() -> None:
    spec = scheduler_job(_profile(system="slurm", gpus=4, mem_per_gpu="8GiB"), RUN_DIR, TAG)
    lines = get_system("slurm").directives(spec)
    assert not [line for line in lines if "gpu" in line]
    assert [line for line in lines if line.startswith("#SBATCH --mem=")]


def test_app_job_asks_for_the_gpus_of_every_node() -> None:
    spec = app_job(_profile(system="slurm", nodes=2, gpus=4), RUN_DIR, TAG, ["app.py"])
    assert "#SBATCH --gres=gpu:4" in get_system("slurm").directives(spec)


@pytest.mark.parametrize(
    ("settings", "field", "problem"),
    [
        ({"mem_per_gpu": "4GiB"}, "mem_per_gpu", "needs gpus"),
        ({"memory_per": "gpu"}, "memory_per", "needs gpus"),
        ({"gpu_type": "a100"}, "gpu_type", "needs gpus"),
        ({"gpu_bind": "closest"}, "gpu_bind", "needs gpus"),
        ({"gpus": -1}, "gpus", "must be at least 0"),
        ({"gpus_per_job": -2}, "gpus_per_job", "must be at least 0"),
        ({"gpus": 2, "gpus_per_job": 4}, "gpus_per_job", "either gpus"),
        ({"gpus": 2, "mem_per_gpu": "4GiB", "memory_per": "node"}, "mem_per_gpu", "memory_per"),
        ({"gpus": 2, "mem_per_gpu": "-4GiB"}, "mem_per_gpu", ""),
        ({"gpus": 2, "mem_per_gpu": 0}, "mem_per_gpu", ""),
        ({"memory_per": "socket"}, "memory_per", "one of node, cpu, gpu"),
        ({"memory_per": "cpu", "memory": ""}, "memory_per", "needs memory"),
        ({"gpus": 1, "gpu_type": "a100; rm -rf ~"}, "gpu_type", "shell characters"),
    ],
)
def test_bad_gpu_settings_are_one_line_errors_naming_the_field(
    settings: dict[str, object], field: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_profile("default", settings, environ={})
    message = str(caught.value)
    assert message.startswith(f"{field}: ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"gpus": 2, "gpu_type": "a100"}, "gpu_type"),
        ({"gpus": 2, "gpu_bind": "closest"}, "gpu_bind"),
        ({"nodes": 2, "gpus_per_job": 3}, "gpus_per_job"),
    ],
)
def test_pbs_rejects_what_it_cannot_express_by_field(
    settings: dict[str, object], field: str
) -> None:
    spec = worker_job(_profile(system="pbs", **settings), RUN_DIR, TAG)
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        get_system("pbs").directives(spec)


def test_workers_per_node_follow_the_gpus_over_a_site_profile_s_processes() -> None:
    profile = load_profile("testcluster", {"gpus": 4}, environ={})
    assert profile.processes == 4
    assert profile.threads_per_worker == 1  # cores: 1 shared by the GPU workers


def test_processes_asked_for_beside_other_gpus_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^processes: .*one worker per GPU"):
        load_profile("default", {"gpus": 4, "processes": 2, "cores": 4}, environ={})


def test_gpu_workers_need_nannies() -> None:
    with pytest.raises(ConfigError, match=r"^nanny: .*one worker per GPU"):
        load_profile("default", {"gpus": 2, "nanny": False}, environ={})


def test_a_gpu_worker_job_runs_one_worker_per_gpu_with_the_cores_split() -> None:
    spec = worker_job(_profile(system="slurm", gpus=4), RUN_DIR, TAG)
    argv = list(spec.command)
    assert "--gpu-workers" in argv
    assert argv[argv.index("--worker-processes") + 1] == "4"
    assert argv[argv.index("--nthreads") + 1] == "2"  # 8 cores over 4 workers
    assert argv[argv.index("--memory-limit") + 1] == str(8 * 2**30)


def test_a_gpu_app_job_has_room_for_scheduler_app_and_a_gpu_worker_rank_per_node() -> None:
    spec = app_job(_profile(system="slurm", nodes=2, gpus=4), RUN_DIR, TAG, ["app.py"])
    argv = list(spec.command)
    assert "--gpu-workers" in argv
    assert spec.tasks_per_node == 3
    # 32 GiB over 4 GPU workers plus the scheduler and the app.
    assert argv[argv.index("--memory-limit") + 1] == str(32 * 2**30 // 6)


def test_a_cpu_job_is_unchanged_by_the_gpu_settings() -> None:
    spec = worker_job(_profile(system="slurm"), RUN_DIR, TAG)
    assert "--gpu-workers" not in spec.command
    assert not [d for d in get_system("slurm").directives(spec) if "gpu" in d]
