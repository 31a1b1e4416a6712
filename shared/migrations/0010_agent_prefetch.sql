-- Assignments an agent queues beyond max_concurrent_tasks (issue 7): the orchestrator may hold up to
-- max_concurrent_tasks + prefetch_tasks of its attempts in flight. 0 keeps the old behaviour.
ALTER TABLE agents
    ADD COLUMN prefetch_tasks integer NOT NULL DEFAULT 0 CHECK (prefetch_tasks BETWEEN 0 AND 1000);
