-- Back to the row-level trigger of 0005/0006: one PL/pgSQL call, one task_events row and up to four plain-text
-- notifications (arbiter_task <id>, arbiter_work <type>, arbiter_slot <agent>) per changed row, as a release
-- at 0008 expects. Task events recorded meanwhile stay.
DROP TRIGGER record_task_updates ON tasks;
DROP TRIGGER record_task_inserts ON tasks;
DROP FUNCTION record_task_updates();
DROP FUNCTION record_task_inserts();
DROP FUNCTION notify_changed_tasks(uuid[]);

-- As 0006 left it, word for word.
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

CREATE TRIGGER record_task_change AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_change();
