"""One DBOS tenant's application process (the peers' cold_start workload).

    python -m tfpeers.dbos_tenant SYSTEM_DB STAMP_FILE

DBOS is a library: a tenant's workflows run in a process of the tenant's own, on its own system
database. This process launches DBOS on SYSTEM_DB, runs one one-step workflow whose step takes
`time.monotonic()` (system-wide CLOCK_MONOTONIC), writes that stamp to STAMP_FILE and exits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dbos import DBOS, DBOSConfig


@DBOS.step()
def tf_stamp() -> float:
    return time.monotonic()


@DBOS.workflow()
def tf_first_step() -> float:
    return tf_stamp()


def main(system_db: str, stamp_file: str) -> int:
    config: DBOSConfig = {"name": "tf-peers-tenant", "system_database_url": f"sqlite:///{system_db}", "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    stamp = DBOS.start_workflow(tf_first_step).get_result()
    Path(stamp_file).write_text(repr(stamp))
    DBOS.destroy(workflow_completion_timeout_sec=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
