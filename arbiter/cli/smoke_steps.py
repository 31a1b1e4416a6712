"""The steps of `arbiter smoke`: each run under its own deadline, timed, recorded, and shown as it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from arbiter.cli.output import one_line
from arbiter.cli.smoke_probes import CheckFailed
from arbiter.errors import ArbiterError


class Outcome(Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StepResult:
    name: str
    outcome: Outcome
    milliseconds: float
    # On a pass, what held; on a failure, why (starting with a code such as UNAUTHENTICATED); on a skip, why.
    detail: str


Check = Callable[[], Awaitable[str]]


class Steps:
    """Runs checks one at a time, each within `timeout` seconds, and keeps their results in order."""

    def __init__(self, timeout: float, show: Callable[[StepResult], None] | None = None) -> None:
        self.timeout = timeout
        self.results: list[StepResult] = []
        self._show = show

    async def run(self, name: str, check: Check, *, hint: Callable[[], str] | None = None) -> bool:
        """True when the check held; a failure is recorded, never raised. `hint` adds to a timeout's reason."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                detail = await check()
            outcome = Outcome.PASSED
        except CheckFailed as failed:
            outcome, detail = Outcome.FAILED, str(failed)
        except ArbiterError as refused:
            outcome, detail = Outcome.FAILED, f"{refused.code.name}: {refused.message}"
        except TimeoutError:
            outcome, detail = Outcome.FAILED, f"DEADLINE_EXCEEDED: not done within {self.timeout:g} s (--timeout)"
            extra = hint() if hint is not None else ""
            if extra:
                detail += f"; {extra}"
        self._record(StepResult(name, outcome, (time.perf_counter() - started) * 1000, one_line(detail)))
        return outcome == Outcome.PASSED

    def skip(self, name: str, why: str) -> None:
        self._record(StepResult(name, Outcome.SKIPPED, 0.0, why))

    def _record(self, result: StepResult) -> None:
        self.results.append(result)
        if self._show is not None:
            self._show(result)

    @property
    def first_failure(self) -> StepResult | None:
        return next((result for result in self.results if result.outcome == Outcome.FAILED), None)


MARKS = {Outcome.PASSED: "✓", Outcome.FAILED: "✗", Outcome.SKIPPED: "-"}


def step_line(result: StepResult) -> str:
    """`✓ submit task  (12 ms)  task 5f0c…`; a skipped step shows no time."""
    took = "" if result.outcome == Outcome.SKIPPED else f"  ({result.milliseconds:.0f} ms)"
    return f"{MARKS[result.outcome]} {result.name}{took}  {result.detail}".rstrip()
