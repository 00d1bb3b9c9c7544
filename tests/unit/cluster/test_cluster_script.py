"""The worker-job script a notebook cluster submits, and how its workers get their names."""

from __future__ import annotations

import shlex

import pytest

from jobstrap.batchctl.submit import tagged
from jobstrap.bootstrap.options import parse_args
from jobstrap.bootstrap.worker_entry import expand_name, rank_of
from jobstrap.cluster.jobs import name_jobs, worker_job_spec
from jobstrap.cluster.scaling import JobShape, job_of_worker, worker_names
from jobstrap.config.profile import Profile, load_profile
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import ArraySpec, JobSpec
from jobstrap.systems import get_system

ADDRESS = "tls://10.78.0.1:40000"


def slurm_profile(**overrides: object) -> Profile:
    return load_profile("testcluster", overrides, environ={})


def spec_for(profile: Profile, **options: int) -> JobSpec:
    return worker_job_spec(
        profile, "/runs/cluster-1", "jsabc", scheduler_address=ADDRESS, **options
    )


def script_of(spec: JobSpec, system: str = "slurm") -> str:
    return render_script(tagged(spec), get_system(system))


def command_line(script: str) -> list[str]:
    """The argv of the script's main command (the line ending in `` &``)."""
    line = next(ln for ln in script.splitlines() if ln.endswith(" &") and "jobstrap." in ln)
    return shlex.split(line[:-2])


def bootstrap_argv(argv: list[str], name: str) -> list[str]:
    """What ``jobstrap.bootstrap.worker_entry`` hands the bootstrap for job ``name``, rank 0."""
    start = argv.index("--", argv.index("jobstrap.bootstrap.worker_entry")) + 1
    return [*argv[start:], "--name", f"{name}-0"]


@pytest.fixture
def six_job_array() -> tuple[JobSpec, list[str]]:
    """A scale-up of six jobs (submission 3 of prefix ``jobstrap``) on the Slurm profile."""
    return name_jobs(spec_for(slurm_profile()).with_array(ArraySpec(0, 5)), "jobstrap", 3)


@pytest.fixture
def plain_job() -> JobSpec:
    """One worker job ``c-0.0`` of the Slurm profile's defaults."""
    return name_jobs(spec_for(slurm_profile()), "c", 0)[0]


def test_a_scale_up_of_six_jobs_is_one_array_of_six(
    six_job_array: tuple[JobSpec, list[str]],
) -> None:
    spec, names = six_job_array

    script = script_of(spec)

    assert "#SBATCH --array=0-5" in script
    assert names == [f"jobstrap-3.{task}" for task in range(6)]


def test_array_tasks_take_their_name_from_the_task_id(
    six_job_array: tuple[JobSpec, list[str]],
) -> None:
    spec, _ = six_job_array

    argv = command_line(script_of(spec))

    template = argv[argv.index("jobstrap.bootstrap.worker_entry") + 1]
    assert expand_name(template, {"JOBSTRAP_ARRAY_TASK_ID": "4"}) == "jobstrap-3.4"


def test_a_plain_job_has_a_fixed_name() -> None:
    spec, names = name_jobs(spec_for(slurm_profile()), "mycluster", 7)

    argv = command_line(script_of(spec))

    assert names == ["mycluster-7.0"]
    assert argv[argv.index("jobstrap.bootstrap.worker_entry") + 1] == "mycluster-7.0"


def test_worker_jobs_run_under_srun_so_slurm_tracks_and_signals_them() -> None:
    spec, _ = name_jobs(spec_for(slurm_profile(nodes=2)), "c", 0)

    argv = command_line(script_of(spec))

    assert argv[:4] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]


def test_the_workers_are_pointed_at_the_clusters_scheduler_with_its_settings() -> None:
    profile = slurm_profile(cores=4, processes=2, memory="2GiB", death_timeout=45)
    spec, _ = name_jobs(spec_for(profile), "c", 0)

    options = parse_args(bootstrap_argv(command_line(script_of(spec)), "c-0.0"))

    assert options.mode == "workers"
    assert options.scheduler_address == ADDRESS
    assert (options.worker_processes, options.nthreads) == (2, 2)
    assert options.memory_limit == 2**30
    assert options.death_timeout == 45
    assert options.run_dir == "/runs/cluster-1"


def test_the_bootstrap_accepts_the_name_the_worker_shim_adds(plain_job: JobSpec) -> None:
    options = parse_args(bootstrap_argv(command_line(script_of(plain_job)), "c-0.0"))

    assert options.name == "c-0.0-0"


def test_job_cpu_and_job_mem_change_the_request_but_not_the_workers() -> None:
    profile = slurm_profile(cores=4, memory="2GiB")
    spec, _ = name_jobs(spec_for(profile, job_cpu=8, job_mem=6 * 2**30), "c", 0)

    script = script_of(spec)
    options = parse_args(bootstrap_argv(command_line(script), "c-0.0"))

    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=6G" in script
    assert (options.nthreads, options.memory_limit) == (4, 2 * 2**30)


