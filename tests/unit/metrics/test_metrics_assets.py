"""The shipped alert rules, scrape configuration and dashboard, checked by promtool.

``promtool check`` validates the files; ``promtool test rules`` evaluates the
alerts on made-up series, so each rule is shown to fire when it should and to stay
quiet when it should not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobstrap.cli import cli
from jobstrap.metrics import assets

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_accepts_the_rules_and_the_configuration(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(assets.alert_rules())
    config = tmp_path / "prometheus.yml"
    config.write_text(assets.prometheus_config(tmp_path / "runs", rule_files=(str(rules),)))

    checked = _promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = _promtool("check", "config", "--syntax-only", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _firing(alert: str, at: str, *labels: dict[str, str]) -> dict[str, object]:
    samples = []
    for extra in labels:
        every = {"alertname": alert, "alertstate": "firing", **extra}
        text = ",".join(f'{k}="{v}"' for k, v in sorted(every.items()))
        samples.append({"labels": f"ALERTS{{{text}}}", "value": 1})
    return {
        "expr": f'ALERTS{{alertname="{alert}",alertstate="firing"}}',
        "eval_time": at,
        "exp_samples": samples,
    }


@needs_promtool
def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(assets.alert_rules(pending_for="10m", failures=3))
    series = [
        # r1 lost its workers; r2 has two.
        ('dask_scheduler_workers{run="r1",user="u",state="idle"}', "0x20"),
        ('dask_scheduler_workers{run="r2",user="u",state="idle"}', "2x20"),
        # r1's only job is past 90 % with nothing pending; r2's has a successor
        # pending; r3 has a young job beside the old one.
        ('jobstrap_job_walltime_used_ratio{run="r1",user="u",job_id="1"}', "0.95x20"),
        ('jobstrap_job_walltime_used_ratio{run="r2",user="u",job_id="2"}', "0.95x20"),
        ('jobstrap_jobs{run="r2",user="u",state="PENDING",pool="default"}', "1x20"),
        ('jobstrap_job_walltime_used_ratio{run="r3",user="u",job_id="3"}', "0.95x20"),
        ('jobstrap_job_walltime_used_ratio{run="r3",user="u",job_id="4"}', "0.30x20"),
        # One worker near its limit, one comfortable.
        ('jobstrap_worker_memory_used_ratio{run="r1",worker="hot"}', "0.95x20"),
        ('jobstrap_worker_memory_used_ratio{run="r1",worker="cool"}', "0.50x20"),
        # Three failures in r1, one in r2.
        ('jobstrap_job_failures_total{run="r1",user="u",reason="OUT_OF_MEMORY"}', "0 1 2 3x17"),
        ('jobstrap_job_failures_total{run="r2",user="u",reason="TIMEOUT"}', "0 1x19"),
        # One job pending 11 minutes, one 2 minutes.
        ('jobstrap_job_pending_seconds{run="r1",job_id="5"}', "660x20"),
        ('jobstrap_job_pending_seconds{run="r1",job_id="6"}', "120x20"),
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "30s",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    _firing("JobstrapNoWorker", "30s"),  # not yet 60 s
                    _firing(
                        "JobstrapNoWorker", "2m", {"run": "r1", "user": "u", "severity": "critical"}
                    ),
                    _firing(
                        "JobstrapWalltimeWithoutSuccessor",
                        "2m",
                        {"run": "r1", "user": "u", "severity": "warning"},
                    ),
                    _firing(
                        "JobstrapWorkerMemoryHigh",
                        "3m",
                        {"run": "r1", "worker": "hot", "severity": "warning"},
                    ),
                    _firing(
                        "JobstrapRepeatedJobFailures",
                        "2m",
                        {"run": "r1", "user": "u", "severity": "critical"},
                    ),
                    _firing(
                        "JobstrapJobPendingTooLong",
                        "1m",
                        {"run": "r1", "job_id": "5", "severity": "warning"},
                    ),
                ],
            }
        ],
    }
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))

    tested = _promtool("test", "rules", str(test_file))

    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_configuration_scrapes_the_aggregate_over_https_with_the_client_certificate(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(assets.prometheus_config(tmp_path))
    [job] = config["scrape_configs"]
    assert job["scheme"] == "https"
    tls = job["tls_config"]
    assert tls["server_name"] == "jobstrap-run"
    assert Path(tls["cert_file"]).parent == tmp_path / ".metrics" / "client"
    assert tls["ca_file"] == str(tmp_path / ".metrics" / "ca-bundle.pem")
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / ".metrics" / "targets.json")]


def test_the_dashboard_is_json_whose_panels_use_served_series() -> None:
    dashboard = json.loads(assets.grafana_dashboard())
    served = re.compile(r"\b(dask_(scheduler|worker)_[a-z_]+|jobstrap_[a-z_]+)\b")
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert served.search(target["expr"]), target["expr"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "run"}


def test_a_bad_pending_duration_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(cli, ["metrics", "alert-rules", "--pending-for", "ten minutes"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "--pending-for" in result.output


def test_prometheus_config_creates_the_files_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path))
    result = CliRunner().invoke(cli, ["metrics", "prometheus-config"])
    assert result.exit_code == 0, result.output
    tls = yaml.safe_load(result.output)["scrape_configs"][0]["tls_config"]
    for key in ("ca_file", "cert_file", "key_file"):
        assert Path(tls[key]).is_file()
    listed = CliRunner().invoke(cli, ["metrics", "targets"])
    assert listed.exit_code == 0
    assert json.loads(listed.output) == []


# ------------------------------------------------------------------------ Alertmanager

AMTOOL = shutil.which("amtool")


def test_prometheus_config_sends_alerts_to_the_alertmanagers_given(tmp_path: Path) -> None:
    config = yaml.safe_load(
        assets.prometheus_config(
            tmp_path, alertmanagers=("127.0.0.1:9093", "https://am.example.org/alerts")
        )
    )
    assert config["alerting"]["alertmanagers"] == [
        {"scheme": "http", "static_configs": [{"targets": ["127.0.0.1:9093"]}]},
        {
            "scheme": "https",
            "path_prefix": "/alerts",
            "static_configs": [{"targets": ["am.example.org"]}],
        },
    ]
    assert "alerting" not in yaml.safe_load(assets.prometheus_config(tmp_path))


@needs_promtool
def test_promtool_accepts_a_configuration_with_an_alertmanager(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(assets.prometheus_config(tmp_path, alertmanagers=("127.0.0.1:9093",)))
    checked = _promtool("check", "config", "--syntax-only", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("address", ["nowhere", "ftp://am:21", "127.0.0.1:port", "127.0.0.1:99999"])
def test_a_bad_alertmanager_address_is_one_line_and_exit_2(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSTRAP_RUN_ROOT", str(tmp_path))
    result = CliRunner().invoke(cli, ["metrics", "prometheus-config", "--alertmanager", address])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "--alertmanager" in result.output


@pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (apt-get install prometheus-alertmanager)",
)
def test_amtool_accepts_the_alertmanager_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["metrics", "alertmanager-config", "--webhook", "https://hooks.example.org/x"]
    )
    assert result.exit_code == 0, result.output
    config = tmp_path / "alertmanager.yml"
    config.write_text(result.output)
    assert AMTOOL is not None
    checked = subprocess.run(
        [AMTOOL, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    loaded = yaml.safe_load(result.output)
    assert loaded["receivers"][0]["webhook_configs"][0]["url"] == "https://hooks.example.org/x"
    assert loaded["route"]["group_by"] == ["alertname", "run"]


def test_a_bad_webhook_or_duration_is_one_line_and_exit_2() -> None:
    for args in (["--webhook", "hooks.example.org"], ["--group-wait", "soon"]):
        result = CliRunner().invoke(cli, ["metrics", "alertmanager-config", *args])
        assert result.exit_code == 2, args
        assert result.output.strip().count("\n") == 0


def test_the_for_durations_are_configurable_by_alert_name() -> None:
    rules = yaml.safe_load(
        assets.alert_rules(durations={"NoWorker": "5s", "JobstrapTargetDown": "30s"})
    )["groups"][0]["rules"]
    waits = {rule["alert"]: rule.get("for") for rule in rules}
    assert waits["JobstrapNoWorker"] == "5s"
    assert waits["JobstrapTargetDown"] == "30s"
    assert waits["JobstrapWorkerMemoryHigh"] == assets.DEFAULT_FOR["JobstrapWorkerMemoryHigh"]


def test_an_unknown_alert_in_for_is_one_line_with_the_nearest_name() -> None:
    result = CliRunner().invoke(cli, ["metrics", "alert-rules", "--for", "NoWorkr=5s"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "did you mean 'JobstrapNoWorker'" in result.output
    result = CliRunner().invoke(cli, ["metrics", "alert-rules", "--for", "NoWorker=soon"])
    assert result.exit_code == 2
    assert "--for NoWorker" in result.output
