"""tenantflow guest SDK: write durable workflows that run inside a tenantflow host.

    from tenantflow_guest import WorkflowEntrypoint

    class Hello(WorkflowEntrypoint):
        def run(self, event, step):
            greeting = step.do("greet", lambda: f"hello {event.payload['name']}")
            step.sleep("pause", "1 hour")
            return greeting
"""

from ._capabilities import CapabilityError, Headers, Response, fetch, secret
from ._children import ChildFailedError, ChildHandle, ChildOutcome, ChildStatus, ChildWorkflowError
from ._entrypoint import WorkflowEntrypoint
from ._errors import EventTimeoutError, NonRetryableError, NoWorkflowsError, StepFailedError, WorkflowDefinitionError
from ._step import Event, StepContext, WorkflowEvent

__all__ = [
    "CapabilityError",
    "ChildFailedError",
    "ChildHandle",
    "ChildOutcome",
    "ChildStatus",
    "ChildWorkflowError",
    "Event",
    "EventTimeoutError",
    "Headers",
    "NoWorkflowsError",
    "NonRetryableError",
    "Response",
    "StepContext",
    "StepFailedError",
    "WorkflowDefinitionError",
    "WorkflowEntrypoint",
    "WorkflowEvent",
    "fetch",
    "secret",
]
