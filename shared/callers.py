"""Who is calling: the API key behind the current RPC, and what it may reach.

The API-key interceptor sets the caller for the duration of each call; servicers read it to scope
what they do to the caller's tenant, agents and tasks.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from shared import tenancy, validation
from shared.api_keys import Role, StoredKey, agent_pattern_matches
from shared.errors import InvalidArgument, PermissionDenied
from shared.tenancy import ALL_TENANTS, TaskScope


@dataclass(frozen=True)
class Caller:
    key: StoredKey

    @property
    def role(self) -> Role:
        return self.key.role

    @property
    def all_tenants(self) -> bool:
        return self.key.tenant == ALL_TENANTS

    @property
    def tenant(self) -> str | None:
        """The caller's tenant; None for keys that act in every tenant."""
        return None if self.all_tenants else self.key.tenant

    def tenant_for(self, field: str, requested: str) -> str:
        """The tenant a request acts in: the key's own, or for an every-tenant key the one it names."""
        if self.all_tenants:
            if not requested:
                raise InvalidArgument(field, "is required with a key that acts in every tenant")
            return tenancy.tenant(field, requested)
        if requested and requested != self.key.tenant:
            raise InvalidArgument(field, f"this key belongs to tenant '{self.key.tenant}'; leave {field} empty")
        return self.key.tenant

    def task_scope(self) -> TaskScope:
        own_only = self.role == Role.SUBMITTER and not self.key.sees_tenant_tasks
        return TaskScope(tenant=self.tenant, submitted_by=self.key.id if own_only else None)

    def agent(self, field: str, agent_id: str, *, tenant_field: str = "", requested_tenant: str = "") -> str:
        """The qualified id of an agent the caller names (to read it)."""
        checked = validation.agent_id(field, agent_id)
        return tenancy.qualify(self.tenant_for(tenant_field or "tenant", requested_tenant), checked)

    def acting_agent(self, field: str, agent_id: str) -> str:
        """The qualified id of the agent the caller acts as (register, heartbeat, stream, report): an
        agent key bound to agent ids may act only as those."""
        checked = validation.agent_id(field, agent_id)
        if self.all_tenants:
            raise PermissionDenied("a key that acts in every tenant cannot act as an agent; use an agent key")
        if self.role == Role.AGENT and not agent_pattern_matches(self.key.agent_ids, checked):
            raise PermissionDenied(
                f"this agent key may act only as {', '.join(self.key.agent_ids)}, not as '{checked}'"
            )
        return tenancy.qualify(self.key.tenant, checked)

    def submitting_tenant(self) -> str:
        if self.all_tenants:
            raise PermissionDenied("a key that acts in every tenant cannot submit tasks; use a key of the tenant")
        return self.key.tenant


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("arbiter_caller")


def set_current_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current.set(caller)


def reset_current_caller(token: contextvars.Token[Caller]) -> None:
    _current.reset(token)


def current_caller() -> Caller:
    """The caller of the RPC being served; only callable inside a call the interceptor let through."""
    return _current.get()
