"""``atml dashboard``: serve the dashboard with uvicorn.

Light on purpose: FastAPI and uvicorn are imported inside the handler, so ``atml --help``
and the other commands do not pay for them.
"""

from __future__ import annotations

import argparse
import sys

from atml.cli.common import Command, add_storage_arg, env

__all__ = ["DASHBOARD"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _arguments(p: argparse.ArgumentParser) -> None:
    add_storage_arg(p)
    p.add_argument("--host", default=env("DASHBOARD_HOST", "127.0.0.1"),
                   help="interface to bind (default %(default)s: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=int(env("DASHBOARD_PORT", "8080")),
                   help="port (default %(default)s)")
    p.add_argument("--token", default=None,
                   help="enable the writing endpoints (notes, stop, enqueue, clear avoid list) for requests with "
                        "'Authorization: Bearer TOKEN' (default: env ATML_DASHBOARD_TOKEN; none = read-only)")
    p.add_argument("--artifacts", default=env("ARTIFACTS"),
                   help="artifact folder with <study>/gate and <study>/trials (default: beside the SQLite file, "
                        "else ./studies)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default %(default)s)")


def _dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from atml.dashboard import create_app

    token = args.token if args.token is not None else (env("DASHBOARD_TOKEN") or None)
    # Bound to this machine only: also refuse other Host names, so a web page cannot reach
    # the dashboard by pointing its own domain at 127.0.0.1 (DNS rebinding).
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if args.host in LOOPBACK else None
    app = create_app(args.storage, artifacts=args.artifacts, token=token, allowed_hosts=hosts)
    ctx = app.state.ctx
    mode = "read-only" if ctx.read_only else "writes need the token"
    print(f"atml dashboard on http://{args.host}:{args.port}/  ({mode}; artifacts: {ctx.artifacts or 'none'})",
          file=sys.stderr)
    if args.host not in LOOPBACK and not ctx.read_only:
        print("atml: note: the token travels in clear text over plain HTTP; put TLS in front for remote use",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


DASHBOARD = Command("dashboard", "serve the web dashboard over a study storage", _arguments, _dashboard,
                    description="Web dashboard: studies, trials, charts, gate folders, avoid list. "
                                "Read-only unless a token is given.")
