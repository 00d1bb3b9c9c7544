"""The job side's one signal policy: first signal, second signal, replay, ignore."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from jobstrap.bootstrap import drain
from jobstrap.bootstrap.signals import BATCH_SIGNALS, SignalPolicy, ignoring


@pytest.fixture
def calls() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def policy(calls: list[tuple[str, str]]) -> SignalPolicy:
    return SignalPolicy(
        lambda sig: calls.append(("first", sig.name)),
        lambda sig: calls.append(("again", sig.name)),
        counted=(signal.SIGTERM, signal.SIGINT),
    )


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in BATCH_SIGNALS}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_second_counted_signal_ends_and_others_only_wind_down(
    policy: SignalPolicy, calls: list[tuple[str, str]]
) -> None:
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
        policy.handle(sig)

    assert calls == [
        ("first", "SIGUSR1"),
        ("first", "SIGTERM"),
        ("first", "SIGUSR1"),
        ("again", "SIGINT"),
        ("again", "SIGTERM"),
    ]


def test_without_again_every_signal_gets_the_first_action(calls: list[tuple[str, str]]) -> None:
    policy = SignalPolicy(lambda sig: calls.append(("first", sig.name)))

    policy.handle(signal.SIGTERM)
    policy.handle(signal.SIGTERM)

    assert calls == [("first", "SIGTERM"), ("first", "SIGTERM")]


@pytest.mark.usefixtures("saved_handlers")
def test_install_replays_early_signals_and_restore_puts_back_the_handlers(
    policy: SignalPolicy, calls: list[tuple[str, str]]
) -> None:
    drain.catch_early_signals()
    os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
    caught = signal.getsignal(signal.SIGTERM)

    policy.install()
    os.kill(os.getpid(), signal.SIGTERM)
    policy.restore()

    assert calls == [("first", "SIGTERM"), ("again", "SIGTERM")]
    assert signal.getsignal(signal.SIGTERM) is caught
    assert drain.early_signals() == []


def test_a_policy_on_an_event_loop_acts_in_the_loop(
    policy: SignalPolicy, calls: list[tuple[str, str]]
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        policy.install_on(loop, replay_early=False)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                if len(calls) == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            for sig in policy.signals:
                loop.remove_signal_handler(sig)

    asyncio.run(main())

    assert calls == [("first", "SIGUSR1"), ("first", "SIGINT"), ("again", "SIGINT")]


@pytest.mark.usefixtures("saved_handlers")
def test_ignoring_ignores_for_the_block_only() -> None:
    before = signal.getsignal(signal.SIGUSR1)

    with ignoring((signal.SIGUSR1,)):
        inside = signal.getsignal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process otherwise

    assert inside is signal.SIG_IGN
    assert signal.getsignal(signal.SIGUSR1) is before
