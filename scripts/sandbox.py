#!/usr/bin/env python3
"""Try the app with no tenant: a local sandbox of a fake Microsoft 365 tenant plus Azurite.

    ./scripts/sandbox [--playground] [--state-dir .sandbox] [--port 8443]
    (the wrapper installs what is missing, then runs .venv/bin/python scripts/sandbox.py)

Starts, until Ctrl-C (which stops both cleanly):
- the fake tenant (faketenant: login, Graph, Bot Connector over HTTPS on 127.0.0.1) with demo users
  alice@contoso.com, bob@contoso.com, carol@contoso.com; one log line per delivered message, and the
  delivered messages at https://127.0.0.1:PORT/_fake/ (HTML) and /_fake/messages (JSON);
- Azurite (node_modules/.bin/azurite), the storage emulator, in memory;
and writes STATE/local.settings.json pointing the app at both, with SSL_CERT_FILE and
REQUESTS_CA_BUNDLE set to the fake's CA (STATE/ca.pem). The app ids and the demo users are kept in
STATE/identity.json, so the settings file stays valid across restarts (--fresh makes new ones).

With --playground, Microsoft 365 Agents Playground (npm) is the Bot Connector instead of the fake's: the
fake's Graph answers the Playground's personal chat as every demo user's installation chat, ServiceUrl
points at the Playground, and its page shows what the app sends (text and Adaptive Cards).

One sandbox per state folder: a second one in the same folder is refused (STATE/sandbox.lock), and
STATE/sandbox.json tells ``python -m faketenant`` (block, uninstall, ...) where the running one is.

Then, in another shell:
    .venv/bin/python -m shared.cli --settings .sandbox/local.settings.json send --to alice@contoso.com --text hi
or copy .sandbox/local.settings.json to local.settings.json and run ``func start``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faketenant import FakeTenant, FakeTenantServer  # noqa: E402
from scripts.playground import Playground, PlaygroundError  # noqa: E402

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEMO_USERS = ("alice", "bob", "carol")

log = logging.getLogger("sandbox")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_identity(state: Path, fresh: bool) -> dict[str, Any]:
    """The sandbox's app registration and users, stable across restarts."""
    path = state / "identity.json"
    if path.exists() and not fresh:
        identity: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return identity
    identity = {
        "tenant_id": str(uuid.uuid4()),
        "app_id": str(uuid.uuid4()),
        "teams_app_id": str(uuid.uuid4()),
        "client_secret": "sandbox-" + uuid.uuid4().hex,
        "users": [{"upn": f"{name}@contoso.com", "oid": str(uuid.uuid4())} for name in DEMO_USERS],
    }
    path.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    return identity


def build_tenant(identity: dict[str, Any]) -> FakeTenant:
    tenant = FakeTenant(
        tenant_id=identity["tenant_id"],
        app_id=identity["app_id"],
        teams_app_id=identity["teams_app_id"],
        client_secret=identity["client_secret"],
        app_display_name="Notifier (sandbox)",
    )
    for user in identity["users"]:
        tenant.add_user(user["upn"], oid=user["oid"])
    return tenant


