"""Version 2 (compatible: one more step at the end) of a tenant's `pipeline` workflow."""

from tenantflow_guest import WorkflowEntrypoint

VERSION = 2


class Pipeline(WorkflowEntrypoint):
    name = "pipeline"

    def run(self, event, step):
        build = step.do("build", lambda: {"artifact": f"app-{event.payload['commit']}", "built_by": VERSION})
        step.sleep("cool down", "1 minute")
        go = step.wait_for_event("approval", type="go", timeout="1 day")
        deployed = step.do("deploy", lambda: {"deployed": build["artifact"], "to": go.payload["env"]})
        step.do("notify", lambda: "sent")
        return {"version": VERSION, **deployed}
