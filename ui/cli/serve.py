"""`python app.py serve` (or plain `python app.py`): open the wizard in the browser, with the
OpenAI-compatible API under /v1 on the same host and port (`--api-only`: the API alone).

Safe by default: it listens on 127.0.0.1 only. Listening on any other address makes
the app reachable from the network, so it then requires credentials (--auth user:pass
or LORAPILOT_AUTH, for the wizard; LORAPILOT_API_KEY, for /v1) and refuses to start
without them. Uploads are capped in size.
"""

from __future__ import annotations

import os

from engine.errors import UserError
from jobs.dispatcher import kick
from ui import network
from ui.api import app as api
from ui.cli import commands

DEFAULT_UPLOAD_MB = 200


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help=commands.help_for("serve"), description=__doc__.split("\n\n")[1].replace("\n", " ")
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (default 127.0.0.1, this machine only). Any other address needs credentials.",
    )
    p.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860).")
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="Run jobs on a Ray cluster (its dashboard address, e.g. http://head:8265); "
        "the same as LORAPILOT_RAY_ADDRESS.",
    )
    p.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help="Require this sign-in; the environment variable LORAPILOT_AUTH works too "
        "(and keeps the password out of the process list).",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=None,
        help=f"Largest data file a user may upload, in MB (default {DEFAULT_UPLOAD_MB}, or LORAPILOT_MAX_UPLOAD_MB).",
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="Also open a public Gradio share link (needs network access and credentials).",
    )
    p.add_argument(
        "--api-only",
        action="store_true",
        help="Serve only the OpenAI-compatible /v1 API, without the wizard (for a server box).",
    )
    p.add_argument(
        "--model",
        default="default",
        help="Base model the /v1 API serves, with every library adapter trained on it (default: the "
        "embedded SmolLM2-135M-Instruct). Loaded on the first request.",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="Requests the /v1 API holds waiting before it answers 429 (default 64).",
    )
    p.set_defaults(handler=serve)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise UserError("auth", "must look like user:password (both parts non-empty)")
    return user.strip(), password


def check_exposure(host: str, auth, share: bool) -> None:
    """Refuse to expose the app without credentials, saying why in one line."""
    if auth is None and (share or not network.is_loopback(host)):
        where = "a public share link" if share else f"{host}, which other machines can reach"
        raise UserError(
            "host",
            f"refusing to serve on {where} without credentials; add --auth user:password "
            "or set LORAPILOT_AUTH=user:password (or keep the default --host 127.0.0.1)",
        )


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
    key = api.api_key()
    auth = parse_auth(ns.auth or os.environ.get("LORAPILOT_AUTH"))
    if ns.ray is not None:
        if not ns.ray.strip():
            raise UserError("ray", "must be a Ray dashboard address, e.g. http://127.0.0.1:8265")
        os.environ["LORAPILOT_RAY_ADDRESS"] = ns.ray  # the dispatcher and every worker it starts read it
    if not ns.api_only:
        check_exposure(ns.host, auth, ns.share)
    api.check_exposure(ns.host, key, share=ns.share and not ns.api_only)
    if not 0 < ns.port < 65536:
        raise UserError("port", f"got {ns.port}; expected 1 to 65535")
    if ns.max_queue < 1:
        raise UserError("max_queue", f"got {ns.max_queue}; expected 1 or more")
    service = api.Service(ns.model, max_queue=ns.max_queue)
    if ns.api_only:
        print(
            f"LoRA Pilot API: http://{network.shown(ns.host)}:{ns.port}/v1 (model {ns.model})"
            + (" (key required)" if key else ""),
            flush=True,
        )
        api.run_api_only(service, ns.host, ns.port, key)
        return 0
    limit = upload_limit_mb(ns.max_upload_mb)
    os.environ["LORAPILOT_MAX_UPLOAD_MB"] = str(limit)  # the upload handler reads the same figure
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    kick()  # jobs whose worker died while no app was open become 'interrupted'; queued ones start
    from ui.web import server  # the wizard is a Gradio app: Gradio loads only when the wizard opens

    print(
        f"LoRA Pilot: http://{network.shown(ns.host)}:{ns.port}" + (" (sign-in required)" if auth else ""), flush=True
    )
    try:
        server.launch(
            host=ns.host,
            port=ns.port,
            auth=auth,
            max_file_size=f"{limit}mb",
            share=ns.share,
            routes=api.routes(service, key),
        )
    except OSError as exc:
        raise UserError(
            "port", f"cannot listen on {ns.host}:{ns.port} ({exc.strerror or exc}); pick another with --port"
        ) from None
    return 0
