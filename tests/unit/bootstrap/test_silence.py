"""Silence of a peer, less this process's own stalls (``jobstrap.bootstrap.silence``)."""

from __future__ import annotations

import asyncio
import threading
import time

from jobstrap.bootstrap.silence import HARD_CAP_FACTOR, LoopStalls, Silence, WaitStalls


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def listen(clock: Clock, stalls: LoopStalls, seconds: float) -> None:
    """Let ``seconds`` pass with the loop running: the ticker wakes on time."""
    for _ in range(round(seconds / stalls.tick)):
        clock.now += stalls.tick
        stalls.note(clock.now)


def test_silence_without_stalls_is_wall_time_and_ends_at_the_limit() -> None:
    clock = Clock()
    silence = Silence(30.0, clock=clock)
    clock.now += 29.0
    assert silence.seconds() == 29.0
    assert not silence.lost()
    clock.now += 2.0
    assert silence.lost()
    assert silence.account() == "for 30 s"
    silence.heard()
    assert silence.seconds() == 0.0
    assert not silence.lost()


def test_a_stall_of_this_process_is_not_counted_as_the_peer_s_silence() -> None:
    clock = Clock()
    stalls = LoopStalls(tick=0.25, grace=0.25, clock=clock)
    stalls.note(clock.now)  # the ticker's first wake-up
    silence = Silence(30.0, stalls, clock=clock)
    listen(clock, stalls, 10.0)  # ten seconds of real silence
    clock.now += 25.0  # this process stalled for 25 s; the ticker has not run yet
    assert not silence.lost(), "the stall going on is discounted before the ticker sees it"
    assert 10.0 <= silence.seconds() <= 10.0 + 2 * stalls.grace
    stalls.note(clock.now)  # now it has
    assert 10.0 <= silence.seconds() <= 10.0 + 2 * stalls.grace
    listen(clock, stalls, 19.0)
    assert not silence.lost()
    listen(clock, stalls, 2.0)  # listening again, still no answer: 31 s observed
    assert silence.lost()


def test_stalls_before_the_last_answer_do_not_shorten_the_next_silence() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    stalls.note(clock.now)
    silence = Silence(5.0, stalls, clock=clock)
    clock.now += 60.0
    stalls.note(clock.now)  # a long stall, then the peer answered
    silence.heard()
    listen(clock, stalls, 4.0)
    assert not silence.lost()
    listen(clock, stalls, 2.0)
    assert silence.lost()


def test_a_process_that_never_stops_stalling_still_ends_at_the_hard_cap() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    stalls.note(clock.now)
    silence = Silence(10.0, stalls, clock=clock)
    clock.now += 10.0 * HARD_CAP_FACTOR - 1.0
    assert not silence.lost()
    clock.now += 2.0
    assert silence.lost()
    # The message says which rule ended it, not "for 10 s", which was not observed.
    assert silence.account() == (
        "for 41 s of wall time, 41 s of it while this process was stalled "
        "(the cap is 4x the 10 s death timeout)"
    )


def test_the_ticker_measures_a_real_blocked_event_loop() -> None:
    async def scenario() -> tuple[float, float, bool, bool]:
        with LoopStalls(tick=0.05, grace=0.05) as stalls:
            await asyncio.sleep(0.2)
            silence = Silence(0.5, stalls)
            time.sleep(1.0)  # the loop cannot run: a GIL-holding call, a starved CPU
            # This coroutine resumes before the ticker can note the stall.
            during = silence.seconds()
            lost_after_stall = silence.lost()
            await asyncio.sleep(0.7)  # listening, and the peer says nothing
        assert stalls._task is None, "the ticker stops with the block"
        return during, stalls.total(), lost_after_stall, silence.lost()

    during, stalled, lost_after_stall, lost_after_listening = asyncio.run(scenario())
    assert during < 0.3
    assert 0.8 < stalled < 1.3
    assert not lost_after_stall
    assert lost_after_listening


class LateEvent(threading.Event):
    """An event whose waits end late by what ``stall`` says (a stopped process)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.stall = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += (timeout or 0.0) + self.stall
        self.stall = 0.0
        return self.is_set()


def test_a_polling_thread_s_late_wait_is_a_stall_and_a_slow_call_is_not() -> None:
    clock = Clock()
    stalls = WaitStalls(grace=0.25, clock=clock)
    event = LateEvent(clock)
    silence = Silence(10.0, stalls, clock=clock)
    assert not stalls.wait(event, 1.0)
    clock.now += 2.0  # a call that took 2 s to fail: listening, not a stall
    event.stall = 20.0  # then the process was stopped through the next wait
    assert not stalls.wait(event, 1.0)
    assert stalls.total() == 20.0
    assert silence.seconds() == 4.0
    for _ in range(6):
        stalls.wait(event, 1.0)
    assert not silence.lost()
    stalls.wait(event, 1.0)
    assert silence.lost()
    assert silence.account() == "for 10 s"
    event.set()
    assert stalls.wait(event, 1.0), "a set event ends the polling"
