"""Serves one deployment of a tiny flow that pauses for approval, through `mender-upgrade serve`'s
code path (mender_upgrade.deployments.serving); run as a subprocess by tests/test_serve_shutdown.py.

    python tests/serve_shutdown_app.py DEPLOYMENT_NAME [--plain-prefect-serve]
"""

from __future__ import annotations

import sys

from prefect import flow, serve
from prefect.flow_runs import pause_flow_run

from mender_upgrade.deployments.serving import serve_keeping_paused_runs

FLOW_NAME = "serve-shutdown-probe"


@flow(name=FLOW_NAME)
def waits_for_approval(timeout_s: int = 120) -> str:
    pause_flow_run(timeout=timeout_s, poll_interval=1, key="approval")
    return "approved"


if __name__ == "__main__":
    deployment = waits_for_approval.to_deployment(name=sys.argv[1])
    if "--plain-prefect-serve" in sys.argv:  # Prefect's own serve, to compare against
        serve(deployment)
    else:
        serve_keeping_paused_runs([deployment])
