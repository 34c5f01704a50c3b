"""Who can reach an address the app listens on: the one answer both the wizard (`serve`) and
the /v1 API (ui.api.app) use before they refuse to open to a network without credentials."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere: treat as exposed


def shown(host: str) -> str:
    """The host as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
