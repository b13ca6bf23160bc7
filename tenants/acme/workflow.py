"""Acme's order approval flow: validate, reserve stock, wait for a manager, charge, ship."""

from tenantflow_guest import EventTimeoutError, NonRetryableError, WorkflowEntrypoint

from pricing import order_total  # a sibling module, bundled by `tenantflow compile`


class OrderApproval(WorkflowEntrypoint):
    name = "order-approval"

    def run(self, event, step):
        order = event.payload

        @step.do("validate order", retries={"limit": 0})
        def validate():
            if not order.get("items"):
                raise NonRetryableError("order has no items")
            return {"order_id": order["order_id"], "total": order_total(order["items"])}

        summary = validate()

        def reserve(ctx):
            # ctx.idempotency_key is stable across retries: a real call would pass it along.
            return {"reservation": f"res-{ctx.idempotency_key[:12]}", "attempt": ctx.attempt}

        reservation = step.do("reserve stock", reserve, retries={"limit": 3, "delay": "2 seconds", "backoff": "exponential"})

        if summary["total"] >= order.get("approval_threshold", 1000):
            step.log(f"order {summary['order_id']} needs approval ({summary['total']})")
            try:
                decision = step.wait_for_event("manager approval", type="approval", timeout="2 days")
            except EventTimeoutError:
                step.do("release stock", lambda: {"released": reservation["reservation"]})
                return {"order_id": summary["order_id"], "status": "expired"}
            if not decision.payload.get("approved"):
                step.do("release stock", lambda: {"released": reservation["reservation"]})
                return {"order_id": summary["order_id"], "status": "rejected", "by": decision.payload.get("by")}

        charge = step.do("charge card", lambda: {"charged": summary["total"], "currency": "EUR"}, timeout="30 seconds")
        step.sleep("wait for warehouse pickup", "1 hour")
        shipment = step.do("ship", lambda: {"tracking": f"TRK-{summary['order_id']}"})
        return {"order_id": summary["order_id"], "status": "shipped", **charge, **shipment}


class Refund(WorkflowEntrypoint):
    """Name taken from the class: `Refund`. Written in the async style of Cloudflare's Python SDK."""

    async def run(self, event, step):
        @step.do("refund payment")
        async def refund():
            return {"refunded": event.payload["amount"]}

        result = await refund()
        await step.sleep("settle", "1 day")
        return result
