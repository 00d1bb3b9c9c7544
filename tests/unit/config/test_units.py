"""Memory and walltime parsing and rendering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstrap.config.units import (
    GiB,
    MiB,
    format_memory,
    format_memory_pbs,
    format_memory_slurm,
    format_walltime_pbs,
    format_walltime_slurm,
    parse_memory,
    parse_walltime,
)
from jobstrap.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GB", 4 * 10**9),
        ("4GiB", 4 * GiB),
        ("4000M", 4000 * MiB),
        ("512MiB", 512 * MiB),
        ("4G", 4 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        ("4 gb", 4 * 10**9),
        (1234, 1234),
        ("1234", 1234),
    ],
)
def test_memory_parses_si_iec_and_slurm_units(text: object, expected: int) -> None:
    assert parse_memory(text) == expected


def test_memory_keeps_gb_and_gib_distinct() -> None:
    assert parse_memory("1GB") != parse_memory("1GiB")


@pytest.mark.parametrize("bad", ["10XB", "-1GB", "0", "0GB", "abc", "", True, None, [1]])
def test_memory_rejects_bad_values_naming_the_field(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^memory: invalid value"):
        parse_memory(bad)


def test_memory_rendering_for_slurm_never_rounds_down() -> None:
    assert format_memory_slurm(4 * GiB) == "4G"
    assert format_memory_slurm(4 * 10**9) == "3815M"  # 3814.7 MiB rounded up
    assert format_memory_slurm(MiB + 1) == "2M"


def test_memory_rendering_for_pbs_uses_binary_units() -> None:
    assert format_memory_pbs(4 * GiB) == "4gb"
    assert format_memory_pbs(512 * MiB) == "512mb"
    assert format_memory_pbs(1025) == "2kb"


@given(st.integers(min_value=1, max_value=2**50))
def test_memory_format_round_trips_exactly(nbytes: int) -> None:
    assert parse_memory(format_memory(nbytes)) == nbytes


@given(st.integers(min_value=1, max_value=2**44))
def test_memory_slurm_rendering_round_trips_within_one_mib_above(nbytes: int) -> None:
    rendered = parse_memory(format_memory_slurm(nbytes))
    assert nbytes <= rendered < nbytes + MiB


@given(st.integers(min_value=1, max_value=2**34).map(lambda n: n * MiB))
def test_memory_slurm_rendering_is_exact_for_whole_mib(nbytes: int) -> None:
    assert parse_memory(format_memory_slurm(nbytes)) == nbytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:30:00", 5400),
        ("1-12:00:00", 36 * 3600),
        ("2-00", 48 * 3600),
        ("1-01:30", 86400 + 5400),
        ("30:00", 1800),
        ("90m", 5400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("45s", 45),
        ("120", 120),
        (300, 300),
        ("25:00:00", 90000),
    ],
)
def test_walltime_parses_clock_slurm_and_unit_forms(text: object, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("25:61:00", "minutes must be 0-59"),
        ("00:10:75", "seconds must be 0-59"),
        ("abc", "expected"),
        ("-5m", "must be positive"),
        ("0", "more than zero"),
        ("1-25:00:00", "hours must be 0-23"),
        ("1:2:3:4", "expected"),
        (1.5, "expected"),
    ],
)
def test_walltime_rejects_bad_values_with_the_reason(bad: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_walltime(bad)
    assert str(caught.value).startswith("walltime: invalid value")


def test_walltime_renders_slurm_with_days_and_pbs_with_long_hours() -> None:
    assert format_walltime_slurm(90061) == "1-01:01:01"
    assert format_walltime_pbs(90061) == "25:01:01"


@given(st.integers(min_value=1, max_value=400 * 86400))
def test_walltime_slurm_rendering_round_trips(seconds: int) -> None:
    assert parse_walltime(format_walltime_slurm(seconds)) == seconds


@given(st.integers(min_value=1, max_value=400 * 86400))
def test_walltime_pbs_rendering_round_trips(seconds: int) -> None:
    assert parse_walltime(format_walltime_pbs(seconds)) == seconds
