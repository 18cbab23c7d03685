"""The HTTP API door (issue 15): ``create_app`` builds the FastAPI app that ``invites api`` serves."""

from __future__ import annotations

from engine.api.app import create_app

__all__ = ["create_app"]
