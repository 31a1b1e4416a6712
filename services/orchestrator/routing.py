"""How the orchestrator picks one agent for a task among those that can take it and have a free slot:
the four routing strategies (ARBITER_ROUTING_STRATEGY) and the explanation each decision records.

Pure: no gRPC, no SQL. The dispatcher filters the fleet with shared.matching.can_take, builds one
CandidateAgent per capable agent with a free slot, and calls Router.choose once per task.

Routing runs once per task over up to the whole fleet, so each strategy computes its scores in one tight
pass over plain floats; ScoredAgent objects and reason strings are built only for the chosen agent and
the best MAX_ALTERNATIVES others.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter, neg

from shared.config import Config
from shared.matching import (
    LANGUAGE_WEIGHT,
    SPECIALIZATION_WEIGHT,
    SUCCESS_WEIGHT,
    Capabilities,
    Requirements,
    match_score,
)

# RoutingDecision.alternatives: the other candidates a decision records, best first.
MAX_ALTERNATIVES = 5

_success_rates = attrgetter("success_rate")
_utilizations = attrgetter("utilization")
_agent_ids = attrgetter("agent_id")


class Strategy(StrEnum):
    CAPABILITY = "capability"
    LEAST_LOADED = "least_loaded"
    EPSILON_GREEDY = "epsilon_greedy"
    UCB = "ucb"


@dataclass(frozen=True)
class RoutingSettings:
    strategy: Strategy
    epsilon_start: float = 0.1
    epsilon_decay: float = 0.995
    epsilon_min: float = 0.01
    ucb_exploration: float = 1.0
    min_samples: int = 5
    new_agent_bonus: float = 1.0
    load_weight: float = 0.1

    @classmethod
    def from_config(cls, config: Config) -> RoutingSettings:
        return cls(
            strategy=Strategy(config.routing_strategy),
            epsilon_start=config.epsilon_start,
            epsilon_decay=config.epsilon_decay,
            epsilon_min=config.epsilon_min,
            ucb_exploration=config.ucb_exploration,
            min_samples=config.routing_min_samples,
            new_agent_bonus=config.ucb_new_agent_bonus,
            load_weight=config.routing_load_weight,
        )


# slots: the scoring loops read these attributes once per candidate per task. Not frozen: the dispatcher
# builds one per capable agent per round (a frozen dataclass costs four times as much to build) and
# updates the chosen one's utilization and samples in place as the round assigns.
@dataclass(slots=True)
class CandidateAgent:
    """An agent that can take the task and has a free slot, with what routing weighs."""

    agent_id: str
    # For the match score.
    capabilities: Capabilities
    # 0..1: tasks it holds / (max_concurrent_tasks + prefetch_tasks), counting assignments made earlier
    # in the same round.
    utilization: float
    # On the task type, already including the prior (shared.matching.success_rate_with_prior).
    success_rate: float
    # Outcomes on the task type so far (the caller may add in-flight routed ones).
    samples: int


@dataclass(frozen=True)
class ScoredAgent:
    agent_id: str
    score: float
    # e.g. "success 0.92 over 40 tasks, 25% utilized".
    reason: str


@dataclass(frozen=True)
class Decision:
    agent_id: str
    strategy: Strategy
    # The chosen agent's score under the strategy (epsilon_greedy: its greedy score, even when exploring).
    score: float
    # 0..1: capability: the match score; least_loaded: the free share of slots; epsilon_greedy and ucb:
    # the chosen agent's success rate.
    confidence: float
    # epsilon_greedy's random pick; ucb's pick decided by exploration or the new-agent bonus.
    explored: bool
    reason: str
    # The other candidates, best first, at most MAX_ALTERNATIVES.
    alternatives: tuple[ScoredAgent, ...]


def epsilon(settings: RoutingSettings, type_outcomes: int) -> float:
    """epsilon_greedy's exploration probability after `type_outcomes` outcomes of the task type:
    epsilon_start x epsilon_decay^t, never below epsilon_min."""
    return max(settings.epsilon_min, settings.epsilon_start * settings.epsilon_decay**type_outcomes)


class Router:
    """Chooses an agent under one strategy. `rng` is epsilon_greedy's only source of randomness, so a
    seeded one (ARBITER_ROUTING_SEED, tests) makes every decision reproducible."""

    def __init__(self, settings: RoutingSettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng

    @property
    def settings(self) -> RoutingSettings:
        return self._settings

    def choose(self, required: Requirements, candidates: Sequence[CandidateAgent], type_outcomes: int) -> Decision:
        """candidates: non-empty; every one can take the task and has a free slot (the caller filtered).
        type_outcomes: t, outcomes recorded on this task type across the fleet."""
        if not candidates:
            raise ValueError("no candidate to route to: wait until a capable agent has a free slot")
        _check_type_outcomes(type_outcomes)
        strategy = self._settings.strategy
        scores = self._scores(required, candidates, type_outcomes)
        # The chosen one (unless epsilon_greedy explores) and the alternatives.
        best = self._best_indices(candidates, scores, MAX_ALTERNATIVES + 1)
        chosen_index = best[0]
        explored = False
        if strategy is Strategy.EPSILON_GREEDY:
            exploration_probability = epsilon(self._settings, type_outcomes)
            if self._rng.random() < exploration_probability:
                chosen_index = self._rng.randrange(len(candidates))
                explored = True
        elif strategy is Strategy.UCB:
            explored = self._exploration_decided(candidates, chosen_index)
        chosen = candidates[chosen_index]
        score = scores[chosen_index]
        alternative_indices = [index for index in best if index != chosen_index][:MAX_ALTERNATIVES]
        return Decision(
            agent_id=chosen.agent_id,
            strategy=strategy,
            score=score,
            confidence=self._confidence(required, chosen),
            explored=explored,
            reason=self._decision_reason(required, chosen, score, len(candidates), type_outcomes, explored),
            alternatives=tuple(
                ScoredAgent(
                    candidates[index].agent_id,
                    scores[index],
                    self._agent_reason(required, candidates[index], type_outcomes),
                )
                for index in alternative_indices
            ),
        )

    def rank(
        self, required: Requirements, candidates: Sequence[CandidateAgent], type_outcomes: int
    ) -> list[ScoredAgent]:
        """Every candidate with its score under the strategy, best first, deterministic (epsilon_greedy
        ranks by its greedy score) — for ExplainRouting."""
        _check_type_outcomes(type_outcomes)
        scores = self._scores(required, candidates, type_outcomes)
        return [
            ScoredAgent(
                candidates[index].agent_id,
                scores[index],
                self._agent_reason(required, candidates[index], type_outcomes),
            )
            for *_, index in sorted(self._ordering(candidates, scores, range(len(candidates))))
        ]

    def _scores(self, required: Requirements, candidates: Sequence[CandidateAgent], type_outcomes: int) -> list[float]:
        """Each candidate's score under the strategy, higher is better, in the order given."""
        load_weight = self._settings.load_weight
        strategy = self._settings.strategy
        if strategy is Strategy.CAPABILITY:
            # shared.matching.match_score, inlined: the caller filtered with can_take, so what the task
            # asks is a subset of what each agent offers and fit(asked, offered) = len(asked) / len(offered).
            # The same value, without building two sets per candidate.
            languages_asked = len(required.languages)
            specializations_asked = len(required.specializations)
            return [
                LANGUAGE_WEIGHT * (languages_asked / len(c.capabilities.languages) if languages_asked else 1.0)
                + SPECIALIZATION_WEIGHT
                * (specializations_asked / len(c.capabilities.specializations) if specializations_asked else 1.0)
                + SUCCESS_WEIGHT * c.success_rate
                - load_weight * c.utilization
                for c in candidates
            ]
        if strategy is Strategy.LEAST_LOADED:
            return [1.0 - c.utilization for c in candidates]
        if strategy is Strategy.EPSILON_GREEDY:
            return [c.success_rate - load_weight * c.utilization for c in candidates]
        exploration_scale = self._exploration_scale(type_outcomes)
        min_samples = self._settings.min_samples
        bonus = self._settings.new_agent_bonus
        sqrt = math.sqrt
        return [
            c.success_rate
            + exploration_scale / sqrt(c.samples + 1)
            + (bonus if c.samples < min_samples else 0.0)
            - load_weight * c.utilization
            for c in candidates
        ]

    def _best_indices(self, candidates: Sequence[CandidateAgent], scores: list[float], count: int) -> list[int]:
        """The indices of the `count` best candidates, best first, in the strategy's order.

        Only a candidate scoring at least the count-th best score can be among them. Finding those takes
        two cheap passes over plain floats; only they (usually `count`, more on ties) get ordering keys."""
        if len(scores) > count:
            threshold = heapq.nlargest(count, scores)[-1]
            contenders: Sequence[int] = [index for index, score in enumerate(scores) if score >= threshold]
        else:
            contenders = range(len(scores))
        return [index for *_, index in heapq.nsmallest(count, self._ordering(candidates, scores, contenders))]

    def _ordering(
        self, candidates: Sequence[CandidateAgent], scores: list[float], indices: Sequence[int]
    ) -> Iterator[tuple[float, float, str, int]]:
        """An ordering key for each of the candidates at `indices`, smallest first = best first: higher
        score, then (least_loaded) higher success rate or (the others) lower utilization, then agent_id;
        the candidate's index last."""
        chosen_from = list(map(candidates.__getitem__, indices))
        if self._settings.strategy is Strategy.LEAST_LOADED:
            # Equal scores already mean equal utilization.
            tie_breaks = map(neg, map(_success_rates, chosen_from))
        else:
            tie_breaks = map(_utilizations, chosen_from)
        negated_scores = map(neg, map(scores.__getitem__, indices))
        return zip(negated_scores, tie_breaks, map(_agent_ids, chosen_from), indices, strict=True)

    def _exploration_scale(self, type_outcomes: int) -> float:
        """c·√ln(t+1): ucb's exploration term for an agent with n outcomes is this / √(n+1)."""
        return self._settings.ucb_exploration * math.sqrt(math.log(type_outcomes + 1))

    def _exploration(self, candidate: CandidateAgent, type_outcomes: int) -> float:
        return self._exploration_scale(type_outcomes) / math.sqrt(candidate.samples + 1)

    def _new_agent_bonus(self, candidate: CandidateAgent) -> float:
        return self._settings.new_agent_bonus if candidate.samples < self._settings.min_samples else 0.0

    def _exploration_decided(self, candidates: Sequence[CandidateAgent], chosen_index: int) -> bool:
        """ucb: the pick was exploration when the chosen agent got the new-agent bonus, or when another
        agent has a better success rate less load (so the exploration term made the difference)."""
        chosen = candidates[chosen_index]
        if self._new_agent_bonus(chosen) > 0:
            return True
        load_weight = self._settings.load_weight
        best_exploitation = max([c.success_rate - load_weight * c.utilization for c in candidates])
        return chosen.success_rate - load_weight * chosen.utilization < best_exploitation

    def _confidence(self, required: Requirements, chosen: CandidateAgent) -> float:
        strategy = self._settings.strategy
        if strategy is Strategy.CAPABILITY:
            return match_score(chosen.capabilities, required, chosen.success_rate)
        if strategy is Strategy.LEAST_LOADED:
            return 1.0 - chosen.utilization
        return chosen.success_rate

    def _decision_reason(
        self,
        required: Requirements,
        chosen: CandidateAgent,
        score: float,
        candidate_count: int,
        type_outcomes: int,
        explored: bool,
    ) -> str:
        among = f"among {candidate_count} agent{'' if candidate_count == 1 else 's'}"
        record = _record(chosen)
        load = f"{chosen.utilization:.0%} utilized"
        strategy = self._settings.strategy
        if strategy is Strategy.CAPABILITY:
            match = match_score(chosen.capabilities, required, chosen.success_rate)
            return f"best match score {match:.2f} ({record}, {load}) {among}"
        if strategy is Strategy.LEAST_LOADED:
            return f"least loaded: {load} ({record}) {among}"
        if strategy is Strategy.EPSILON_GREEDY:
            exploration_probability = f"ε = {epsilon(self._settings, type_outcomes):.3f}"
            if explored:
                return f"exploring ({exploration_probability}): picked at random {among}; {record}, {load}"
            return f"best {record}, {load}, {among} ({exploration_probability})"
        return f"highest UCB score {score:.2f} ({self._ucb_terms(chosen, type_outcomes)}) {among}"

    def _agent_reason(self, required: Requirements, candidate: CandidateAgent, type_outcomes: int) -> str:
        """Why an agent scored what it did, e.g. "success 0.92 over 40 tasks, 25% utilized"."""
        load = f"{candidate.utilization:.0%} utilized"
        strategy = self._settings.strategy
        if strategy is Strategy.CAPABILITY:
            match = match_score(candidate.capabilities, required, candidate.success_rate)
            return f"match {match:.2f}: {_record(candidate)}, {load}"
        if strategy is Strategy.LEAST_LOADED:
            return f"{load}, {_record(candidate)}"
        if strategy is Strategy.EPSILON_GREEDY:
            return f"{_record(candidate)}, {load}"
        return f"{self._ucb_terms(candidate, type_outcomes)}, {load}"

    def _ucb_terms(self, candidate: CandidateAgent, type_outcomes: int) -> str:
        """e.g. "success 0.95 over 100 tasks + exploration 0.17 + new-agent bonus 1.00 − load 0.03"."""
        terms = f"{_record(candidate)} + exploration {self._exploration(candidate, type_outcomes):.2f}"
        bonus = self._new_agent_bonus(candidate)
        if bonus > 0:
            terms += f" + new-agent bonus {bonus:.2f}"
        load_penalty = self._settings.load_weight * candidate.utilization
        if load_penalty > 0:
            terms += f" − load {load_penalty:.2f}"
        return terms


def _check_type_outcomes(type_outcomes: int) -> None:
    if type_outcomes < 0:
        raise ValueError(f"type_outcomes is a count of outcomes and cannot be negative; got {type_outcomes}")


def _record(candidate: CandidateAgent) -> str:
    return f"success {candidate.success_rate:.2f} over {candidate.samples} task{'' if candidate.samples == 1 else 's'}"
