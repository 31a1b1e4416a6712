-- Routing: each agent's track record (registry) and every routing decision (orchestrator).

-- The registry's running totals per (agent, task type); the agent's overall record is their sum, and
-- rates are computed when read, with the documented priors.
CREATE TABLE agent_task_type_stats (
    agent_id        text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    task_type       text NOT NULL,
    outcomes        bigint NOT NULL DEFAULT 0 CHECK (outcomes >= 0),
    successes       bigint NOT NULL DEFAULT 0 CHECK (successes >= 0 AND successes <= outcomes),
    quality_sum     double precision NOT NULL DEFAULT 0,
    quality_count   bigint NOT NULL DEFAULT 0 CHECK (quality_count <= outcomes),
    latency_ms_sum  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, task_type)
);

-- Outcomes per agent per minute: the 5 min, 1 h and 24 h windows and the degradation check sum these.
-- Whenever an agent's outcomes are recorded, its buckets older than 25 hours are deleted (found by the
-- primary key's (agent_id, minute) order), so an agent holds at most ~1500 buckets.
CREATE TABLE agent_outcome_minutes (
    agent_id        text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    minute          timestamptz NOT NULL,
    outcomes        bigint NOT NULL DEFAULT 0,
    successes       bigint NOT NULL DEFAULT 0,
    quality_sum     double precision NOT NULL DEFAULT 0,
    quality_count   bigint NOT NULL DEFAULT 0,
    latency_ms_sum  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, minute)
);

-- The running figures move to agent_task_type_stats; the flag is set when outcomes are recorded.
ALTER TABLE agents
    DROP COLUMN success_rate,
    DROP COLUMN average_quality,
    DROP COLUMN average_latency_ms,
    DROP COLUMN task_count,
    ADD COLUMN degraded boolean NOT NULL DEFAULT false,
    ADD COLUMN degraded_reason text NOT NULL DEFAULT '';

-- The arbiter_agents_degraded gauge counts flagged agents after every batch of outcomes; few are.
CREATE INDEX agents_degraded ON agents (id) WHERE degraded;

-- Every change to an agent row (register, heartbeat, outcome, deregister) tells the registries'
-- WatchAgents feeds which agent to re-read.
CREATE FUNCTION notify_agent_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('arbiter_agent', COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END $$;

CREATE TRIGGER notify_agent_change AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION notify_agent_change();

-- One row per routed attempt: who got it, under which strategy, why, and whom it was weighed against.
CREATE TABLE routing_decisions (
    task_id       uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    agent_id      text NOT NULL,
    strategy      text NOT NULL CHECK (strategy IN ('capability', 'least_loaded', 'epsilon_greedy', 'ucb')),
    confidence    double precision NOT NULL,
    score         double precision NOT NULL,
    explored      boolean NOT NULL,
    reason        text NOT NULL,
    alternatives  jsonb NOT NULL DEFAULT '[]',
    decided_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);

-- The dispatcher reads pending work per task type (fairness between types), in claim order.
DROP INDEX tasks_pending_claim;
CREATE INDEX tasks_pending_by_type ON tasks (task_type, priority DESC, created_at, id) WHERE state = 'pending';

-- As in 0005, plus:
--   arbiter_slot    <agent id>           an attempt the agent held ended (its orchestrator may route
--                                        more work to it)
CREATE OR REPLACE FUNCTION record_task_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_id, from_state, to_state, attempt, reason)
        VALUES (NEW.id, NULL, NEW.state, NEW.attempt, 'submitted');
    ELSIF NEW.state IS DISTINCT FROM OLD.state OR NEW.attempt <> OLD.attempt THEN
        INSERT INTO task_events (task_id, from_state, to_state, attempt, agent_id, reason)
        VALUES (
            NEW.id, OLD.state, NEW.state, OLD.attempt,
            COALESCE(NEW.assigned_agent_id, OLD.assigned_agent_id),
            CASE
                WHEN NEW.state IN ('assigned', 'running', 'completed') THEN ''
                ELSE NEW.error
            END
        );
        IF OLD.state IN ('assigned', 'running') AND NEW.state <> 'completed'
           AND (NEW.state NOT IN ('assigned', 'running') OR NEW.attempt <> OLD.attempt)
           AND current_setting('arbiter.reported_by_agent', true) IS DISTINCT FROM 'on' THEN
            PERFORM pg_notify('arbiter_revoke', json_build_object(
                'agent', OLD.assigned_agent_id, 'task', NEW.id, 'attempt', OLD.attempt, 'reason', NEW.error)::text);
        END IF;
        IF OLD.state IN ('assigned', 'running')
           AND (NEW.state NOT IN ('assigned', 'running') OR NEW.attempt <> OLD.attempt) THEN
            PERFORM pg_notify('arbiter_slot', OLD.assigned_agent_id);
        END IF;
    END IF;
    IF NEW.state = 'pending' AND (TG_OP = 'INSERT' OR OLD.state <> 'pending') THEN
        PERFORM pg_notify('arbiter_work', NEW.task_type);
    END IF;
    PERFORM pg_notify('arbiter_task', NEW.id::text);
    RETURN NULL;
END $$;
