"""Errors the engine raises to its callers, each with a stable code for the API layer."""

from __future__ import annotations


class TenantflowError(Exception):
    """Base class: `code` is stable (API error code), the message is for humans."""

    code = "internal"


class InvalidInput(TenantflowError, ValueError):
    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class InstanceNotFound(TenantflowError, LookupError):
    """Also raised for another tenant's instance: the two are indistinguishable."""

    code = "not_found"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"instance {instance_id!r} not found")
        self.instance_id = instance_id

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickles (runner processes) with its id, not its message
        return type(self), (self.instance_id,)


class TenantNotFound(TenantflowError, LookupError):
    """Deleting a tenant of which nothing exists (offboarding.py)."""

    code = "not_found"

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant!r} not found")
        self.tenant = tenant

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.tenant,)


class InstanceAlreadyExists(TenantflowError):
    code = "already_exists"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"instance {instance_id!r} already exists")
        self.instance_id = instance_id

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.instance_id,)


class QuotaExceeded(TenantflowError):
    """The tenant has as many unfinished instances as it may (`Limits`)."""

    code = "quota_exceeded"


class InvalidState(TenantflowError):
    """The operation does not apply to the instance's current status."""

    code = "invalid_state"


class UnknownWorkflow(TenantflowError, LookupError):
    code = "unknown_workflow"


class ComponentError(TenantflowError):
    """A component could not be loaded, verified or compiled."""

    code = "component_error"


class HostBusy(TenantflowError):
    """Another host process runs the scheduler on this database."""

    code = "host_busy"


class Unauthenticated(TenantflowError):
    """No credentials, or credentials that name no valid (unrevoked) key."""

    code = "unauthenticated"


class Forbidden(TenantflowError):
    """Authenticated, but this principal may not do this action on this tenant."""

    code = "forbidden"
