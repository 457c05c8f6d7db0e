"""Ctrl-C during training is honoured between steps, never lost (unetseg.runtime.interrupts)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from unetseg.runtime.interrupts import Interrupted, interrupts_between_steps, stop_if_interrupted


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs at the next bytecode of the main thread


def test_the_first_ctrl_c_waits_for_the_check_and_the_second_raises_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts_between_steps():
        ctrl_c()  # only a request: the "step" goes on
        finished_step = True
        with pytest.raises(Interrupted) as second:
            ctrl_c()  # a second Ctrl-C does not wait ...
        assert not second.value.safe  # ... so nothing may be saved from where it landed
        assert finished_step
        with pytest.raises(Interrupted) as first:
            stop_if_interrupted()
        assert first.value.safe and first.value.exit_status == 130
        raise first.value
    assert signal.getsignal(signal.SIGINT) is before  # Python's own handling is back
    stop_if_interrupted()  # and nothing is left pending


def test_a_ctrl_c_after_the_last_check_lets_the_finished_work_end() -> None:
    with interrupts_between_steps():
        ctrl_c()
    stop_if_interrupted()  # nothing pending after the block


def test_sighup_and_sigterm_are_requests_too() -> None:
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):  # SIGHUP: the ssh session closed
        with pytest.raises(Interrupted) as stop, interrupts_between_steps():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)
            stop_if_interrupted()
        assert stop.value.exit_status == status and stop.value.safe
