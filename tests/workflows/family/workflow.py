"""Parents and children: fan-out, joins, events to children, cross-tenant attempts."""

from tenantflow_guest import ChildFailedError, ChildWorkflowError, WorkflowEntrypoint


class Child(WorkflowEntrypoint):
    def run(self, event, step):
        p = event.payload or {}
        if p.get("sleep"):
            step.sleep("think", p["sleep"])
        if p.get("fail"):
            step.do("explode", lambda: (_ for _ in ()).throw(ValueError(f"child {p['i']} failed")), retries={"limit": 0})
        return step.do("square", lambda: p["i"] * p["i"])


class FanOut(WorkflowEntrypoint):
    def run(self, event, step):
        n = event.payload["n"]
        squares = step.workflows.run_all([("Child", {"i": i, "sleep": event.payload.get("sleep")}) for i in range(n)])
        return {"sum": sum(squares), "squares": squares}


class Spawner(WorkflowEntrypoint):
    """Starts `batches` of children (without waiting for them); reports each start's outcome."""

    def run(self, event, step):
        outcomes = []
        for size in event.payload["batches"]:
            try:
                step.workflows.create_batch([("Child", {"i": i}) for i in range(size)])
                outcomes.append({"started": size})
            except ChildWorkflowError as exc:
                outcomes.append({"error": exc.error_name, "message": exc.message})
        return outcomes


class Supervisor(WorkflowEntrypoint):
    """Awaits one failing child and one that succeeds; reports both."""

    def run(self, event, step):
        good = step.workflows.create("Child", {"i": 3}, id=event.payload.get("good_id"))
        bad = step.workflows.create("Child", {"i": 4, "fail": True})
        outcomes = step.workflows.join([good, bad])
        try:
            bad.result()
        except ChildFailedError as exc:
            caught = [exc.error_name, exc.message]
        return {"good": outcomes[0].output, "bad_ok": outcomes[1].ok, "caught": caught}


class Listener(WorkflowEntrypoint):
    def run(self, event, step):
        got = step.wait_for_event("instruction", type="instruction", timeout="1 hour")
        return got.payload


class Sender(WorkflowEntrypoint):
    def run(self, event, step):
        child = step.workflows.create("Listener")
        status = child.status()
        child.send_event("instruction", {"do": "it"})
        return {"first_status": status.status, "child_said": child.result()}


class Crosser(WorkflowEntrypoint):
    """Tries to reach an instance id that exists only in another tenant."""

    def run(self, event, step):
        target = event.payload["target"]
        attempts = {}
        for label, call in (
            ("status", lambda: step.workflows.get(target).status()),
            ("event", lambda: step.workflows.send_event(target, "poke", {})),
            ("join", lambda: step.workflows.join([target])),
        ):
            try:
                call()
                attempts[label] = "reached"
            except ChildWorkflowError as exc:
                attempts[label] = [exc.error_name, exc.message]
        return attempts


class Unknown(WorkflowEntrypoint):
    def run(self, event, step):
        try:
            step.workflows.create("NoSuchWorkflow")
        except ChildWorkflowError as exc:
            return [exc.error_name, exc.message]
