"""Putting the /v1 routes on a server: next to the wizard (Gradio's FastAPI app takes them as
routes), or alone for a server box (`serve --api-only`, plain uvicorn).

LORAPILOT_API_KEY, when set, is required as a Bearer token on every /v1 request, on any address;
listening beyond loopback without it is refused (the endpoint runs models and reads adapter
folders named in requests, so it must not be open to a network).
"""

from __future__ import annotations

import logging
import os
import threading

import uvicorn
from fastapi import FastAPI

from engine.errors import UserError
from ui import network
from ui.api.routes import build_router
from ui.api.service import Service


def api_key() -> str | None:
    return os.environ.get("LORAPILOT_API_KEY") or None


def check_exposure(host: str, key: str | None, share: bool = False) -> None:
    if key is None and (share or not network.is_loopback(host)):
        where = "a public share link" if share else f"{host}, which other machines can reach"
        raise UserError(
            "host",
            f"refusing to serve the /v1 API on {where} without a key; set LORAPILOT_API_KEY "
            "(clients then send it as a Bearer token), or keep --host 127.0.0.1",
        )


def routes(service: Service, key: str | None) -> list:
    return list(build_router(service, key).routes)


def build_app(service: Service, key: str | None):
    app = FastAPI(title="LoRA Pilot API", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.routes.extend(routes(service, key))
    return app


def run_api_only(service: Service, host: str, port: int, key: str | None) -> None:
    """Serve /v1 alone until interrupted; the base model loads in the background at once."""

    threading.Thread(target=_warm, args=(service,), name="api-warm-up", daemon=True).start()
    config = uvicorn.Config(build_app(service, key), host=host, port=port, log_level="warning")
    try:
        uvicorn.Server(config).run()
    finally:
        service.stop()


def _warm(service: Service) -> None:
    try:
        service.host()
    except Exception as exc:  # the first request reports the problem to its client
        logging.getLogger("lorapilot.api").warning("loading %s failed: %s", service.base, exc)
