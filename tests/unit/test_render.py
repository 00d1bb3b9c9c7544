"""Job scripts: golden files per system and role, quoting, bash -n and shellcheck."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstrap.errors import ConfigError
from jobstrap.jobs.render import render_script
from jobstrap.jobs.spec import ArraySpec, JobSpec, Role
from jobstrap.systems import get_system

GOLDEN = Path(__file__).parent / "golden" / "scripts"
UPDATE = os.environ.get("JOBSTRAP_UPDATE_GOLDEN") == "1"


def make_spec(**changes: object) -> JobSpec:
    base: dict[str, object] = {
        "name": "jobstrap-js0123456789",
        "role": Role.WORKERS,
        "run_dir": "/home/ada/.jobstrap/runs/r1",
        "tag": "js0123456789",
        "command": ("/opt/venv/bin/python", "-m", "jobstrap.bootstrap", "--mode", "workers"),
        "walltime": 5400,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 4,
        "memory": 8 * 2**30,
        "queue": "debug",
        "account": "science",
        "launcher": "none",
        "env": (("JOBSTRAP_RUN_DIR", "/home/ada/.jobstrap/runs/r1"), ("OMP_NUM_THREADS", "1")),
        "prologue": ("module load python",),
        "epilogue": ("echo finished",),
        "log_directory": "/home/ada/.jobstrap/runs/r1/logs",
        "python": "/opt/venv/bin/python",
    }
    base.update(changes)
    return JobSpec(**base)  # type: ignore[arg-type]


CASES: dict[str, tuple[str, JobSpec]] = {
    "slurm-workers": ("slurm", make_spec(launcher="srun", nodes=2)),
    "slurm-workers-array": (
        "slurm",
        make_spec(launcher="srun", array=ArraySpec(0, 32), signal=("USR1", 120), qos="high"),
    ),
    "slurm-app": (
        "slurm",
        make_spec(
            role=Role.APP,
            launcher="srun",
            mpi=True,
            nodes=3,
            tasks_per_node=4,
            cpus_per_task=1,
            gpus=1,
            extra_directives=("--exclusive", "#SBATCH --mem=0"),
            skip_directives=("--account",),
        ),
    ),
    "pbs-workers-array": ("pbs", make_spec(launcher="none", array=ArraySpec(0, 9))),
    "pbs-app": (
        "pbs",
        make_spec(
            role=Role.APP,
            launcher="mpiexec",
            mpi=True,
            nodes=2,
            tasks_per_node=8,
            cpus_per_task=2,
            skip_directives=("-l place",),
        ),
    ),
    "local-app": (
        "local",
        make_spec(role=Role.APP, launcher="mpiexec", mpi=True, tasks_per_node=3),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_script_matches_golden_file(case: str) -> None:
    system, spec = CASES[case]
    script = render_script(spec, get_system(system))
    golden = GOLDEN / f"{case}.sh"
    if UPDATE:
        golden.write_text(script)
    assert script == golden.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_script_passes_bash_syntax_check(case: str, tmp_path: Path) -> None:
    system, spec = CASES[case]
    path = tmp_path / "job.sh"
    path.write_text(render_script(spec, get_system(system)))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_script_passes_shellcheck(case: str, tmp_path: Path) -> None:
    system, spec = CASES[case]
    path = tmp_path / "job.sh"
    path.write_text(render_script(spec, get_system(system)))
    assert shutil.which("shellcheck"), "shellcheck is installed by the test command"
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=warning", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_skip_matches_directive_names_not_substrings() -> None:
    spec = make_spec(extra_directives=("--mem-per-cpu=1G",), skip_directives=("--mem",))
    directives = get_system("slurm").directives(spec)
    assert "#SBATCH --mem-per-cpu=1G" in directives
    assert not any(d.startswith("#SBATCH --mem=") for d in directives)


def test_extra_directive_replaces_the_builtin_of_the_same_name() -> None:
    directives = get_system("slurm").directives(make_spec(extra_directives=("--time=00:05:00",)))
    assert [d for d in directives if d.startswith("#SBATCH --time")] == ["#SBATCH --time=00:05:00"]


def test_pbs_skip_by_resource_name() -> None:
    directives = get_system("pbs").directives(make_spec(skip_directives=("walltime",)))
    assert not any("walltime" in d for d in directives)
    assert any(d.startswith("#PBS -l select=") for d in directives)


def test_pbs_rejects_qos_clearly() -> None:
    with pytest.raises(ConfigError, match=r"^qos: .*PBS has no QOS"):
        get_system("pbs").directives(make_spec(qos="high"))


def _run_rendered(spec: JobSpec, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "job.sh"
    path.write_text(render_script(spec, get_system("local")))
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path)


NASTY = "$(touch pwned) `touch pwned2` ; touch pwned3 && echo 'q\"uote' $HOME * \\ \t"


def test_shell_metacharacters_in_values_execute_nothing(tmp_path: Path) -> None:
    spec = make_spec(
        name=f"x{NASTY}",
        run_dir=str(tmp_path / f"run {NASTY}"),
        env=(("NASTY", NASTY),),
        command=("bash", "-c", 'printf "%s|%s" "$NASTY" "$1"', "arg0", NASTY),
        prologue=(),
        epilogue=(),
        log_directory=str(tmp_path / f"logs {NASTY}"),
        python="python3",
    )
    result = _run_rendered(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NASTY}|{NASTY}"
    assert not list(tmp_path.glob("pwned*"))


ECHO_BOTH = "import os, sys; sys.stdout.write(repr((os.environ['VALUE'], sys.argv[1])))"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40))  # fmt: skip
def test_any_string_survives_render_then_shell_round_trip(tmp_path: Path, value: str) -> None:
    spec = make_spec(
        env=(("VALUE", value),),
        command=("python3", "-c", ECHO_BOTH, value),
        prologue=(),
        epilogue=(),
        python="python3",
    )  # fmt: skip
    result = _run_rendered(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == repr((value, value))


def test_exit_code_of_the_command_is_the_exit_code_of_the_script(tmp_path: Path) -> None:
    spec = make_spec(command=("bash", "-c", "exit 3"), prologue=(), epilogue=("true",))
    assert _run_rendered(spec, tmp_path).returncode == 3


def test_a_signal_to_the_script_reaches_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "got-usr1"
    body = f"trap 'touch {marker}; exit 0' USR1; sleep 30 & wait"
    path = tmp_path / "job.sh"
    path.write_text(render_script(make_spec(command=("bash", "-c", body), prologue=(), epilogue=()),
                                  get_system("local")))  # fmt: skip
    process = subprocess.Popen(["bash", str(path)])
    try:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.2)
            process.send_signal(10)  # SIGUSR1; repeated until the child's trap is installed
    finally:
        process.wait(timeout=15)
    assert marker.exists()
    assert process.returncode == 0


def test_a_template_with_an_undefined_variable_is_an_error(tmp_path: Path) -> None:
    template = tmp_path / "mine.sh.j2"
    template.write_text(
        '{% extends "base.sh.j2" %}{% block prologue %}{{ no_such_thing }}{% endblock %}'
    )
    with pytest.raises(ConfigError, match=r"^template: .*undefined"):
        render_script(make_spec(), get_system("slurm"), template=str(template))


def test_a_user_template_can_extend_the_shipped_one(tmp_path: Path) -> None:
    template = tmp_path / "mine.sh.j2"
    template.write_text(
        '{% extends "base.sh.j2" %}{% block prologue %}echo site-setup\n{% endblock %}'
    )
    script = render_script(make_spec(), get_system("slurm"), template=str(template))
    assert "echo site-setup" in script
    assert "#SBATCH --partition=debug" in script
