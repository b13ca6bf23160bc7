"""Version 3 (incompatible: the first step was renamed) of a tenant's `pipeline` workflow."""

from tenantflow_guest import WorkflowEntrypoint

VERSION = 3


class Pipeline(WorkflowEntrypoint):
    name = "pipeline"

    def run(self, event, step):
        build = step.do("compile", lambda: {"artifact": f"app-{event.payload['commit']}", "built_by": VERSION})
        step.sleep("cool down", "1 minute")
        go = step.wait_for_event("approval", type="go", timeout="1 day")
        deployed = step.do("deploy", lambda: {"deployed": build["artifact"], "to": go.payload["env"]})
        return {"version": VERSION, **deployed}
