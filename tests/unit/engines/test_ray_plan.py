"""What a Ray node of a run is started with: the pure rules of the Ray engine's plan."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from jobstrap.engines.ray import plan
from jobstrap.errors import UserError

GiB = 2**30
RESOURCES = plan.NodeResources(num_cpus=4, num_gpus=1, memory=3 * GiB, object_store_memory=GiB)
PORTS = plan.NodePorts(dashboard=40001, dashboard_agent_listen=40002, client_server=40003)


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ----------------------------------------------------------------------------- resources


def test_gpus_come_from_the_jobs_visible_devices_not_the_node() -> None:
    assert plan.job_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == 2
    assert plan.job_gpus({"SLURM_JOB_GPUS": "0"}) == 1
    assert plan.job_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert plan.job_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles", "SLURM_JOB_GPUS": "0,1"}) == 0
    assert plan.job_gpus({}) == 0


def test_cpus_are_the_ranks_binding() -> None:
    assert plan.job_cpus([4, 5, 6]) == 3
    assert plan.job_cpus() == len(os.sched_getaffinity(0))


def test_ranks_on_node_reads_slurms_tasks_per_node_then_the_local_world() -> None:
    assert plan.ranks_on_node({"SLURM_TASKS_PER_NODE": "2(x3)"}) == 2
    assert plan.ranks_on_node({"SLURM_STEP_TASKS_PER_NODE": "1,2"}) == 1
    assert plan.ranks_on_node({"JOBSTRAP_WORLD_SIZE": "2"}) == 2
    assert plan.ranks_on_node({}) == 1


def test_memory_share_is_the_smallest_limit_split_among_the_nodes_ranks() -> None:
    env = {"SLURM_MEM_PER_NODE": "8192", "SLURM_TASKS_PER_NODE": "2"}
    share = plan.memory_share(
        rank_limit=6 * GiB, cgroup_limit=10 * GiB, environ=env, available=100 * GiB
    )
    assert share == 4 * GiB  # Slurm's 8 GiB over 2 ranks is the tightest


def test_memory_share_without_any_limit_splits_the_available_memory() -> None:
    env = {"JOBSTRAP_WORLD_SIZE": "2"}
    assert plan.memory_share(
        rank_limit=None, cgroup_limit=None, environ=env, available=8 * GiB
    ) == (4 * GiB)


def test_the_object_store_takes_30_percent_capped_by_the_ranks_part_of_dev_shm() -> None:
    memory, store = plan.split_memory(10 * GiB, shm_free=None)
    assert (memory, store) == (10 * GiB - int(10 * GiB * 0.3), int(10 * GiB * 0.3))
    memory, store = plan.split_memory(10 * GiB, shm_free=2 * GiB, ranks=2)
    assert store == int(2 * GiB * 0.9) // 2
    assert memory + store == 10 * GiB


def test_a_tiny_share_still_gets_rays_minimum_object_store() -> None:
    _, store = plan.split_memory(100 * 2**20, shm_free=None)
    assert store == plan.OBJECT_STORE_MINIMUM


def test_cgroup_limit_is_read_from_v1_and_v2_files(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/job_7\n0::/job_7/step_0\n")
    (tmp_path / "memory" / "job_7").mkdir(parents=True)
    (tmp_path / "memory" / "job_7" / "memory.limit_in_bytes").write_text(f"{8 * GiB}\n")
    (tmp_path / "job_7" / "step_0").mkdir(parents=True)
    (tmp_path / "job_7" / "step_0" / "memory.max").write_text(f"{6 * GiB}\n")
    assert plan.cgroup_memory_limit(str(proc), str(tmp_path)) == 6 * GiB
    (tmp_path / "job_7" / "step_0" / "memory.max").write_text("max\n")
    assert plan.cgroup_memory_limit(str(proc), str(tmp_path)) == 8 * GiB


# --------------------------------------------------------------------------------- ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = plan.free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p <= 65535 for p in ports)


def test_no_node_listens_on_a_fixed_port_that_a_second_run_would_collide_with() -> None:
    head = plan.start_argv(
        head=True, node_ip="10.0.0.1", temp_dir="/tmp/ray-x", resources=RESOURCES, ports=PORTS
    )
    node = plan.start_argv(
        head=False,
        node_ip="10.0.0.2",
        temp_dir="/tmp/ray-y",
        resources=RESOURCES,
        ports=PORTS,
        address="10.0.0.1:1234",
    )
    for argv in (head, node):
        for flag in (
            "--node-manager-port",
            "--object-manager-port",
            "--min-worker-port",
            "--max-worker-port",
            "--metrics-export-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        ):
            assert _value(argv, flag) == "0", flag  # the server binds a free one itself
        assert _value(argv, "--dashboard-agent-listen-port") == "40002"
        assert "--block" in argv
    assert _value(head, "--port") == "0"
    assert _value(head, "--dashboard-port") == "40001"
    assert _value(head, "--ray-client-server-port") == "40003"
    assert _value(node, "--address") == "10.0.0.1:1234"
    assert "--head" not in node
    assert "--dashboard-port" not in node


def test_every_node_is_told_the_jobs_share_and_its_own_address() -> None:
    argv = plan.start_argv(
        head=True, node_ip="10.0.0.1", temp_dir="/tmp/ray-x", resources=RESOURCES, ports=PORTS
    )
    assert _value(argv, "--num-cpus") == "4"
    assert _value(argv, "--num-gpus") == "1"
    assert _value(argv, "--memory") == str(3 * GiB)
    assert _value(argv, "--object-store-memory") == str(GiB)
    assert _value(argv, "--node-ip-address") == "10.0.0.1"
    assert _value(argv, "--temp-dir") == "/tmp/ray-x"


def test_a_head_with_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="head"):
        plan.start_argv(
            head=True,
            node_ip="10.0.0.1",
            temp_dir="/t",
            resources=RESOURCES,
            ports=PORTS,
            address="10.0.0.1:1",
        )


# ----------------------------------------------------------------------------- directory


def test_a_long_tmpdir_falls_back_to_a_short_one(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 60)
    long_dir.mkdir()
    assert plan.temp_dir_parent({"TMPDIR": str(long_dir)}) == "/tmp"


def test_the_node_directory_is_private_and_short_enough_for_rays_sockets() -> None:
    path, other = plan.make_temp_dir({}), plan.make_temp_dir({})
    try:
        assert len(path) <= plan.TEMP_DIR_MAX_LENGTH
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert other != path  # every node of every run its own
    finally:
        os.rmdir(path)
        os.rmdir(other)


def test_no_short_writable_directory_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    with pytest.raises(UserError, match="TMPDIR"):
        plan.temp_dir_parent({})


# ------------------------------------------------------------------------------- env


def test_node_env_sets_token_mode_explicitly_and_drops_stray_ray_auth_settings() -> None:
    base = {"PATH": "/bin", "RAY_AUTH_TOKEN": "someone-elses", "RAY_ADDRESS": "other:1"}
    env = plan.node_env(base, token_file="/tmp/ray-x/secrets/token", tls=None)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/tmp/ray-x/secrets/token"
    assert "RAY_AUTH_TOKEN" not in env
    assert "RAY_ADDRESS" not in env
    assert env["RAY_USE_TLS"] == "0"
    assert env["PATH"] == "/bin"


def test_node_env_with_tls_names_the_nodes_certificate() -> None:
    tls = plan.TLSPaths(ca="/d/ca.pem", cert="/d/cert.pem", key="/d/key.pem")
    env = plan.node_env({}, token_file="/d/token", tls=tls)
    assert env["RAY_USE_TLS"] == "1"
    assert (env["RAY_TLS_CA_CERT"], env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"]) == (
        "/d/ca.pem",
        "/d/cert.pem",
        "/d/key.pem",
    )


# ---------------------------------------------------------------------------- layout


def test_a_ray_job_runs_one_rank_per_node_and_the_app_on_the_heads_rank() -> None:
    from jobstrap.batch.submit import batch_profile
    from jobstrap.config.profile import load_profile
    from jobstrap.jobs.spec import app_job

    for nodes, ranks in ((3, 1), (1, 2)):
        profile = batch_profile(load_profile(overrides={"engine": "ray", "nodes": nodes}))
        spec = app_job(profile, "/runs/r", "tag", ["app.py"])
        assert spec.tasks_per_node == ranks
        command = list(spec.command)
        assert command[command.index("--engine") + 1] == "ray"
        assert "--client-on-scheduler-rank" in command


def test_a_dask_job_names_no_engine() -> None:
    from jobstrap.config.profile import load_profile
    from jobstrap.jobs.spec import app_job

    spec = app_job(load_profile(), "/runs/r", "tag", ["app.py"])
    assert "--engine" not in spec.command


def test_a_dask_collection_submitted_with_the_ray_engine_is_refused_and_nothing_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    from jobstrap.batch.client import submit

    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JOBSTRAP_LOCAL_SPOOL", str(tmp_path / "spool"))
    with pytest.raises(UserError, match="engine 'ray' runs functions"):
        submit(dask.delayed(sum)([1, 2]), engine="ray")
    assert not (tmp_path / "runs").exists()  # nothing submitted


def test_an_app_run_through_jobstrap_run_with_the_ray_engine_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobstrap.batch.client import submit_app

    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("JOBSTRAP_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(UserError, match="jobstrap submit --engine ray"):
        submit_app([str(app)], engine="ray")
    assert not (tmp_path / "runs").exists()


def test_a_ray_function_job_runs_the_ray_runner_after_every_node_and_a_dask_one_the_graph_runner(
    tmp_path: Path,
) -> None:
    from jobstrap.batch.client import _engine_job
    from jobstrap.config.profile import load_profile
    from jobstrap.store.rundir import RunDir

    run = RunDir.create(tmp_path, "graph-x")
    work = {"kind": "function", "function": sum, "args": (), "kwargs": {}}

    ray_argv, ray_after, ray_where = _engine_job(load_profile(None, {"engine": "ray"}), work)
    dask_argv, dask_after, dask_where = _engine_job(load_profile(), work)

    assert ray_argv(run) == ["-m", "jobstrap.engines.ray.runner", str(run.path)]
    assert ray_after is None  # the driver starts once every Ray node joined
    assert not ray_where.in_process  # a Ray function always gets its Ray cluster
    assert dask_argv(run)[:2] == ["-m", "jobstrap.engines.dask.graph_runner"]
    assert dask_after == 0
    # One node, a plain function: Dask computes it in the job's own process.
    assert dask_where.in_process
    assert "--threads" in dask_argv(run)


def test_the_heads_dashboard_is_off_unless_given_a_host_and_then_on_its_free_port() -> None:
    off = plan.start_argv(
        head=True, node_ip="10.0.0.1", temp_dir="/tmp/ray-x", resources=RESOURCES, ports=PORTS
    )
    on = plan.start_argv(
        head=True,
        node_ip="10.0.0.1",
        temp_dir="/tmp/ray-x",
        resources=RESOURCES,
        ports=PORTS,
        dashboard_host="127.0.0.1",
    )

    assert _value(off, "--include-dashboard") == "false"
    assert "--dashboard-host" not in off
    assert _value(on, "--include-dashboard") == "true"
    assert _value(on, "--dashboard-host") == "127.0.0.1"
    assert _value(on, "--dashboard-port") == "40001"


def test_a_ray_job_starts_rays_dashboard_only_when_the_profile_asks_for_it() -> None:
    from jobstrap.config.profile import load_profile
    from jobstrap.jobs.spec import app_job

    default = app_job(load_profile(None, {"engine": "ray"}), "/runs/r", "tag", ["app.py"])
    asked = app_job(
        load_profile(None, {"engine": "ray", "dashboard": True}), "/runs/r", "tag", ["app.py"]
    )

    assert "--no-dashboard" in default.command
    assert "--no-dashboard" not in asked.command
    assert "--dashboard-port" in asked.command
