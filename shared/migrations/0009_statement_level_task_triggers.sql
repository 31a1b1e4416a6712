-- The task trigger of 0005/0006 ran once per row: a batch of 500 submissions ran 500 PL/pgSQL calls,
-- 500 single-row INSERTs into task_events and 1000 notifications. These statement-level triggers do the
-- same work once per statement, from the statement's transition tables: one INSERT of all its events, one
-- notification per task type, per agent and per 200 task ids. What they record and tell is unchanged,
-- except:
--   arbiter_task    <task id>,<task id>,...  every task the statement changed (up to 200 per notification)
--   arbiter_work    {"type": ..., "by": ...}  tasks of the type became PENDING
--   arbiter_slot    {"agent": ..., "by": ...} an attempt the agent held ended
-- where "by" is the application_name of the session that made the change, so the orchestrator that made
-- it (whose dispatch round saw it already) can skip the notification.
DROP TRIGGER record_task_change ON tasks;
DROP FUNCTION record_task_change();

CREATE FUNCTION notify_changed_tasks(task_ids uuid[]) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('arbiter_task', string_agg(id::text, ','))
    FROM (SELECT id, (row_number() OVER () - 1) / 200 AS chunk FROM unnest(task_ids) AS ids(id)) numbered
    GROUP BY chunk;
$$;

CREATE FUNCTION record_task_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, from_state, to_state, attempt, reason)
    SELECT id, NULL, state, attempt, 'submitted' FROM inserted_tasks;
    PERFORM pg_notify('arbiter_work', json_build_object('type', task_type, 'by', current_setting('application_name'))::text)
    FROM (SELECT DISTINCT task_type FROM inserted_tasks WHERE state = 'pending') pending_types;
    PERFORM notify_changed_tasks(ARRAY(SELECT id FROM inserted_tasks));
    RETURN NULL;
END $$;

CREATE TRIGGER record_task_inserts AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION record_task_inserts();

CREATE FUNCTION record_task_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, from_state, to_state, attempt, agent_id, reason)
    SELECT n.id, o.state, n.state, o.attempt, COALESCE(n.assigned_agent_id, o.assigned_agent_id),
           CASE WHEN n.state IN ('assigned', 'running', 'completed') THEN '' ELSE n.error END
    FROM new_tasks n JOIN old_tasks o USING (id)
    WHERE n.state IS DISTINCT FROM o.state OR n.attempt <> o.attempt;

    -- Attempts that ended other than by their agent's own report: the agent's stream is told to stop.
    IF current_setting('arbiter.reported_by_agent', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('arbiter_revoke', json_build_object(
            'agent', o.assigned_agent_id, 'task', n.id, 'attempt', o.attempt, 'reason', n.error)::text)
        FROM new_tasks n JOIN old_tasks o USING (id)
        WHERE o.state IN ('assigned', 'running') AND n.state <> 'completed'
          AND (n.state NOT IN ('assigned', 'running') OR n.attempt <> o.attempt);
    END IF;

    PERFORM pg_notify('arbiter_slot', json_build_object('agent', agent_id, 'by', current_setting('application_name'))::text)
    FROM (
        SELECT DISTINCT o.assigned_agent_id AS agent_id
        FROM new_tasks n JOIN old_tasks o USING (id)
        WHERE o.state IN ('assigned', 'running') AND (n.state NOT IN ('assigned', 'running') OR n.attempt <> o.attempt)
    ) freed;

    PERFORM pg_notify('arbiter_work', json_build_object('type', task_type, 'by', current_setting('application_name'))::text)
    FROM (
        SELECT DISTINCT n.task_type FROM new_tasks n JOIN old_tasks o USING (id)
        WHERE n.state = 'pending' AND o.state <> 'pending'
    ) pending_types;

    PERFORM notify_changed_tasks(ARRAY(SELECT id FROM new_tasks));
    RETURN NULL;
END $$;

CREATE TRIGGER record_task_updates AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_tasks NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION record_task_updates();
