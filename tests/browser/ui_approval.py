"""Answer an approval gate the way a person does: headless Chromium on the Prefect UI's flow-run page."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Response, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download is not reachable here
# Nothing may leave the machine: no QUIC, no background/component/sync traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # the UI's first load compiles a large JS bundle; 2 cores


class UiError(RuntimeError):
    """An element of the approval flow was missing or the UI refused the answer."""


def approve_in_browser(ui_url: str, flow_run_id: str, approver: str, comment: str,
                       screenshot: Path | None = None, auth_string: str | None = None) -> None:
    """Open the run's page, press Resume, approve with `comment` and `approver`, Submit, and wait for
    the dialog to close. `screenshot` gets the filled form; on failure `<stem>-failure.png` (or a temp
    file) gets the page and its path is in the error."""
    if not Path(CHROMIUM).exists():
        raise UiError(f"{CHROMIUM} not found: run `apt-get install -y chromium` (or `scripts/dev.sh test`)")
    url = f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                        headless=True, viewport={"width": 1400, "height": 1000})
        if auth_string:  # what the UI's login page stores once the person typed the auth string
            context.add_init_script(f"localStorage.setItem('prefect-password', btoa({json.dumps(auth_string)}))")
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        step = "open the run page"
        try:
            page.goto(url)
            step = "press Resume (is the run Paused?)"
            page.get_by_role("button", name="Resume", exact=True).click()
            step = "find the 'Resume Flow Run' dialog"
            dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
            expect(dialog).to_be_visible()
            step = "switch the Approve toggle on"
            toggle = _field(dialog, "Approve").get_by_role("switch")
            if toggle.get_attribute("aria-checked") != "true":
                toggle.click()
            expect(toggle).to_have_attribute("aria-checked", "true")
            step = "fill the Comment field"
            _field(dialog, "Comment").get_by_role("textbox").fill(comment)
            step = "fill the Approver field"
            _field(dialog, "Approver").get_by_role("textbox").fill(approver)
            if screenshot:
                page.screenshot(path=str(screenshot))
            step = "press Submit"
            # The verdict is the UI's POST .../resume (toasts vanish after 5 s, the dialog may linger).
            with page.expect_response(lambda r: r.request.method == "POST"
                                      and r.url.endswith(f"/flow_runs/{flow_run_id}/resume")) as answer:
                dialog.get_by_role("button", name="Submit", exact=True).click()
            step = "get the answer accepted"
            _check_accepted(answer.value)
            step = "wait for the dialog to close"
            expect(dialog).to_be_hidden()
        except (PlaywrightError, AssertionError, UiError) as exc:  # expect() raises AssertionError
            shot = _failure_shot(page, screenshot)
            raise UiError(f"could not {step} on {url}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
                          f"{_toasts(page)}; screenshot: {shot}") from exc
        finally:
            context.close()


def _field(dialog: Locator, title: str) -> Locator:
    """The form field titled `title`: the nearest ancestor of its <label> that also holds the control.
    The label's `for` does not point at the control, so get_by_label cannot be used."""
    label = dialog.locator("label", has_text=re.compile(rf"^\s*{re.escape(title)}\b"))
    return label.locator("xpath=ancestor::*[.//textarea or .//input or .//*[@role='switch']][1]")


def _check_accepted(response: Response) -> None:
    """Raise unless the server took the answer: HTTP 2xx and orchestration status ACCEPT."""
    try:
        body = response.json()
    except (PlaywrightError, ValueError):
        body = response.text()
    if response.ok and isinstance(body, dict) and body.get("status") == "ACCEPT":
        return
    reason = ((body.get("details") or {}).get("reason") or body) if isinstance(body, dict) else body
    raise UiError(f"server refused the answer: HTTP {response.status}: {reason}")


def _toasts(page: Page) -> str:
    """The UI reports a refused answer (e.g. schema validation) in a toast (an aria-live region)."""
    try:
        blocks = page.locator("[aria-live]").all_inner_texts()
    except PlaywrightError:
        return ""
    # Each toast's close button carries a screen-reader-only "Close".
    texts = [line.strip() for b in blocks for line in b.splitlines() if line.strip() not in ("", "Close")]
    return f"; UI says: {' | '.join(dict.fromkeys(texts))}" if texts else ""


def _failure_shot(page: Page, screenshot: Path | None) -> Path | str:
    path = (screenshot.with_name(f"{screenshot.stem}-failure.png") if screenshot
            else Path(tempfile.mkstemp(prefix="ui-approval-failure-", suffix=".png")[1]))
    try:
        page.screenshot(path=str(path))
    except PlaywrightError as exc:
        return f"(none: {exc.__class__.__name__})"
    return path
