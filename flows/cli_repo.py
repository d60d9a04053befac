"""`mender-upgrade plan` and `mender-upgrade repo-update` (placeholder until written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
