"""The orchestrator's routing strategies: pure, no database, no server."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from services.orchestrator.routing import (
    MAX_ALTERNATIVES,
    CandidateAgent,
    Router,
    RoutingSettings,
    Strategy,
    epsilon,
)
from shared.config import Config
from shared.matching import Capabilities, Requirements, can_take, match_score, success_rate_with_prior

try:
    from hypothesis import assume, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
except ModuleNotFoundError:  # not among pyproject's dev extras yet: the property test is skipped
    HYPOTHESIS_INSTALLED = False
else:
    HYPOTHESIS_INSTALLED = True

TASK_TYPE = "code-review"
REVIEW = Requirements(task_type=TASK_TYPE)
DETERMINISTIC_STRATEGIES = (Strategy.CAPABILITY, Strategy.LEAST_LOADED, Strategy.UCB)


def agent(
    agent_id: str,
    *,
    success_rate: float = 0.7,
    samples: int = 0,
    utilization: float = 0.0,
    languages: frozenset[str] = frozenset(),
    specializations: frozenset[str] = frozenset(),
) -> CandidateAgent:
    return CandidateAgent(
        agent_id=agent_id,
        capabilities=Capabilities(
            task_types=frozenset({TASK_TYPE}), languages=languages, specializations=specializations
        ),
        utilization=utilization,
        success_rate=success_rate,
        samples=samples,
    )


def router(strategy: Strategy, seed: int = 7, **settings: Any) -> Router:
    return Router(replace(RoutingSettings(strategy), **settings), random.Random(seed))


def eight_agents() -> list[CandidateAgent]:
    return [
        agent(
            f"agent-{index}",
            success_rate=0.5 + index * 0.05,
            samples=10 * index,
            utilization=(index % 4) / 4,
            languages=frozenset({"python", "go"} if index % 2 else {"python"}),
        )
        for index in range(8)
    ]


# --- capability


def test_capability_prefers_the_specialist_when_success_rates_are_equal() -> None:
    python_only = agent("specialist", samples=20, languages=frozenset({"python"}))
    polyglot = agent("polyglot", samples=20, languages=frozenset({"python", "go", "rust", "java"}))
    required = Requirements(TASK_TYPE, languages=frozenset({"python"}))

    decision = router(Strategy.CAPABILITY).choose(required, [polyglot, python_only], type_outcomes=40)

    assert decision.agent_id == "specialist"


def test_capability_prefers_the_higher_success_rate_when_fit_is_equal() -> None:
    decision = router(Strategy.CAPABILITY).choose(
        REVIEW, [agent("steady", success_rate=0.6), agent("strong", success_rate=0.9)], type_outcomes=10
    )

    assert decision.agent_id == "strong"


def test_capability_score_is_match_score_less_the_load_term_and_confidence_is_match_score() -> None:
    required = Requirements(TASK_TYPE, languages=frozenset({"python"}), specializations=frozenset({"security"}))
    busy = agent(
        "busy",
        success_rate=0.8,
        utilization=0.5,
        languages=frozenset({"python", "go"}),
        specializations=frozenset({"security"}),
    )

    decision = router(Strategy.CAPABILITY, load_weight=0.2).choose(required, [busy], type_outcomes=3)

    match = match_score(busy.capabilities, required, busy.success_rate)
    assert decision.score == match - 0.2 * 0.5
    assert decision.confidence == match
    assert not decision.explored
    assert decision.reason == f"best match score {match:.2f} (success 0.80 over 0 tasks, 50% utilized) among 1 agent"


# --- least_loaded


def test_least_loaded_picks_the_30_percent_agent_over_the_90_percent_one() -> None:
    busy = agent("busy", success_rate=0.95, samples=100, utilization=0.9)
    quiet = agent("quiet", success_rate=0.6, samples=100, utilization=0.3)

    decision = router(Strategy.LEAST_LOADED).choose(REVIEW, [busy, quiet], type_outcomes=200)

    assert decision.agent_id == "quiet"
    assert decision.score == pytest.approx(0.7)
    assert decision.confidence == pytest.approx(0.7)
    assert "30% utilized" in decision.reason


def test_least_loaded_breaks_ties_by_higher_success_rate_then_agent_id() -> None:
    candidates = [
        agent("b-strong", success_rate=0.9, utilization=0.5),
        agent("a-strong", success_rate=0.9, utilization=0.5),
        agent("weak", success_rate=0.5, utilization=0.5),
    ]

    ranking = router(Strategy.LEAST_LOADED).rank(REVIEW, candidates, type_outcomes=0)

    assert [scored.agent_id for scored in ranking] == ["a-strong", "b-strong", "weak"]


# --- epsilon_greedy


def test_epsilon_starts_at_epsilon_start() -> None:
    assert epsilon(RoutingSettings(Strategy.EPSILON_GREEDY), 0) == 0.1


def test_epsilon_decays_by_epsilon_decay_per_outcome() -> None:
    settings = RoutingSettings(Strategy.EPSILON_GREEDY, epsilon_start=0.2, epsilon_decay=0.99, epsilon_min=0.0)

    assert epsilon(settings, 50) == pytest.approx(0.2 * 0.99**50)


def test_epsilon_never_drops_below_epsilon_min() -> None:
    settings = RoutingSettings(Strategy.EPSILON_GREEDY, epsilon_start=0.1, epsilon_decay=0.995, epsilon_min=0.01)

    assert epsilon(settings, 10_000) == 0.01
    assert epsilon(settings, 10**9) == 0.01


def test_epsilon_greedy_without_exploration_picks_the_best_success_rate_less_load() -> None:
    candidates = [
        agent("loaded-star", success_rate=0.92, utilization=0.8),
        agent("idle-good", success_rate=0.9, utilization=0.0),
        agent("idle-weak", success_rate=0.5, utilization=0.0),
    ]
    greedy_only = router(Strategy.EPSILON_GREEDY, epsilon_start=0.0, epsilon_min=0.0)

    decision = greedy_only.choose(REVIEW, candidates, type_outcomes=100)

    assert decision.agent_id == "idle-good"
    assert decision.score == pytest.approx(0.9)
    assert decision.confidence == 0.9
    assert not decision.explored


def test_epsilon_greedy_always_exploring_picks_every_candidate_at_random() -> None:
    candidates = eight_agents()
    always_explores = router(Strategy.EPSILON_GREEDY, epsilon_start=1.0, epsilon_min=1.0)

    decisions = [always_explores.choose(REVIEW, candidates, type_outcomes=0) for _ in range(400)]

    assert all(decision.explored for decision in decisions)
    assert {decision.agent_id for decision in decisions} == {candidate.agent_id for candidate in candidates}


def test_epsilon_greedy_exploring_reason_names_epsilon() -> None:
    # 0.1 x 0.995^199 = 0.0369: the decay after 199 outcomes of the task type.
    exploring_router = router(Strategy.EPSILON_GREEDY, seed=3)
    for _ in range(2000):
        decision = exploring_router.choose(REVIEW, eight_agents(), type_outcomes=199)
        if decision.explored:
            break
    else:
        pytest.fail("no exploration in 2000 decisions at ε = 0.037")

    assert decision.reason.startswith("exploring (ε = 0.037)")


def test_epsilon_greedy_with_the_same_seed_makes_the_same_decisions() -> None:
    def decisions(seed: int) -> list[str]:
        seeded = router(Strategy.EPSILON_GREEDY, seed=seed, epsilon_start=0.5, epsilon_min=0.5)
        return [seeded.choose(REVIEW, eight_agents(), type_outcomes=0).agent_id for _ in range(50)]

    assert decisions(11) == decisions(11)


# --- ucb


def test_ucb_picks_the_less_loaded_agent_when_performance_is_equal() -> None:
    busy = agent("busy", success_rate=0.9, samples=100, utilization=0.9)
    quiet = agent("quiet", success_rate=0.9, samples=100, utilization=0.3)

    decision = router(Strategy.UCB).choose(REVIEW, [busy, quiet], type_outcomes=200)

    assert decision.agent_id == "quiet"
    assert not decision.explored


def test_ucb_score_is_success_plus_exploration_less_load() -> None:
    veteran = agent("veteran", success_rate=0.95, samples=100, utilization=0.25)

    decision = router(Strategy.UCB, ucb_exploration=2.0, load_weight=0.1).choose(REVIEW, [veteran], type_outcomes=400)

    exploration = 2.0 * math.sqrt(math.log(401) / 101)
    assert decision.score == pytest.approx(0.95 + exploration - 0.025)
    assert decision.confidence == 0.95
    assert decision.reason == (
        f"highest UCB score {decision.score:.2f} "
        f"(success 0.95 over 100 tasks + exploration {exploration:.2f} − load 0.03) among 1 agent"
    )


def test_ucb_gives_an_agent_below_min_samples_the_bonus_and_calls_it_exploration() -> None:
    veteran = agent("veteran", success_rate=0.95, samples=100)
    newcomer = agent("newcomer", success_rate=0.7, samples=4)

    decision = router(Strategy.UCB, min_samples=5, new_agent_bonus=1.0).choose(
        REVIEW, [veteran, newcomer], type_outcomes=104
    )

    assert decision.agent_id == "newcomer"
    assert decision.explored
    assert "new-agent bonus 1.00" in decision.reason


def test_ucb_calls_it_exploration_when_the_exploration_term_beat_a_better_success_rate() -> None:
    veteran = agent("veteran", success_rate=0.9, samples=1000)
    less_known = agent("less-known", success_rate=0.85, samples=10)

    decision = router(Strategy.UCB, min_samples=5).choose(REVIEW, [veteran, less_known], type_outcomes=2000)

    assert decision.agent_id == "less-known"
    assert decision.explored


def test_ucb_picking_the_best_success_rate_is_not_exploration() -> None:
    veteran = agent("veteran", success_rate=0.95, samples=1000)
    weaker = agent("weaker", success_rate=0.6, samples=1000)

    decision = router(Strategy.UCB).choose(REVIEW, [weaker, veteran], type_outcomes=2000)

    assert decision.agent_id == "veteran"
    assert not decision.explored
    assert decision.reason.startswith("highest UCB score")
    assert decision.reason.endswith("among 2 agents")


# --- learning over many rounds


@dataclass
class SimulatedAgent:
    """An agent whose tasks succeed with a fixed probability, with the record the registry would keep."""

    agent_id: str
    true_success_probability: float
    successes: int = 0
    outcomes: int = 0

    def candidate(self) -> CandidateAgent:
        return agent(
            self.agent_id,
            success_rate=success_rate_with_prior(self.successes, self.outcomes),
            samples=self.outcomes,
        )


def route_and_record_outcomes(
    routing: Router, agents: Sequence[SimulatedAgent], rounds: int, outcome_seed: int = 99
) -> Counter[str]:
    """Routes `rounds` tasks one after another, each finishing before the next is routed; returns how
    many each agent got."""
    outcome_rng = random.Random(outcome_seed)
    by_id = {simulated.agent_id: simulated for simulated in agents}
    type_outcomes = sum(simulated.outcomes for simulated in agents)
    picks: Counter[str] = Counter()
    for _ in range(rounds):
        decision = routing.choose(REVIEW, [simulated.candidate() for simulated in agents], type_outcomes)
        chosen = by_id[decision.agent_id]
        chosen.outcomes += 1
        chosen.successes += outcome_rng.random() < chosen.true_success_probability
        type_outcomes += 1
        picks[decision.agent_id] += 1
    return picks


@pytest.mark.parametrize("strategy", [Strategy.UCB, Strategy.EPSILON_GREEDY])
def test_strong_agent_gets_over_80_percent_and_weak_one_still_gets_tried(strategy: Strategy) -> None:
    agents = [SimulatedAgent("a-weak", 0.5), SimulatedAgent("b-strong", 0.95)]

    picks = route_and_record_outcomes(router(strategy, seed=1), agents, rounds=1000)

    assert picks["b-strong"] > 800
    assert picks["a-weak"] >= 1


def test_ucb_gives_a_brand_new_agent_over_5_percent_of_the_next_tasks() -> None:
    experienced = [
        SimulatedAgent(f"veteran-{index}", probability, successes=round(probability * 300), outcomes=300)
        for index, probability in enumerate([0.9, 0.85, 0.8])
    ]
    newcomer = SimulatedAgent("newcomer", 0.8)

    picks = route_and_record_outcomes(router(Strategy.UCB, seed=1), [*experienced, newcomer], rounds=200)

    assert picks["newcomer"] > 0.05 * 200


# --- alternatives and rank


@pytest.mark.parametrize("strategy", list(Strategy))
def test_alternatives_are_at_most_five_others_best_first(strategy: Strategy) -> None:
    candidates = eight_agents()

    decision = router(strategy).choose(REVIEW, candidates, type_outcomes=500)

    alternative_ids = [alternative.agent_id for alternative in decision.alternatives]
    assert len(alternative_ids) == MAX_ALTERNATIVES
    assert decision.agent_id not in alternative_ids
    assert len(set(alternative_ids)) == MAX_ALTERNATIVES
    scores = [alternative.score for alternative in decision.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert all(alternative.reason for alternative in decision.alternatives)


@pytest.mark.parametrize("strategy", DETERMINISTIC_STRATEGIES)
def test_alternatives_are_the_runners_up_of_rank(strategy: Strategy) -> None:
    candidates = eight_agents()
    routing = router(strategy)

    decision = routing.choose(REVIEW, candidates, type_outcomes=500)
    ranking = routing.rank(REVIEW, candidates, type_outcomes=500)

    assert ranking[0].agent_id == decision.agent_id
    assert ranking[0].score == decision.score
    assert list(decision.alternatives) == ranking[1 : 1 + MAX_ALTERNATIVES]


def test_alternatives_list_every_other_candidate_when_there_are_few() -> None:
    candidates = eight_agents()[:3]

    decision = router(Strategy.CAPABILITY).choose(REVIEW, candidates, type_outcomes=5)

    assert len(decision.alternatives) == 2
    assert {alternative.agent_id for alternative in decision.alternatives} | {decision.agent_id} == {
        candidate.agent_id for candidate in candidates
    }


def test_alternatives_break_ties_like_the_choice_does() -> None:
    # 20 identical idle agents: only agent_id separates them, so the order must be by agent_id.
    candidates = [agent(f"agent-{index:02d}", success_rate=0.8, samples=50) for index in reversed(range(20))]

    decision = router(Strategy.LEAST_LOADED).choose(REVIEW, candidates, type_outcomes=1000)

    assert decision.agent_id == "agent-00"
    assert [alternative.agent_id for alternative in decision.alternatives] == [
        f"agent-{index:02d}" for index in range(1, 6)
    ]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_rank_lists_every_candidate_sorted_best_first_whatever_the_input_order(strategy: Strategy) -> None:
    candidates = eight_agents()
    shuffled = candidates[:]
    random.Random(5).shuffle(shuffled)
    routing = router(strategy)

    ranking = routing.rank(REVIEW, candidates, type_outcomes=300)

    assert routing.rank(REVIEW, shuffled, type_outcomes=300) == ranking
    assert routing.rank(REVIEW, candidates, type_outcomes=300) == ranking
    assert sorted(scored.agent_id for scored in ranking) == sorted(candidate.agent_id for candidate in candidates)
    scores = [scored.score for scored in ranking]
    assert scores == sorted(scores, reverse=True)


def test_rank_under_epsilon_greedy_orders_by_greedy_score_without_drawing_random_numbers() -> None:
    rng = random.Random(1)
    routing = Router(RoutingSettings(Strategy.EPSILON_GREEDY, epsilon_start=1.0, epsilon_min=1.0), rng)
    state_before = rng.getstate()

    loaded = agent("loaded", success_rate=0.9, samples=40, utilization=0.9)
    idle = agent("idle", success_rate=0.85, samples=40)

    ranking = routing.rank(REVIEW, [loaded, idle], type_outcomes=0)

    assert rng.getstate() == state_before
    assert [(scored.agent_id, scored.score) for scored in ranking] == [
        ("idle", pytest.approx(0.85)),
        ("loaded", pytest.approx(0.81)),
    ]
    assert ranking[0].reason == "success 0.85 over 40 tasks, 0% utilized"


# --- input and settings


def test_choose_refuses_an_empty_list_of_candidates() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        router(Strategy.UCB).choose(REVIEW, [], type_outcomes=0)


def test_routing_settings_come_from_the_config() -> None:
    config = Config.from_env(
        {
            "ARBITER_ROUTING_STRATEGY": "epsilon_greedy",
            "ARBITER_EPSILON_START": "0.3",
            "ARBITER_EPSILON_DECAY": "0.9",
            "ARBITER_EPSILON_MIN": "0.05",
            "ARBITER_UCB_EXPLORATION": "2",
            "ARBITER_ROUTING_MIN_SAMPLES": "3",
            "ARBITER_UCB_NEW_AGENT_BONUS": "0.5",
            "ARBITER_ROUTING_LOAD_WEIGHT": "0.2",
        }
    )

    assert RoutingSettings.from_config(config) == RoutingSettings(
        strategy=Strategy.EPSILON_GREEDY,
        epsilon_start=0.3,
        epsilon_decay=0.9,
        epsilon_min=0.05,
        ucb_exploration=2.0,
        min_samples=3,
        new_agent_bonus=0.5,
        load_weight=0.2,
    )


def test_default_config_routes_with_ucb() -> None:
    assert RoutingSettings.from_config(Config.from_env({})).strategy is Strategy.UCB


# --- any fleet, any requirements


LANGUAGES = ("python", "go", "rust")
SPECIALIZATIONS = ("security", "performance")
REGIONS = ("eu", "us")


@dataclass(frozen=True)
class FleetAgent:
    agent_id: str
    capabilities: Capabilities
    utilization: float
    successes: int
    outcomes: int


def capable_candidates(fleet: Sequence[FleetAgent], required: Requirements) -> list[CandidateAgent]:
    """What the dispatcher passes to choose(): the agents that can take the task."""
    return [
        CandidateAgent(
            agent_id=member.agent_id,
            capabilities=member.capabilities,
            utilization=member.utilization,
            success_rate=success_rate_with_prior(member.successes, member.outcomes),
            samples=member.outcomes,
        )
        for member in fleet
        if can_take(member.capabilities, required)
    ]


def check_every_strategy_picks_a_capable_candidate(
    fleet: Sequence[FleetAgent], required: Requirements, seed: int, type_outcomes: int
) -> None:
    candidates = capable_candidates(fleet, required)
    if not candidates:
        return
    by_id = {candidate.agent_id: candidate for candidate in candidates}
    for strategy in Strategy:
        settings = RoutingSettings(strategy)
        routing = Router(settings, random.Random(seed))

        decision = routing.choose(required, candidates, type_outcomes)

        assert decision.agent_id in by_id
        chosen = by_id[decision.agent_id]
        assert can_take(chosen.capabilities, required)
        assert decision.agent_id not in {alternative.agent_id for alternative in decision.alternatives}
        ranked_scores = {scored.agent_id: scored.score for scored in routing.rank(required, candidates, type_outcomes)}
        if strategy in DETERMINISTIC_STRATEGIES:
            assert decision.score == ranked_scores[decision.agent_id]
        if strategy is Strategy.CAPABILITY:
            match = match_score(chosen.capabilities, required, chosen.success_rate)
            assert decision.score == match - settings.load_weight * chosen.utilization


def random_fleet(rng: random.Random) -> list[FleetAgent]:
    fleet = []
    for index in range(rng.randint(1, 12)):
        outcomes = rng.randint(0, 500)
        capabilities = Capabilities(
            task_types=frozenset(rng.sample([TASK_TYPE, "summarize"], rng.randint(1, 2))),
            languages=frozenset(rng.sample(LANGUAGES, rng.randint(0, len(LANGUAGES)))),
            specializations=frozenset(rng.sample(SPECIALIZATIONS, rng.randint(0, len(SPECIALIZATIONS)))),
            labels={"region": rng.choice(REGIONS)} if rng.random() < 0.7 else {},
        )
        fleet.append(
            FleetAgent(f"agent-{index}", capabilities, rng.uniform(0, 0.99), rng.randint(0, outcomes), outcomes)
        )
    return fleet


def random_requirements(rng: random.Random) -> Requirements:
    return Requirements(
        task_type=rng.choice([TASK_TYPE, "summarize"]),
        languages=frozenset(rng.sample(LANGUAGES, rng.randint(0, 2))),
        specializations=frozenset(rng.sample(SPECIALIZATIONS, rng.randint(0, 1))),
        labels={"region": rng.choice(REGIONS)} if rng.random() < 0.3 else {},
    )


def test_every_strategy_picks_a_capable_candidate_for_seeded_random_fleets() -> None:
    # The same property as the hypothesis test below, on fixed random cases, so it is checked even
    # where hypothesis is not installed.
    rng = random.Random(2024)
    for _ in range(300):
        check_every_strategy_picks_a_capable_candidate(
            random_fleet(rng), random_requirements(rng), seed=rng.randrange(2**32), type_outcomes=rng.randint(0, 10_000)
        )


if HYPOTHESIS_INSTALLED:
    fleet_members = st.builds(
        lambda capabilities, utilization, outcomes, success_share: (
            capabilities,
            utilization,
            round(outcomes * success_share),
            outcomes,
        ),
        st.builds(
            Capabilities,
            task_types=st.frozensets(st.sampled_from([TASK_TYPE, "summarize"]), min_size=1),
            languages=st.frozensets(st.sampled_from(LANGUAGES)),
            specializations=st.frozensets(st.sampled_from(SPECIALIZATIONS)),
            labels=st.dictionaries(st.just("region"), st.sampled_from(REGIONS)),
        ),
        st.floats(min_value=0.0, max_value=0.99),
        st.integers(min_value=0, max_value=500),
        st.floats(min_value=0.0, max_value=1.0),
    )
    fleets = st.lists(fleet_members, min_size=1, max_size=12).map(
        lambda members: [FleetAgent(f"agent-{index}", *member) for index, member in enumerate(members)]
    )
    requirements = st.builds(
        Requirements,
        task_type=st.sampled_from([TASK_TYPE, "summarize"]),
        languages=st.frozensets(st.sampled_from(LANGUAGES), max_size=2),
        specializations=st.frozensets(st.sampled_from(SPECIALIZATIONS), max_size=1),
        labels=st.dictionaries(st.just("region"), st.sampled_from(REGIONS), max_size=1),
    )

    @hypothesis_settings(max_examples=200, deadline=None, database=None)
    @given(
        fleet=fleets,
        required=requirements,
        seed=st.integers(min_value=0, max_value=2**32),
        type_outcomes=st.integers(min_value=0, max_value=10_000),
    )
    def test_every_strategy_picks_a_capable_candidate_for_any_fleet(
        fleet: list[FleetAgent], required: Requirements, seed: int, type_outcomes: int
    ) -> None:
        assume(capable_candidates(fleet, required))
        check_every_strategy_picks_a_capable_candidate(fleet, required, seed, type_outcomes)

else:

    @pytest.mark.skip(reason="hypothesis is not installed: it is missing from pyproject's dev extras")
    def test_every_strategy_picks_a_capable_candidate_for_any_fleet() -> None:
        pass
