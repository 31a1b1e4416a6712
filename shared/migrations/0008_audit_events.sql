-- The audit log: one row per mutating call and per denied call, written by shared/audit.py in batches.
-- Rows are only ever inserted, and deleted in batches once older than ARBITER_AUDIT_RETENTION_DAYS.
-- tenant and key_id are deliberately not foreign keys: the trail must outlive revoked or deleted keys,
-- and a call with an unknown key (key_id NULL) is recorded too.
CREATE TABLE audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    tenant      text NOT NULL,
    key_id      uuid,
    role        text,
    rpc         text NOT NULL,
    resource_id text NOT NULL DEFAULT '',
    status      text NOT NULL,
    message     text NOT NULL DEFAULT '',
    peer        text NOT NULL DEFAULT '',
    trace_id    text NOT NULL DEFAULT ''
);

-- Listing is newest first by (at, id), always within one tenant except for platform admins: the main
-- index serves a tenant's listing and its time range; the one without tenant serves all tenants and the
-- retention prune (at < cutoff).
CREATE INDEX audit_events_by_tenant ON audit_events (tenant, at DESC, id DESC);
CREATE INDEX audit_events_by_time ON audit_events (at DESC, id DESC);
-- A key or a resource (task, agent) narrows a listing to few rows, in one tenant or across all (key and
-- task ids are unique across tenants; the tenant, when given, is checked on those few rows).
CREATE INDEX audit_events_by_key ON audit_events (key_id, at DESC, id DESC) WHERE key_id IS NOT NULL;
CREATE INDEX audit_events_by_resource ON audit_events (resource_id, at DESC, id DESC);
-- "Every CancelTask" within a tenant (heartbeats are most rows; other RPCs are needles among them).
CREATE INDEX audit_events_by_rpc ON audit_events (tenant, rpc, at DESC, id DESC);
-- "Every PERMISSION_DENIED" within a tenant. Almost every row says OK, so only the others are indexed;
-- status = 'OK' is read through audit_events_by_tenant, where nearly every row matches.
CREATE INDEX audit_events_by_status ON audit_events (tenant, status, at DESC, id DESC) WHERE status <> 'OK';
