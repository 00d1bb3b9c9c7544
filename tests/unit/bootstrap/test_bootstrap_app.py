"""Running the app in the rank: exit codes as Python gives them."""

from __future__ import annotations

import pytest

from jobstrap.bootstrap.app import exit_code_of


@pytest.mark.parametrize(
    ("code", "expected"), [(None, 0), (0, 0), (3, 3), (256 + 7, 7), (True, 1), ("bye", 1)]
)
def test_exit_codes_follow_python(code: object, expected: int) -> None:
    assert exit_code_of(code) == expected
