"""Roles by rank, node groups, worker counts and names, world size checks."""

from __future__ import annotations

import pytest

from jobstrap.bootstrap.roles import (
    Role,
    check_world_size,
    expected_workers,
    node_groups,
    role_of,
)
from jobstrap.errors import UserError


def test_roles_by_rank_are_scheduler_client_then_workers() -> None:
    roles = [role_of(r) for r in range(4)]

    assert roles == [Role.SCHEDULER, Role.CLIENT, Role.WORKER, Role.WORKER]


def test_client_on_scheduler_rank_makes_every_other_rank_a_worker() -> None:
    roles = [role_of(r, client_on_scheduler_rank=True) for r in range(3)]

    assert roles == [Role.SCHEDULER_AND_CLIENT, Role.WORKER, Role.WORKER]


def test_node_groups_give_each_host_s_worker_ranks_to_its_first_worker_rank() -> None:
    hosts = ["n1", "n1", "n1", "n2", "n2", "n2", "n1", "n3"]

    assert node_groups(hosts) == {2: (2, 6), 3: (3, 4, 5), 7: (7,)}
    assert node_groups(hosts, client_on_scheduler_rank=True) == {
        1: (1, 2, 6),
        3: (3, 4, 5),
        7: (7,),
    }
    assert node_groups(["n1", "n1"]) == {}


@pytest.mark.parametrize(
    ("size", "processes", "shared", "expected"),
    [(4, 1, False, 2), (4, 3, False, 6), (2, 1, True, 1), (2, 1, False, 0)],
)
def test_expected_workers_counts_worker_ranks_times_processes(
    size: int, processes: int, shared: bool, expected: int
) -> None:
    count = expected_workers(size, worker_processes=processes, client_on_scheduler_rank=shared)

    assert count == expected


def test_world_size_check_accepts_enough_ranks() -> None:
    check_world_size(3)
    check_world_size(2, client_on_scheduler_rank=True)


def test_world_size_check_names_the_fix_in_one_line() -> None:
    with pytest.raises(UserError) as error:
        check_world_size(2)

    message = str(error.value)
    assert "\n" not in message
    assert "at least 3 ranks" in message
    assert "--client-on-scheduler-rank" in message
