"""Last in the fault matrix: no secret in anything the fault runs recorded or printed."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from mender_upgrade.sandbox.integration_fixture import OPERATOR_MINIO_SECRET_KEY
from tests.faults.conftest import SEEN_TEXT
from tests.flowrun import everything_recorded

pytestmark = pytest.mark.sandbox


def test_no_secret_in_any_log_artifact_message_or_parameter_of_the_fault_runs(prefect_api, sandbox):
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upgrade-mender"])))
    assert len(runs) >= 10, "the fault cases' runs are missing: run the whole tests/faults folder"
    texts, lines = list(SEEN_TEXT), 0
    for run in runs:
        count, text = everything_recorded(str(run.id))
        lines += count
        texts.append(text)
    everything = "\n".join(texts)
    assert lines > 100 and "**********" in everything  # secrets were there to leak, masked
    for secret in (sandbox.s3.secret_key, OPERATOR_MINIO_SECRET_KEY):
        assert secret not in everything
