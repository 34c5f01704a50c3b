"""`python app.py serve` (or plain `python app.py`): open the wizard in the browser.

Safe by default: it listens on 127.0.0.1 only. Listening on any other address makes
the app reachable from the network, so it then requires credentials (--auth user:pass
or LORAPILOT_AUTH) and refuses to start without them. Uploads are capped in size.
"""

from __future__ import annotations

import ipaddress
import os

from engine.errors import UserError

DEFAULT_UPLOAD_MB = 200


def register(sub) -> None:
    p = sub.add_parser("serve", help="Open the wizard in the browser (http://127.0.0.1:7860 by default).",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on (default 127.0.0.1, this machine only). Any other address "
                   "needs credentials.")
    p.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860).")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="Run jobs on a Ray cluster (its dashboard address, e.g. http://head:8265); "
                        "the same as LORAPILOT_RAY_ADDRESS.")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help="Require this sign-in; the environment variable LORAPILOT_AUTH works too "
                   "(and keeps the password out of the process list).")
    p.add_argument("--max-upload-mb", type=int, default=None,
                   help=f"Largest data file a user may upload, in MB (default {DEFAULT_UPLOAD_MB}, "
                   "or LORAPILOT_MAX_UPLOAD_MB).")
    p.add_argument("--share", action="store_true",
                   help="Also open a public Gradio share link (needs network access and credentials).")
    p.set_defaults(handler=serve)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise UserError("auth", "must look like user:password (both parts non-empty)")
    return user.strip(), password


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere: treat as exposed


def check_exposure(host: str, auth, share: bool) -> None:
    """Refuse to expose the app without credentials, saying why in one line."""
    if auth is None and (share or not is_loopback(host)):
        where = "a public share link" if share else f"{host}, which other machines can reach"
        raise UserError("host", f"refusing to serve on {where} without credentials; add --auth user:password "
                        "or set LORAPILOT_AUTH=user:password (or keep the default --host 127.0.0.1)")


def upload_limit_mb(flag: int | None) -> int:
    value = flag if flag is not None else os.environ.get("LORAPILOT_MAX_UPLOAD_MB", DEFAULT_UPLOAD_MB)
    try:
        mb = int(value)
    except ValueError:
        raise UserError("max_upload_mb", f"got {value!r}; expected a whole number of MB") from None
    if mb <= 0:
        raise UserError("max_upload_mb", "must be 1 MB or more")
    return mb


def serve(ns) -> int:
    auth = parse_auth(ns.auth or os.environ.get("LORAPILOT_AUTH"))
    if ns.ray is not None:
        if not ns.ray.strip():
            raise UserError("ray", "must be a Ray dashboard address, e.g. http://127.0.0.1:8265")
        os.environ["LORAPILOT_RAY_ADDRESS"] = ns.ray  # the dispatcher and every worker it starts read it
    check_exposure(ns.host, auth, ns.share)
    limit = upload_limit_mb(ns.max_upload_mb)
    os.environ["LORAPILOT_MAX_UPLOAD_MB"] = str(limit)  # the upload handler reads the same figure
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not 0 < ns.port < 65536:
        raise UserError("port", f"got {ns.port}; expected 1 to 65535")
    try:  # jobs whose worker died while no app was open become 'interrupted'; queued ones start
        from jobs.dispatcher import kick

        kick()
    except ImportError:
        pass
    from ui.web import server

    shown = f"[{ns.host}]" if ":" in ns.host else ns.host
    print(f"LoRA Pilot: http://{shown}:{ns.port}" + (" (sign-in required)" if auth else ""), flush=True)
    try:
        server.launch(host=ns.host, port=ns.port, auth=auth, max_file_size=f"{limit}mb", share=ns.share)
    except OSError as exc:
        raise UserError("port", f"cannot listen on {ns.host}:{ns.port} ({exc.strerror or exc}); "
                        "pick another with --port") from None
    return 0
