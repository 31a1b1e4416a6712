-- Owned by the registry: one row per registered agent.
CREATE TABLE agents (
    id                   text PRIMARY KEY,
    name                 text NOT NULL DEFAULT '',
    model_family         text NOT NULL DEFAULT '',
    task_types           text[] NOT NULL,
    languages            text[] NOT NULL DEFAULT '{}',
    specializations      text[] NOT NULL DEFAULT '{}',
    labels               jsonb NOT NULL DEFAULT '{}',
    max_concurrent_tasks integer NOT NULL CHECK (max_concurrent_tasks >= 1),
    status               text NOT NULL CHECK (status IN ('online', 'busy', 'draining', 'unhealthy', 'offline')),
    active_tasks         integer NOT NULL DEFAULT 0 CHECK (active_tasks >= 0),
    success_rate         double precision NOT NULL DEFAULT 0,
    average_quality      double precision NOT NULL DEFAULT 0,
    average_latency_ms   double precision NOT NULL DEFAULT 0,
    task_count           bigint NOT NULL DEFAULT 0,
    registered_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- ListAgents filters by task type.
CREATE INDEX agents_task_types ON agents USING gin (task_types);
