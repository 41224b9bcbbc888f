"""Run a fake tenant standalone (a local sandbox or a benchmark target).

    python -m faketenant --port 8443 --state-dir DIR [--users 3] [--installed]

Prints the base URL and the CA path, writes ``DIR/ca.pem`` and ``DIR/settings.json``, logs one
line per delivered activity and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import uuid
from types import FrameType

from .server import FakeTenantServer
from .state import FakeTenant

DEMO_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
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
