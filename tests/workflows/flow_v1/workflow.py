"""Version 1 of a tenant's `pipeline` workflow."""

from tenantflow_guest import WorkflowEntrypoint

VERSION = 1


class Pipeline(WorkflowEntrypoint):
    name = "pipeline"

    def run(self, event, step):
        build = step.do("build", lambda: {"artifact": f"app-{event.payload['commit']}", "built_by": VERSION})
        step.sleep("cool down", "1 minute")
        go = step.wait_for_event("approval", type="go", timeout="1 day")
        deployed = step.do("deploy", lambda: {"deployed": build["artifact"], "to": go.payload["env"]})
        return {"version": VERSION, **deployed}
