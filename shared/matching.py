"""Which agent can take which task, and how well it fits: the rules the registry's FindCandidates and
the orchestrator's routing share, so the two never disagree."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

# The match score: how much of what the agent offers the task asks for, and how well it has done.
LANGUAGE_WEIGHT = 0.25
SPECIALIZATION_WEIGHT = 0.25
SUCCESS_WEIGHT = 0.5

# A new agent's record starts as if it had one outcome worth PRIOR_SUCCESS_RATE behind it:
# success rate = (successes + 0.7) / (outcomes + 1). After 2 successes and 1 failure: 2.7 / 4 = 0.675.
PRIOR_SUCCESS_RATE = 0.7
PRIOR_QUALITY = 0.7
PRIOR_WEIGHT = 1.0


@dataclass(frozen=True)
class Capabilities:
    """What an agent offers."""

    task_types: frozenset[str]
    languages: frozenset[str] = frozenset()
    specializations: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Requirements:
    """What a task asks of its agent."""

    task_type: str
    languages: frozenset[str] = frozenset()
    specializations: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)


def can_take(offered: Capabilities, required: Requirements) -> bool:
    """The task type is offered, and every required language, specialization and label is present."""
    # Checked for every capable agent per task routed: each test is skipped when nothing is asked.
    if required.task_type not in offered.task_types:
        return False
    if required.languages and not required.languages <= offered.languages:
        return False
    if required.specializations and not required.specializations <= offered.specializations:
        return False
    if required.labels:
        labels = offered.labels
        for key, value in required.labels.items():
            if labels.get(key) != value:
                return False
    return True


def fit(required: frozenset[str], offered: frozenset[str]) -> float:
    """The share of what the agent offers that the task asks for: a specialist that offers exactly what
    is asked scores 1, a generalist less; 1 when the task asks for nothing."""
    if not required:
        return 1.0
    return len(required & offered) / len(offered | required)


def match_score(offered: Capabilities, required: Requirements, success_rate: float) -> float:
    """0..1: LANGUAGE_WEIGHT x language fit + SPECIALIZATION_WEIGHT x specialization fit +
    SUCCESS_WEIGHT x success rate on the task type."""
    return (
        LANGUAGE_WEIGHT * fit(required.languages, offered.languages)
        + SPECIALIZATION_WEIGHT * fit(required.specializations, offered.specializations)
        + SUCCESS_WEIGHT * success_rate
    )


def success_rate_with_prior(successes: int, outcomes: int) -> float:
    return (successes + PRIOR_SUCCESS_RATE * PRIOR_WEIGHT) / (outcomes + PRIOR_WEIGHT)


def quality_with_prior(quality_sum: float, quality_count: int) -> float:
    return (quality_sum + PRIOR_QUALITY * PRIOR_WEIGHT) / (quality_count + PRIOR_WEIGHT)


def unmet_requirement(required: Requirements, fleet: Iterable[Capabilities]) -> str | None:
    """None when some agent in `fleet` can take the task; otherwise what nobody offers, narrowed in
    order (task type, then each language, specialization and label), e.g.
    "task type 'code-review' with language 'rust'"."""
    remaining = [offered for offered in fleet if required.task_type in offered.task_types]
    wanted = f"task type '{required.task_type}'"
    if not remaining:
        return wanted
    checks: list[tuple[str, Callable[[Capabilities], bool]]] = [
        *((f"language '{language}'", _has_language(language)) for language in sorted(required.languages)),
        *(
            (f"specialization '{specialization}'", _has_specialization(specialization))
            for specialization in sorted(required.specializations)
        ),
        *((f"label {key}={value!r}", _has_label(key, value)) for key, value in sorted(required.labels.items())),
    ]
    asked: list[str] = []
    for description, offers in checks:
        asked.append(description)
        remaining = [offered for offered in remaining if offers(offered)]
        if not remaining:
            return f"{wanted} with {' and '.join(asked)}"
    return None


def _has_language(language: str) -> Callable[[Capabilities], bool]:
    return lambda offered: language in offered.languages


def _has_specialization(specialization: str) -> Callable[[Capabilities], bool]:
    return lambda offered: specialization in offered.specializations


def _has_label(key: str, value: str) -> Callable[[Capabilities], bool]:
    return lambda offered: offered.labels.get(key) == value
