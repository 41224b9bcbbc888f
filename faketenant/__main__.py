"""Run a fake tenant standalone (a local sandbox or a benchmark target), or drive a running sandbox.

    python -m faketenant --port 8443 --state-dir DIR [--users 3] [--installed]

Prints the base URL and the CA path, writes ``DIR/ca.pem`` and ``DIR/settings.json``, logs one
line per delivered activity and serves until SIGINT/SIGTERM.

    python -m faketenant [--state-dir .sandbox] COMMAND [USER]

Drives the sandbox running in that folder (``./scripts/sandbox``; its URL and CA are in
``.sandbox/sandbox.json``) through its /_fake control endpoints:
  block USER / unblock USER     the user blocked the bot (sends: 403 ConversationBlockedByUser)
  uninstall USER / install USER the user removed the app (the next send reinstalls it)
  disable-bot / enable-bot      the tenant admin blocked the app (403 BotDisabledByAdmin)
  users | faults | clear-faults | settings | messages   show (or clear) the fake's state
USER is a UPN or an Entra object id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from .server import FakeTenantServer
from .state import FakeTenant

DEMO_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


DEFAULT_STATE = Path(__file__).resolve().parent.parent / ".sandbox"
#: command -> (method, path template, takes a USER)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "block": ("POST", "/_fake/users/{user}/block", True),
    "unblock": ("POST", "/_fake/users/{user}/unblock", True),
    "uninstall": ("POST", "/_fake/users/{user}/uninstall", True),
    "install": ("POST", "/_fake/users/{user}/install", True),
    "disable-bot": ("POST", "/_fake/bot/disable", False),
    "enable-bot": ("POST", "/_fake/bot/enable", False),
    "users": ("GET", "/_fake/users", False),
    "faults": ("GET", "/_fake/faults", False),
    "clear-faults": ("DELETE", "/_fake/faults", False),
    "settings": ("GET", "/_fake/settings", False),
    "messages": ("GET", "/_fake/messages", False),
}


def control(argv: list[str]) -> int:
    """``python -m faketenant [--state-dir DIR] COMMAND [USER]`` against the running sandbox."""
    parser = argparse.ArgumentParser(prog="python -m faketenant", description=__doc__)
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE), help="the sandbox's folder (default .sandbox)")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("user", nargs="?", help="UPN or object id (block, unblock, uninstall, install)")
    args = parser.parse_args(argv)
    method, template, needs_user = COMMANDS[args.command]
    if needs_user != bool(args.user):
        parser.error(f"{args.command} {'needs a USER' if needs_user else 'takes no USER'}")
    running = Path(args.state_dir) / "sandbox.json"
    try:
        info: dict[str, Any] = json.loads(running.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sys.stderr.write(f"no sandbox is running in {args.state_dir} (no {running}): start ./scripts/sandbox\n")
        return 2
    path = template.format(user=urllib.parse.quote(args.user or "", safe="@"))
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(info["base_url"] + path, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=info["ca_pem"])
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        sys.stderr.write(f"{args.command}: {err.code} {err.read().decode('utf-8', 'replace')}\n")
        return 1
    except OSError as err:
        sys.stderr.write(f"the sandbox at {info['base_url']} does not answer ({err}): is it still running?\n")
        return 2
    sys.stdout.write((json.dumps(json.loads(text), indent=2) if text else "ok") + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in COMMANDS for arg in argv):
        return control(argv)
    parser = argparse.ArgumentParser(
        prog="python -m faketenant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--state-dir", required=True, help="where ca.pem and settings.json are written")
    parser.add_argument("--users", type=int, default=3, help="number of demo users (alice@contoso.com, ...)")
    parser.add_argument("--installed", action="store_true", help="pre-install the app for the demo users")
    parser.add_argument("--tenant-id", default=None)
    parser.add_argument("--app-id", default=None)
    parser.add_argument("--teams-app-id", default=None)
    parser.add_argument("--client-secret", default=None)
    parser.add_argument("--rate-limits", action="store_true")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    tenant = FakeTenant(
        tenant_id=args.tenant_id or str(uuid.uuid4()),
        app_id=args.app_id or str(uuid.uuid4()),
        teams_app_id=args.teams_app_id or str(uuid.uuid4()),
        client_secret=args.client_secret or ("fake-" + uuid.uuid4().hex),
    )
    tenant.rate_limits = args.rate_limits
    for i in range(args.users):
        name = DEMO_NAMES[i] if i < len(DEMO_NAMES) else f"user{i + 1}"
        tenant.add_user(f"{name}@contoso.com", display_name=name.title(), installed=args.installed)

    server = FakeTenantServer(tenant, host=args.host, port=args.port, state_dir=args.state_dir)
    server.start()
    settings = {
        "tenant_id": tenant.tenant_id,
        "app_id": tenant.app_id,
        "teams_app_id": tenant.teams_app_id,
        "client_secret": tenant.client_secret,
        "base_url": server.base_url,
        "service_url": server.service_url,
        "ca_pem": server.ca_pem_path,
        "identity_header": tenant.identity_header,
        "managed_identity_client_id": tenant.managed_identity_client_id,
        "users": [u.upn for u in tenant.users],
    }
    path = os.path.join(args.state_dir, "settings.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=2)
    sys.stdout.write(f"base_url={server.base_url}\nca_pem={server.ca_pem_path}\nsettings={path}\n")
    sys.stdout.flush()

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    logging.getLogger("faketenant").info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
