"""Webhook notifications: upgrade runs paused for approval, failed, crashed or rolled back;
restore drills failed or crashed.

One Prefect automation (server side, so it also covers runs started by workers) calls one
Webhook block. Both are created or updated by name, so applying them again is harmless.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.webhook import Webhook
from prefect.events import emit_event
from prefect.events.actions import CallWebhook
from prefect.events.schemas.automations import EventTrigger, Posture
from pydantic import SecretStr

from mender_upgrade.tasks.run_record import FLOW_NAME

WEBHOOK_URL_ENV = "MENDER_UPGRADE_WEBHOOK_URL"
WEBHOOK_BLOCK_NAME = "mender-upgrade-notifications"
AUTOMATION_NAME = "mender-upgrade-notifications"
ROLLED_BACK_EVENT = "mender-upgrade.rolled-back"
DRILL_FLOW_NAME = "restore-drill"  # flows/drill.py (not imported: it would load docker for this module)
# Crashed: the run's process died (killed, OOM, host reboot) - as much a failure as Failed. Restore
# drills never pause nor roll back, so the same events select their failures and crashes.
NOTIFIED_EVENTS = frozenset({"prefect.flow-run.Paused", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                             ROLLED_BACK_EVENT})
NOTIFIED_FLOWS = [FLOW_NAME, DRILL_FLOW_NAME]

# Rendered by the server when the action runs. `text` makes it readable by Slack/Teams/Mattermost
# incoming webhooks as is; the other fields are for machines. `tojson` quotes whatever a state
# message holds. The state is the event's own (a late action must not report the next state).
# `ui_url` needs PREFECT_UI_URL set for the *server* process, else it renders null.
PAYLOAD_TEMPLATE = """\
{%- set state = event.resource.get("prefect.state-name") or flow_run.state.name -%}
{%- set link = flow_run|ui_url -%}
{
  "text": {{ ("Mender upgrade run " ~ flow_run.name ~ ": " ~ event.event ~ " (" ~ state ~ ") " ~ (link or ""))|tojson }},
  "event": {{ event.event|tojson }},
  "flow": {{ flow.name|tojson }},
  "flow_run_name": {{ flow_run.name|tojson }},
  "flow_run_id": "{{ flow_run.id }}",
  "state": {{ state|tojson }},
  "state_message": {{ flow_run.state.message|tojson }},
  "reason": {{ event.payload.get("reason")|tojson }},
  "ui_url": {{ link|tojson }}
}"""


def redacted(url: str) -> str:
    """Scheme and host only: webhook paths and queries often carry the token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…" if parts.scheme and parts.hostname else "<webhook url>"


def check_webhook_url(url: str) -> None:
    """ValueError (without the secret part) unless `url` is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http(s)://host/…, got {redacted(url)}")


def save_webhook_block(url: str) -> UUID:
    """The Webhook block holding `url` (a secret field: masked in the UI and API reads)."""
    check_webhook_url(url)
    return Webhook(method="POST", url=SecretStr(url)).save(WEBHOOK_BLOCK_NAME, overwrite=True)


def upgrade_alerts_automation(webhook_block_id: UUID) -> Automation:
    """Every Paused, Failed, Crashed and rolled-back event of an upgrade run, and every Failed and
    Crashed restore drill, calls the webhook."""
    return Automation(
        name=AUTOMATION_NAME,
        description=f"POST to the webhook block '{WEBHOOK_BLOCK_NAME}' when an {FLOW_NAME} run waits "
                    f"for approval, fails, crashes or is rolled back, or a {DRILL_FLOW_NAME} run fails or "
                    "crashes (managed by `mender-upgrade notifications`)",
        trigger=EventTrigger(
            posture=Posture.Reactive,
            expect=set(NOTIFIED_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # State events carry the flow as a related resource with role "flow" and its name;
            # emit_rolled_back gets the same from the run context it is called in.
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": NOTIFIED_FLOWS},
            for_each={"prefect.resource.id"},  # one counter per run: every event notifies
            threshold=1,
            within=0,
        ),
        actions=[CallWebhook(block_document_id=webhook_block_id, payload=PAYLOAD_TEMPLATE)],
    )


def apply_notifications(webhook_url: str) -> UUID:
    """Create or update (by name) the webhook block and the automation; returns the automation's id."""
    wanted = upgrade_alerts_automation(save_webhook_block(webhook_url))
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # Automation.read's "not found"
        return wanted.create().id
    wanted.id = existing.id
    wanted.update()
    return existing.id


def emit_rolled_back(run_id: str, reason: str) -> None:
    """Tell the automation that run `run_id` was rolled back. Call it inside that flow run: the
    events worker adds the run's flow (name upgrade-mender) as a related resource from the run
    context, which is what the automation's match_related selects on."""
    emit_event(event=ROLLED_BACK_EVENT, resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
               payload={"reason": reason})
