"""The admin console at ``/ui``: server-rendered pages over the admin API's own functions (see ``pages``)."""

from __future__ import annotations

from sluicegate.console.pages import allowed, console_router, visible_teams

__all__ = ("allowed", "console_router", "visible_teams")
