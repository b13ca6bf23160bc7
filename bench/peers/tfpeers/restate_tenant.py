"""One tenant's Restate service for cold_start: a process of its own serves only this, under a
service name derived from the tenant (env TF_PEERS_TENANT_SERVICE), as a platform would run each
tenant's code.

    TF_PEERS_TENANT_SERVICE=TfCold_0_3_1 python -m hypercorn --bind 127.0.0.1:PORT tfpeers.restate_tenant:app

Imports only the SDK and this module, not the benchmark's other services.
"""

from __future__ import annotations

import os
import time

import restate

tenant = restate.Service(os.environ["TF_PEERS_TENANT_SERVICE"])


async def _stamp() -> float:
    return time.monotonic()


@tenant.handler()
async def first(ctx: restate.Context) -> list[float]:
    """[the step's stamp, when this module finished importing]: the latter only splits up the
    peer's timing (interpreter + imports vs. registration and invocation)."""
    return [await ctx.run_typed("step", _stamp), IMPORTED_AT]


app = restate.app(services=[tenant])
IMPORTED_AT = time.monotonic()
