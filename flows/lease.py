"""The lease of a host lock's slot, kept by whoever looks after the server: the run while its
process lives, then its guardian (flows/guardian.py) until the server is back.

Where the server's repossessor runs, a slot whose lease is not renewed within LEASE_SECONDS is
freed. Were a killed run's lease left to lapse, a scheduled run could take the host while the
guardian still restores it. So the guardian renews the lease while it puts the server back and
releases it after: the host stays locked exactly as long as someone works on it.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from uuid import UUID

from prefect.client.orchestration import get_client

LEASE_SECONDS = 60  # the server's shortest lease
RENEW_EVERY_S = LEASE_SECONDS / 4  # three renewals may fail before the lease lapses

logger = logging.getLogger("mender_upgrade.lease")


class LeaseKeeper:
    """Renews a lease in a thread until `end`, which releases it unless it was handed over."""

    def __init__(self, lease_id: UUID, every_s: float = RENEW_EVERY_S) -> None:
        self.lease_id, self.every_s = lease_id, every_s
        self.handed_over = False  # the guardian keeps it now: this process's end must not release it
        self._stop = threading.Event()
        # The thread runs in this context: the API settings may be temporary ones (a local server).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._renew,), name=f"lease-{lease_id}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        warned = False
        while not self._stop.wait(self.every_s):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease_id, LEASE_SECONDS)
                warned = False
            except Exception as exc:  # a restarted server forgot its leases (410): the slot stays taken meanwhile
                if not warned:
                    logger.warning(f"could not renew the host lock's lease {self.lease_id}: {exc}")
                    warned = True

    def end(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if not self.handed_over:
            release_lease(self.lease_id)


def release_lease(lease_id: UUID) -> bool:
    """Free the slot now; on failure it frees itself when the lease lapses (where the repossessor runs)."""
    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id)
        return True
    except Exception as exc:
        logger.warning(f"could not release the host lock's lease {lease_id}: {exc}")
        return False
