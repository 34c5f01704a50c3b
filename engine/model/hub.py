"""Reaching the Hugging Face hub: fail in seconds, with a clear line, when it is out of reach.

Without this, an offline machine waits through huggingface_hub's retries (~30 s of
warnings) before the same error; users with a network see no difference.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from engine.errors import UserError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def reachable(timeout: float = 3.0) -> bool:
    if offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def require(field: str, spec: str, local_hint: str) -> None:
    """Raise a `UserError` when `spec` would need the hub and the hub cannot be reached."""
    if not reachable():
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face hub cannot be reached from this machine"
        raise UserError(field, f"'{spec}' would be downloaded from the hub, but {why}; {local_hint}")
