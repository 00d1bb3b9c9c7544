"""The Docker Compose test cluster stays what the one cluster definition generates.

Docker cannot run in CI, so these tests check the files instead: the compose file
parses, everything it references exists, and every generated file is byte for
byte what ``scripts/testcluster.d/clusterdef.py`` produces now.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "docker-compose-slurm"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"


def _load_clusterdef() -> ModuleType:
    path = REPO / "scripts" / "testcluster.d" / "clusterdef.py"
    spec = importlib.util.spec_from_file_location("jobstrap_testcluster_clusterdef", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


clusterdef = _load_clusterdef()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_compose_file_parses_into_services_and_networks(compose: dict[str, Any]) -> None:
    assert set(compose) >= {"services", "networks"}


def test_compose_has_the_head_and_every_compute_node_of_the_definition(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]

    assert set(services) == {h.name for h in clusterdef.HOSTS}
    assert services[clusterdef.LOGIN_HOST]["command"] == ["head"]
    assert all(services[n]["command"] == ["node"] for n in clusterdef.COMPUTE_NODES)
    assert len(clusterdef.COMPUTE_NODES) >= 2


def test_every_host_gets_the_definitions_eth0_and_ib0_addresses(compose: dict[str, Any]) -> None:
    addresses = {
        name: (svc["networks"]["eth"]["ipv4_address"], svc["networks"]["ib"]["ipv4_address"])
        for name, svc in compose["services"].items()
    }

    assert addresses == {h.name: (h.eth0, h.ib0) for h in clusterdef.HOSTS}


def test_ib_network_has_the_ipoib_mtu(compose: dict[str, Any]) -> None:
    ib = compose["networks"]["ib"]

    assert ib["driver_opts"]["com.docker.network.driver.mtu"] == str(clusterdef.IB_MTU)
    assert ib["ipam"]["config"][0]["subnet"] == clusterdef.IB_SUBNET


def test_every_file_the_compose_file_references_exists(compose: dict[str, Any]) -> None:
    missing = []
    for name, svc in compose["services"].items():
        build = COMPOSE_DIR / svc["build"]
        if not (build / "Dockerfile").is_file():
            missing.append(f"{name}: build context without Dockerfile: {build}")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not (COMPOSE_DIR / source).exists():
                missing.append(f"{name}: volume source {source}")

    assert missing == []


def test_dockerfile_copies_only_files_that_exist() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]

    assert copied
    assert [c for c in copied if not (COMPOSE_DIR / c).is_file()] == []


@pytest.mark.parametrize("name", clusterdef.COMPOSE_FILES)
def test_generated_config_file_equals_what_the_generator_produces(name: str) -> None:
    expected = clusterdef.render(name, clusterdef.COMPOSE_OPTIONS)

    assert (COMPOSE_DIR / name).read_text() == expected, (
        f"docker-compose-slurm/{name} is stale: run scripts/testcluster.d/clusterdef.py "
        "write-compose"
    )


def test_compose_file_equals_what_the_generator_produces() -> None:
    assert COMPOSE_FILE.read_text() == clusterdef.compose_yaml(), (
        "docker-compose-slurm/docker-compose.yml is stale: run "
        "scripts/testcluster.d/clusterdef.py write-compose"
    )


def test_compose_slurm_conf_differs_from_the_namespace_one_only_in_its_header() -> None:
    # Both variants come from one function; only the variant line may differ.
    netns = clusterdef.render("slurm.conf", clusterdef.Options(variant="netns"))
    composed = (COMPOSE_DIR / "slurm.conf").read_text()

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("# variant=")]

    assert body(netns) == body(composed)
