-- Owned by the orchestrator: one row per task, its current attempt and outcome.
CREATE TABLE tasks (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type                text NOT NULL,
    state                    text NOT NULL
        CHECK (state IN ('pending', 'assigned', 'running', 'completed', 'failed', 'cancelled')),
    payload                  jsonb NOT NULL DEFAULT '{}',
    result                   jsonb,
    error                    text NOT NULL DEFAULT '',
    priority                 integer NOT NULL DEFAULT 0,
    required_languages       text[] NOT NULL DEFAULT '{}',
    required_specializations text[] NOT NULL DEFAULT '{}',
    required_labels          jsonb NOT NULL DEFAULT '{}',
    attempt                  integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts             integer NOT NULL CHECK (max_attempts >= 1),
    timeout_ms               bigint CHECK (timeout_ms > 0),
    idempotency_key          text,
    assigned_agent_id        text,
    progress                 double precision NOT NULL DEFAULT 0,
    progress_message         text NOT NULL DEFAULT '',
    lease_expires_at         timestamptz,
    assigned_at              timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    -- An assigned or running task always names its agent; a pending or finished one holds none.
    CHECK ((state IN ('assigned', 'running')) = (assigned_agent_id IS NOT NULL))
);

-- Idempotent submit: one task per key.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim query's ORDER BY, direction included, over pending rows only.
CREATE INDEX tasks_pending_claim ON tasks (priority DESC, created_at, id) WHERE state = 'pending';

-- What an agent holds now (its load, and re-delivery when it reconnects).
CREATE INDEX tasks_in_flight_by_agent ON tasks (assigned_agent_id) WHERE state IN ('assigned', 'running');

-- ListTasks pages newest first.
CREATE INDEX tasks_listing ON tasks (created_at DESC, id DESC);
