"""Constructor keywords: dask-jobqueue's spellings sorted into profile and cluster options."""

from __future__ import annotations

import pytest

from jobstrap.cluster.options import split_options
from jobstrap.config.profile import Profile, load_profile
from jobstrap.errors import ConfigError


def resolved(**settings: object) -> Profile:
    """The profile a cluster would build from these keywords (on Slurm)."""
    overrides, _ = split_options(settings)
    return load_profile("default", {"system": "slurm", **overrides}, environ={})


def test_none_means_not_given() -> None:
    overrides, options = split_options({"cores": None, "n_workers": None})

    assert overrides == {}
    assert options.n_workers == 0


def test_cluster_level_keywords_are_not_profile_settings() -> None:
    overrides, options = split_options(
        {"n_workers": 4, "name": "mycluster", "scheduler_options": {"idle_timeout": 60}}
    )

    assert overrides == {}
    assert (options.n_workers, options.name) == (4, "mycluster")
    assert options.scheduler_options == {"idle_timeout": 60}


def test_jobqueue_job_keywords_reach_the_profile_with_the_same_meaning() -> None:
    profile = resolved(
        cores=8,
        memory="32GB",
        processes=2,
        walltime="01:30:00",
        queue="short",
        account="science",
        job_extra_directives=["--qos=high"],
        job_directives_skip=["--mem"],
        job_script_prologue=["module load python"],
        worker_extra_args=["--resources", "GPU=1"],
        log_directory="/tmp/logs",
        local_directory="/scratch",
        python="/opt/python/bin/python",
        shebang="#!/bin/bash",
        death_timeout=120,
    )

    assert (profile.cores, profile.processes, profile.threads_per_worker) == (8, 2, 4)
    assert profile.memory == 32_000_000_000
    assert profile.walltime == 5400
    assert (profile.queue, profile.account) == ("short", "science")
    assert profile.extra_directives == ("--qos=high",)
    assert profile.skip_directives == ("--mem",)
    assert profile.prologue == ("module load python",)
    assert profile.worker_extra_args == ("--resources", "GPU=1")
    assert (profile.log_directory, profile.local_directory) == ("/tmp/logs", "/scratch")
    assert (profile.python, profile.shebang) == ("/opt/python/bin/python", "#!/bin/bash")
    assert profile.death_timeout == 120


def test_interface_is_the_schedulers_too_unless_it_has_its_own() -> None:
    assert resolved(interface="ib0").scheduler_interface == ("ib0",)
    both = resolved(interface="ib0", scheduler_options={"interface": "eth0"})
    assert (both.interface, both.scheduler_interface) == (("ib0",), ("eth0",))


def test_a_scheduler_host_leaves_the_scheduler_interface_alone() -> None:
    overrides, options = split_options({"interface": "ib0", "scheduler_options": {"host": "h1"}})

    assert "scheduler_interface" not in overrides
    assert options.scheduler_host == "h1"


def test_dashboard_address_and_host_are_taken_directly_or_through_scheduler_options() -> None:
    _, direct = split_options({"dashboard_address": ":8788", "host": "10.0.0.1"})
    _, nested = split_options({"scheduler_options": {"dashboard_address": ":8788"}})

    assert (direct.dashboard_address, direct.scheduler_host) == (":8788", "10.0.0.1")
    assert nested.dashboard_address == ":8788"


def test_protocol_accepts_jobqueue_url_prefixes() -> None:
    assert split_options({"protocol": "tcp://"})[0] == {"protocol": "tcp"}
    with pytest.raises(ConfigError, match="protocol"):
        split_options({"protocol": "ucx://"})


def test_security_true_is_tls_and_false_is_tcp() -> None:
    assert split_options({"security": True})[0] == {"protocol": "tls"}
    assert split_options({"security": False})[0] == {"protocol": "tcp"}


def test_a_security_object_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(ConfigError, match="protocol='tcp'"):
        split_options({"security": object()})


def test_job_cpu_and_job_mem_are_the_request_not_the_workers() -> None:
    overrides, options = split_options({"cores": 4, "job_cpu": 8, "job_mem": "20GB"})

    assert overrides == {"cores": 4}
    assert (options.job_cpu, options.job_mem) == (8, 20_000_000_000)


def test_pbs_resource_spec_becomes_a_directive_that_replaces_the_select_line() -> None:
    overrides, _ = split_options({"resource_spec": "select=1:ncpus=24:mem=100GB"})

    assert overrides["job_extra_directives"] == ["-l select=1:ncpus=24:mem=100GB"]


def test_deprecated_jobqueue_names_still_work() -> None:
    profile = resolved(extra=["--lifetime", "1h"], env_extra=["export A=1"], header_skip=["-A"])

    assert profile.worker_extra_args == ("--lifetime", "1h")
    assert profile.prologue == ("export A=1",)
    assert profile.skip_directives == ("-A",)


def test_worker_command_is_refused_because_the_bootstrap_starts_workers() -> None:
    with pytest.raises(ConfigError, match="worker_extra_args"):
        split_options({"worker_command": "distributed.cli.dask_worker"})


def test_meaningless_jobqueue_keywords_are_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="shared_temp_directory"):
        overrides, _ = split_options({"shared_temp_directory": "~"})

    assert overrides == {}


def test_nanny_is_the_profile_setting_of_the_same_name() -> None:
    overrides, _ = split_options({"nanny": False})

    assert overrides == {"nanny": False}
    assert resolved(nanny=False).nanny is False


def test_an_unknown_keyword_is_left_for_the_profile_to_reject_by_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'walltime'"):
        resolved(wallclock="1h")
