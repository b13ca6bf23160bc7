"""Guests that use capabilities: outbound HTTP and secrets."""

from tenantflow_guest import CapabilityError, WorkflowEntrypoint, fetch, secret


def _call(p):
    try:
        r = fetch(p["url"], method=p.get("method", "GET"), headers=p.get("headers"), body=p.get("body"), timeout=p.get("timeout"))
    except CapabilityError as exc:
        return {"error": exc.name, "message": exc.message}
    return {"status": r.status, "text": r.text if len(r.body) <= 1000 else None, "url": r.url, "size": len(r.body), "echo": r.headers.get("x-echo"), "ok": r.ok}


class Fetch(WorkflowEntrypoint):
    """One fetch, outside a step (journaled) or inside one (`in_step`); errors caught."""

    def run(self, event, step):
        p = event.payload
        if p.get("in_step"):
            return step.do("call", lambda: _call(p), retries={"limit": 0})
        return _call(p)


class FetchThenSleep(WorkflowEntrypoint):
    """A fetch outside a step, then a durable sleep: the replay must not fetch again."""

    def run(self, event, step):
        first = _call(event.payload)
        step.sleep("nap", "1 minute")
        return first


class FetchUncaught(WorkflowEntrypoint):
    def run(self, event, step):
        return fetch(event.payload["url"]).text


class Secret(WorkflowEntrypoint):
    def run(self, event, step):
        try:
            value = secret(event.payload["name"])
        except CapabilityError as exc:
            return {"error": exc.name, "message": exc.message}
        return {"length": len(value), "starts": value[:3]}
