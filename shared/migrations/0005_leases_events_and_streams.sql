-- Retries wait out a backoff; a task may bound how long it waits for an agent.
ALTER TABLE tasks ADD COLUMN not_before timestamptz;
ALTER TABLE tasks ADD COLUMN schedule_to_start_timeout_ms bigint CHECK (schedule_to_start_timeout_ms > 0);

-- The sweeper's questions, each answered from a small index.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE state IN ('assigned', 'running');
CREATE INDEX tasks_attempt_deadline ON tasks (assigned_at)
    WHERE state IN ('assigned', 'running') AND timeout_ms IS NOT NULL;
CREATE INDEX tasks_start_deadline ON tasks (updated_at)
    WHERE state = 'pending' AND schedule_to_start_timeout_ms IS NOT NULL;
CREATE INDEX tasks_backoff_end ON tasks (not_before) WHERE state = 'pending' AND not_before IS NOT NULL;
CREATE INDEX tasks_finished ON tasks (updated_at) WHERE state IN ('completed', 'failed', 'cancelled');

-- Every state change of every task, written by the trigger below in the same transaction as the change,
-- so no code path can change a task without leaving its trace.
CREATE TABLE task_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_state  text,
    to_state    text NOT NULL,
    attempt     integer NOT NULL,
    agent_id    text,
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX task_events_by_task ON task_events (task_id, id);

-- The assignment stream each agent has open now, on whichever orchestrator. A newer stream replaces the
-- row, so a stream that closes releases its agent's tasks only if no newer stream took over.
CREATE TABLE agent_streams (
    agent_id     text PRIMARY KEY,
    stream_id    uuid NOT NULL,
    instance_id  text NOT NULL,
    opened_at    timestamptz NOT NULL DEFAULT now()
);

-- Records each state change, and tells every orchestrator (LISTEN) about it:
--   arbiter_task    <task id>            any change (watchers re-read the task)
--   arbiter_work    <task type>          a task became PENDING (idle agents of that type claim)
--   arbiter_revoke  {agent, task, attempt, reason}
--                                        an attempt ended other than by its agent's own report (which
--                                        sets arbiter.reported_by_agent in its transaction): the
--                                        agent's stream is told to stop it
CREATE FUNCTION record_task_change() RETURNS trigger LANGUAGE plpgsql AS $$
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
    END IF;
    IF NEW.state = 'pending' AND (TG_OP = 'INSERT' OR OLD.state <> 'pending') THEN
        PERFORM pg_notify('arbiter_work', NEW.task_type);
    END IF;
    PERFORM pg_notify('arbiter_task', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER record_task_change AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_change();
