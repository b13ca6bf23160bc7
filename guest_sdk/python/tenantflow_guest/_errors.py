"""Exceptions tenant code raises or catches."""

from __future__ import annotations


class NonRetryableError(Exception):
    """Raise from a step body to fail the step at once, without further attempts."""


class StepFailedError(Exception):
    """A step failed for good (non-retryable, or retries exhausted).

    `error_name` is the class name of the exception the step body raised last; if the
    workflow does not catch this, the instance fails with that name and message.
    """

    def __init__(self, step_name: str, error_name: str, message: str) -> None:
        super().__init__(message)
        self.step_name = step_name
        self.error_name = error_name
        self.message = message


class EventTimeoutError(TimeoutError):
    """`wait_for_event` saw no matching event before its timeout."""

    def __init__(self, step_name: str, event_type: str) -> None:
        super().__init__(f"no event of type {event_type!r} arrived for wait {step_name!r} before its timeout")
        self.step_name = step_name
        self.event_type = event_type


class NoWorkflowsError(Exception):
    """The tenant module defines no WorkflowEntrypoint subclass (raised at build time)."""


class WorkflowDefinitionError(Exception):
    """A workflow class or call is malformed (duplicate names, bad arguments)."""
