-- Agents lose their prefetch setting: a release at 0009 holds at most max_concurrent_tasks per agent.
ALTER TABLE agents DROP COLUMN prefetch_tasks;