class AzuriteProcess:
    def __init__(self, state: Path, blob_port: int, queue_port: int, table_port: int) -> None:
        self.ports = (blob_port or free_port(), queue_port or free_port(), table_port or free_port())
        self._state = state
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        blob, queue, table = self.ports
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={base}:{blob}/{AZURITE_ACCOUNT};QueueEndpoint={base}:{queue}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={base}:{table}/{AZURITE_ACCOUNT};"
        )

    def start(self) -> None:
        binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise SystemExit("Azurite is not installed: run `npm ci` in the repository first.")
        for port in self.ports:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    raise SystemExit(
                        f"port {port} is in use (another Azurite?): stop it or pick other ports "
                        "with --blob-port/--queue-port/--table-port (0 = any free port)."
                    )
        location = self._state / "azurite"
        location.mkdir(parents=True, exist_ok=True)
        blob, queue, table = self.ports
        logfile = open(self._state / "azurite.log", "wb")  # the child keeps its own handle
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--silent",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--blobPort",
                str(blob),
                "--queuePort",
                str(queue),
                "--tablePort",
                str(table),
            ],
            cwd=location,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches only us, and we stop it in order.
            start_new_session=True,
        )
        logfile.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"Azurite exited during start-up; see {self._state / 'azurite.log'}")
            try:
                with socket.create_connection(("127.0.0.1", table), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("Azurite did not start within 60 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Azurite shuts down cleanly on SIGINT
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class StateLock:
    """One sandbox per state folder: an exclusive lock on STATE/sandbox.lock for the process's life (the
    kernel drops it when the process ends, however it ends), and STATE/sandbox.json telling other tools
    where the running sandbox is."""

    def __init__(self, state: Path) -> None:
        self._state = state
        self._fh: Any = None

    def acquire(self) -> None:
        fh = open(self._state / "sandbox.lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            running = read_running(self._state)
            where = f" (pid {running.get('pid')}, {running.get('base_url')})" if running else ""
            raise SystemExit(
                f"another sandbox is running in {shown(self._state)}{where}: stop it (Ctrl-C in its shell) "
                "or give this one its own folder with --state-dir DIR (and other ports)."
            ) from None
        self._fh = fh

    def publish(self, info: dict[str, Any]) -> None:
        (self._state / "sandbox.json").write_text(json.dumps({"pid": os.getpid(), **info}, indent=2), encoding="utf-8")

    def release(self) -> None:
        if self._fh is None:
            return
        (self._state / "sandbox.json").unlink(missing_ok=True)
        self._fh.close()
        self._fh = None


def read_running(state: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((state / "sandbox.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info


def write_settings(
    state: Path, identity: dict[str, Any], server: FakeTenantServer, storage: str, service_url: str
) -> Path:
    ca = str(Path(server.ca_pem_path).resolve())
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsFeatureFlags": "EnableWorkerIndexing",
        "AzureWebJobsStorage": storage,
        "TableNamePrefix": "sandbox",
        "MicrosoftAppId": identity["app_id"],
        "MicrosoftAppPassword": identity["client_secret"],
        "MicrosoftAppTenantId": identity["tenant_id"],
        "MicrosoftAppType": "SingleTenant",
        "TeamsAppId": identity["teams_app_id"],
        "ServiceUrl": service_url,
        "AuthorityHost": server.base_url,
        "GraphEndpoint": server.base_url,
        "BotOpenIdMetadata": server.base_url + "/botframework/v1/.well-known/openidconfiguration",
        # The sandbox has no Service Bus: the queue trigger stays off under `func start`.
        "ServiceBusConnection": "Endpoint=sb://sandbox.invalid/;SharedAccessKeyName=none;SharedAccessKey=none",
        "ServiceBusQueueName": "notifications",
        "AzureWebJobs.notify_queue.Disabled": "true",
        # The fake's private CA: httpx reads SSL_CERT_FILE, requests REQUESTS_CA_BUNDLE.
        "SSL_CERT_FILE": ca,
        "REQUESTS_CA_BUNDLE": ca,
    }
    path = state / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2) + "\n", encoding="utf-8")
    return path


def shown(path: str | Path) -> str:
    """Relative to the current directory when under it, else absolute."""
    rel = os.path.relpath(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel


def banner(
    server: FakeTenantServer,
    azurite: AzuriteProcess,
    settings: Path,
    users: list[str],
    playground: Playground | None,
) -> str:
    rel = shown(settings)
    ca = shown(server.ca_pem_path)
    ca_abs = Path(server.ca_pem_path).resolve()
    cli = f".venv/bin/python -m shared.cli --settings {rel}"
    state = Path(settings).parent
    fake = ".venv/bin/python -m faketenant" + ("" if state == ROOT / ".sandbox" else f" --state-dir {shown(state)}")
    if playground is None:
        connector = f"  delivered       {server.base_url}/_fake/   (JSON: {server.base_url}/_fake/messages)"
    else:
        name = playground.user.get("name", "its user")
        connector = (
            f"  Teams client    {playground.url}   (Microsoft 365 Agents Playground: open it in a browser and\n"
            f"                  send once it shows {name}; every demo user's 1:1 chat is its personal chat)"
        )
    return f"""
Sandbox tenant is running (Ctrl-C stops it and everything it started).
  fake tenant     {server.base_url}   (login, Graph{"" if playground else ", Bot Connector"}; CA: {ca})
{connector}
  Azurite         tables on 127.0.0.1:{azurite.ports[2]} (in memory)
  demo users      {", ".join(users)}
  settings        {rel}

Try it (another shell, in this folder):
  {cli} doctor --recipient {users[0]}
  {cli} send --to {users[0]} --text "Hello from the sandbox"
  {fake} block {users[0]}   # send again: a clear error; unblock undoes it

Run the function host against it (where Azure Functions Core Tools is installed):
  cp {rel} local.settings.json && func start

Other tools that call the fake need its CA: export SSL_CERT_FILE={ca_abs} REQUESTS_CA_BUNDLE={ca_abs}
sandbox ready
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/sandbox.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", default=str(ROOT / ".sandbox"), help="default .sandbox/ in the repository")
    parser.add_argument("--port", type=int, default=8443, help="fake tenant HTTPS port (0 = any free port)")
    parser.add_argument("--blob-port", type=int, default=10000, help="Azurite ports (0 = any free port)")
    parser.add_argument("--queue-port", type=int, default=10001)
    parser.add_argument("--table-port", type=int, default=10002)
    parser.add_argument("--fresh", action="store_true", help="new app ids and users (rewrites identity.json)")
    parser.add_argument(
        "--playground", action="store_true", help="Microsoft 365 Agents Playground as the Bot Connector (a web page)"
    )
    parser.add_argument("--playground-port", type=int, default=56150, help="its port (0 = any free port)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    # One line per delivered activity: "... faketenant.activity delivered to alice@contoso.com: Hello".
    logging.getLogger("faketenant.activity").setLevel(logging.INFO)

    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    lock = StateLock(state)
    lock.acquire()  # before anything in the folder is written (ca.pem, identity.json, settings)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    identity = load_identity(state, args.fresh)
    tenant = build_tenant(identity)
    azurite = AzuriteProcess(state, args.blob_port, args.queue_port, args.table_port)
    server = FakeTenantServer(tenant, port=args.port, state_dir=state)
    playground = Playground(state / "playground", args.playground_port) if args.playground else None
    try:
        try:
            server.start()
        except OSError as err:
            message = f"cannot serve the fake tenant on port {args.port} ({err.strerror}); try --port 0"
            raise SystemExit(message) from err
        azurite.start()
        service_url = server.service_url
        if playground is not None:
            sys.stdout.write("starting Microsoft 365 Agents Playground (about 15 s)...\n")
            sys.stdout.flush()
            try:
                playground.start()
            except PlaygroundError as err:
                raise SystemExit(str(err)) from err
            for user in tenant.users:
                tenant.use_external_chat(user, playground.personal_chat_id)
            service_url = playground.service_url
        settings = write_settings(state, identity, server, azurite.connection_string, service_url)
        lock.publish(
            {
                "base_url": server.base_url,
                "ca_pem": str(Path(server.ca_pem_path).resolve()),
                "settings": str(settings),
                "playground": playground.url if playground else None,
            }
        )
        users = [u["upn"] for u in identity["users"]]
        sys.stdout.write(banner(server, azurite, settings, users, playground))
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not azurite.alive():
                log.error("Azurite exited unexpectedly; see %s", state / "azurite.log")
                return 1
            if playground is not None and not playground.alive():
                log.error("the Agents Playground exited unexpectedly; see %s", playground.log_path)
                return 1
    finally:
        if playground is not None:
            playground.stop()
        azurite.stop()
        server.stop()
        lock.release()
    sys.stdout.write("sandbox stopped\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
