-- Tenants. Every key, agent and task belongs to one; rows made before this migration join 'default'.
--
-- Agent ids are chosen by their owners, so two tenants may both have a 'worker-1'. They are stored
-- qualified by their tenant ('acme/worker-1'; neither part can contain '/'), which keeps every table
-- that names an agent unchanged in shape and makes another tenant's agent unaddressable by id.
-- The API always shows the plain id with a separate tenant.

ALTER TABLE agent_task_type_stats DROP CONSTRAINT agent_task_type_stats_agent_id_fkey;
ALTER TABLE agent_task_type_stats ADD CONSTRAINT agent_task_type_stats_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE agent_outcome_minutes DROP CONSTRAINT agent_outcome_minutes_agent_id_fkey;
ALTER TABLE agent_outcome_minutes ADD CONSTRAINT agent_outcome_minutes_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE ON UPDATE CASCADE;

UPDATE agents SET id = 'default/' || id WHERE position('/' IN id) = 0;
UPDATE agent_streams SET agent_id = 'default/' || agent_id WHERE position('/' IN agent_id) = 0;
UPDATE task_events SET agent_id = 'default/' || agent_id
    WHERE agent_id IS NOT NULL AND position('/' IN agent_id) = 0;
UPDATE routing_decisions SET agent_id = 'default/' || agent_id WHERE position('/' IN agent_id) = 0;
-- Changes no state or attempt, so the trigger records no event.
UPDATE tasks SET assigned_agent_id = 'default/' || assigned_agent_id
    WHERE assigned_agent_id IS NOT NULL AND position('/' IN assigned_agent_id) = 0;

ALTER TABLE agents ADD CONSTRAINT agents_id_is_qualified CHECK (position('/' IN id) > 1);
ALTER TABLE agents ADD COLUMN tenant text GENERATED ALWAYS AS (split_part(id, '/', 1)) STORED;
CREATE INDEX agents_by_tenant ON agents (tenant, id);

ALTER TABLE tasks ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE tasks ALTER COLUMN tenant DROP DEFAULT;
-- The key that submitted the task (NULL for tasks older than this migration).
ALTER TABLE tasks ADD COLUMN submitted_by uuid;

DROP INDEX tasks_idempotency_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX tasks_listing;
CREATE INDEX tasks_listing ON tasks (tenant, created_at DESC, id DESC);
CREATE INDEX tasks_listing_by_submitter ON tasks (submitted_by, created_at DESC, id DESC)
    WHERE submitted_by IS NOT NULL;
DROP INDEX tasks_pending_by_type;
CREATE INDEX tasks_pending_by_type ON tasks (tenant, task_type, priority DESC, created_at, id) WHERE state = 'pending';

-- API keys: a tenant ('*' = every tenant, for the orchestrators' own key and platform admins; only
-- the CLI with database access makes those), an optional expiry, the agents an agent key may act as,
-- and HMAC-SHA-256 with a server pepper instead of a bare SHA-256. Keys hashed the old way keep
-- working (hash_scheme 'sha256') until they are rotated or revoked.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'operator', 'service', 'submitter', 'agent', 'viewer'));
ALTER TABLE api_keys
    ADD COLUMN tenant text NOT NULL DEFAULT 'default',
    ADD COLUMN hash_scheme text NOT NULL DEFAULT 'sha256' CHECK (hash_scheme IN ('sha256', 'hmac-sha256')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN agent_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN sees_tenant_tasks boolean NOT NULL DEFAULT false,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN rotated_at timestamptz,
    -- After a rotation the previous secret may keep working for a grace period.
    ADD COLUMN previous_key_prefix text,
    ADD COLUMN previous_key_hash bytea,
    ADD COLUMN previous_hash_scheme text CHECK (previous_hash_scheme IN ('sha256', 'hmac-sha256')),
    ADD COLUMN previous_valid_until timestamptz;
ALTER TABLE api_keys ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE api_keys ALTER COLUMN hash_scheme SET DEFAULT 'hmac-sha256';
CREATE INDEX api_keys_by_prefix ON api_keys (key_prefix);
CREATE INDEX api_keys_by_previous_prefix ON api_keys (previous_key_prefix) WHERE previous_key_prefix IS NOT NULL;
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, id);
