"""trainer.time_budget: as many epochs as fit in the time given, with the learning-rate schedule stretched or
shrunk to end exactly there.

After every epoch the number of epochs is planned again from what the epochs so far cost (steps, validation,
checkpoints, logging: the mean of the last three) and what the end of the run will cost (the report's gallery and
the threshold's calibration each re-predict the validation set: 2.5 validations and a few seconds are kept back).
The schedule's horizon moves with the plan, so poly, cosine and one-cycle always reach their end. The time a
resumed run had already spent counts against the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration_seconds(text: str) -> float | None:
    """``"20m"``, ``"90s"``, ``"2h"``, ``"1h30m"`` or a plain number of seconds → seconds; None if unreadable."""
    text = str(text).strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        return None
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def readable(seconds: float) -> str:
    """1234.5 → "20m 34s"."""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


@dataclass
class TimeBudget:
    seconds: float
    spent_before: float = 0.0  # by the run this one resumes
    epoch_costs: list[float] = field(default_factory=list)  # wall seconds of each epoch of this run
    END_SECONDS = 3.0  # closing lines, metrics.json, curves.png
    END_VALIDATIONS = 2.5  # the report's gallery and the threshold's calibration each predict the validation set

    def epochs_that_fit(self, done: int, spent_here: float, validation_s: float) -> int:
        """How many epochs the whole run should have, ``done`` of them done and ``spent_here`` seconds spent by
        this process: the ones done and as many more as the rest of the budget holds."""
        if not self.epoch_costs:
            return done
        recent = self.epoch_costs[-3:]
        cost = sum(recent) / len(recent)
        reserve = self.END_SECONDS + self.END_VALIDATIONS * validation_s
        left = self.seconds - self.spent_before - spent_here - reserve
        return done + max(0, math.floor(left / cost)) if cost > 0 else done

    def spent(self, spent_here: float) -> float:
        return self.spent_before + spent_here

    def state_dict(self, spent_here: float, planned_epochs: int) -> dict[str, Any]:
        return {"seconds": self.seconds, "spent_s": self.spent(spent_here), "planned_epochs": planned_epochs}


def budget_state_problem(state: object) -> str | None:
    """What is wrong with a training state's time_budget part (an edited file), or None."""
    if not isinstance(state, dict):
        return "its time budget is not a dict"
    spent, planned = state.get("spent_s"), state.get("planned_epochs")
    if not (
        isinstance(spent, float) and math.isfinite(spent) and spent >= 0 and isinstance(planned, int) and planned >= 0
    ):
        return "its time budget is not a finite time spent and an epoch count"
    return None