def test_the_local_backend_runs_the_same_worker_command() -> None:
    profile = load_profile("default", {"cores": 1, "memory": "500MiB"}, environ={})
    spec, _ = name_jobs(spec_for(profile).with_array(ArraySpec(0, 2)), "c", 1)

    script = script_of(spec, "local")

    assert "#JOBSTRAP --array=0-2" in script
    assert "jobstrap.bootstrap.worker_entry" in command_line(script)


def test_the_array_task_id_is_required_when_the_template_uses_it() -> None:
    with pytest.raises(ValueError, match="JOBSTRAP_ARRAY_TASK_ID"):
        expand_name("c-1.{task}", {"JOBSTRAP_ARRAY_TASK_ID": ""})


def test_the_rank_comes_from_the_launcher() -> None:
    assert rank_of({"SLURM_PROCID": "1"}) == 1
    assert rank_of({"PMI_RANK": "3"}) == 3
    assert rank_of({}) == 0


@pytest.mark.parametrize(("nodes", "processes"), [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_bootstrap_worker_names_are_the_names_the_cluster_plans(nodes: int, processes: int) -> None:
    from jobstrap.bootstrap.roles import worker_names as _worker_names

    shape = JobShape(nodes=nodes, processes=processes)
    job = "c-4.2"

    named = [n for rank in range(nodes) for n in _worker_names(f"{job}-{rank}", processes)]

    assert named == worker_names(job, shape)
    assert {job_of_worker(n) for n in named} == {job}


def test_the_start_method_is_the_bootstrap_s_unless_the_profile_says_otherwise(
    plain_job: JobSpec,
) -> None:
    default = script_of(plain_job)
    spawn = slurm_profile(env={"DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "spawn"})
    chosen = script_of(name_jobs(spec_for(spawn), "c", 0)[0])

    assert "MULTIPROCESSING_METHOD" not in default
    assert "export MALLOC_TRIM_THRESHOLD_=65536" in default
    assert chosen.count("export DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn") == 1


def test_a_pbs_scale_up_is_one_array_whose_tasks_name_their_workers() -> None:
    profile = load_profile("pbspro", {"cores": 4, "memory": "8GiB", "processes": 2}, environ={})
    spec, names = name_jobs(spec_for(profile).with_array(ArraySpec(0, 3)), "c", 2)

    script = script_of(spec, "pbs")
    argv = command_line(script)

    assert "#PBS -J 0-3" in script
    assert 'export JOBSTRAP_ARRAY_TASK_ID="${PBS_ARRAY_INDEX:-}"' in script
    assert argv[argv.index("jobstrap.bootstrap.worker_entry") + 1] == "c-2.{task}"
    assert names == ["c-2.0", "c-2.1", "c-2.2", "c-2.3"]


def test_batch_jobs_trim_memory_like_spawned_workers_unless_there_is_no_nanny() -> None:
    from jobstrap.jobs.spec import app_job

    forked = dict(app_job(slurm_profile(), "/runs/r", "t1", ["app.py"]).env)
    lone = app_job(slurm_profile(nanny=False), "/runs/r", "t1", ["app.py"])

    assert forked["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert "MALLOC_TRIM_THRESHOLD_" not in dict(lone.env)
    assert "--no-nanny" in lone.command


def test_every_job_with_workers_fixes_the_string_hash_seed_unless_the_profile_does() -> None:
    # Forked workers keep the hash seed their job's interpreter drew at random, so
    # without a fixed seed workers in different jobs hash strings differently (what
    # distributed's nanny sets PYTHONHASHSEED for, dask/dask#6640).
    from jobstrap.jobs.spec import app_job, scheduler_job

    jobs = {
        "workers": spec_for(slurm_profile()),
        "workers without nanny": spec_for(slurm_profile(nanny=False)),
        "app": app_job(slurm_profile(), "/runs/r", "t1", ["app.py"]),
        "app without nanny": app_job(slurm_profile(nanny=False), "/runs/r", "t1", ["app.py"]),
    }
    own = spec_for(slurm_profile(env={"PYTHONHASHSEED": "7"}))

    assert {
        kind: dict(job.env).get("PYTHONHASHSEED") for kind, job in jobs.items()
    } == dict.fromkeys(jobs, "6640")
    assert "export PYTHONHASHSEED=6640" in script_of(jobs["workers"])
    assert dict(own.env)["PYTHONHASHSEED"] == "7"
    assert "PYTHONHASHSEED" not in dict(scheduler_job(slurm_profile(), "/runs/r", "t1").env)


def test_a_batch_job_s_workers_share_their_node_s_memory() -> None:
    from jobstrap.bootstrap.options import parse_args
    from jobstrap.jobs.spec import app_job

    def limit(**settings: object) -> object:
        spec = app_job(slurm_profile(memory="8GiB", **settings), "/runs/r", "t1", ["app.py"])
        argv = list(spec.command)
        return parse_args(argv[argv.index("jobstrap.bootstrap") + 1 :]).memory_limit

    assert limit(tasks_per_node=4) == 2 * 2**30
    assert limit(tasks_per_node=2, workers_per_rank=4) == 2**30
    assert limit(processes=2, cores=2) == 4 * 2**30
