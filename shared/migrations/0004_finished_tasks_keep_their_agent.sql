-- A finished task keeps the agent that held it last, so users can see who did (or failed) the work.
-- Still: an assigned or running task always names its agent, and a pending one names none.
ALTER TABLE tasks DROP CONSTRAINT tasks_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_agent_matches_state CHECK (
    CASE state
        WHEN 'pending' THEN assigned_agent_id IS NULL
        WHEN 'assigned' THEN assigned_agent_id IS NOT NULL
        WHEN 'running' THEN assigned_agent_id IS NOT NULL
        ELSE true
    END
);
