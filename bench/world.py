"""The benchmark world: Azurite and the loopback fake tenant, each in its own process.

The fake runs as ``python -m faketenant`` in a child process so the client process's CPU time
(``time.process_time``) measures only the client. Every contender in one run talks to the same fake
and the same Azurite. A socket audit hook refuses any connection that is not loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.azurite import Azurite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Distinct conversations a sequential warm-send loop rotates over. At ~1 ms per send (up to the 1000/s
# tenant rate), Teams' per-conversation windows, enforced client-side by shared.throttle, need
# >= 1000/7 for 7/1 s, >= 1000/4 for 8/2 s and >= 1000/2 for 60/30 s: with 512 no send ever waits.
WARM_RECIPIENTS = 512


def _loopback_only(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("/"):
            raise RuntimeError(f"bench: refusing a non-loopback connection to {host!r}")


_guard_installed = False


def install_loopback_guard() -> None:
    """No traffic may leave the machine: refuse non-loopback connects in this process."""
    global _guard_installed
    if not _guard_installed:
        sys.addaudithook(_loopback_only)
        _guard_installed = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeProcess:
    """``python -m faketenant`` in a child process, driven through its /_fake control endpoints."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-fake-")
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._control: httpx.Client | None = None

    def start(self) -> FakeProcess:
        settings_path = os.path.join(self._dir.name, "settings.json")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faketenant",
                "--port",
                str(self.port),
                "--state-dir",
                self._dir.name,
                "--users",
                "0",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(settings_path):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake tenant did not start")
            time.sleep(0.05)
        time.sleep(0.05)  # settings.json is written in one go, but let the writer close it
        with open(settings_path, encoding="utf-8") as fh:
            self.info = json.load(fh)
        self._control = httpx.Client(base_url=self.base_url, verify=self.ca_pem, timeout=30)
        return self

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def ca_pem(self) -> str:
        return str(self.info["ca_pem"])

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def control(self, method: str, path: str, body: Any = None) -> Any:
        assert self._control is not None
        response = self._control.request(method, "/_fake/" + path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def add_user(self, upn: str, *, installed: bool) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", "users", {"upn": upn, "installed": installed})
        return result

    def settings(self, **values: Any) -> None:
        self.control("POST", "settings", values)

    def log(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "log")
        return result

    def clear_log(self) -> None:
        self.control("POST", "log/clear")

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._dir.cleanup()


@dataclass
class World:
    fake: FakeProcess
    azurite: Azurite
    env: dict[str, str] = field(default_factory=dict)
    _users: int = 0

    @property
    def tenant_id(self) -> str:
        return str(self.fake.info["tenant_id"])

    @property
    def app_id(self) -> str:
        return str(self.fake.info["app_id"])

    @property
    def secret(self) -> str:
        return str(self.fake.info["client_secret"])

    @property
    def service_url(self) -> str:
        return str(self.fake.info["service_url"])

    def new_users(self, prefix: str, count: int, *, installed: bool) -> list[str]:
        """Fresh users in the fake (unique UPNs per call)."""
        upns = []
        for _ in range(count):
            self._users += 1
            upn = f"{prefix}{self._users}@contoso.com"
            self.fake.add_user(upn, installed=installed)
            upns.append(upn)
        return upns

    def fresh_table_prefix(self) -> str:
        prefix = "b" + uuid.uuid4().hex[:16]
        self.env["TableNamePrefix"] = prefix
        os.environ["TableNamePrefix"] = prefix
        return prefix


_MACHINE_ENV: dict[str, str] = {}


def machine_env() -> dict[str, str]:
    """This machine's environment as it was before ``start_world`` pointed it at the fake: what import
    timings run with. The fake's one-certificate CA bundle (SSL_CERT_FILE) would make any package that
    builds a TLS context at import (aiohttp, which botbuilder imports, does) look cheaper than with the
    system's CAs, which a real host has (144 certificates here)."""
    return dict(_MACHINE_ENV or os.environ)


def start_world() -> World:
    """Start Azurite and the fake; point this process's environment (app settings, CA) at them."""
    install_loopback_guard()
    if not _MACHINE_ENV:
        _MACHINE_ENV.update(os.environ)
    azurite = Azurite().start()
    fake = FakeProcess()
    try:
        fake.start()
    except BaseException:
        azurite.stop()
        raise
    info = fake.info
    env = {
        "MicrosoftAppId": info["app_id"],
        "MicrosoftAppPassword": info["client_secret"],
        "MicrosoftAppTenantId": info["tenant_id"],
        "MicrosoftAppType": "SingleTenant",
        "TeamsAppId": info["teams_app_id"],
        "ServiceUrl": info["service_url"],
        "AuthorityHost": info["base_url"],
        "GraphEndpoint": info["base_url"],
        "AzureWebJobsStorage": azurite.connection_string,
        "TableNamePrefix": "bench" + uuid.uuid4().hex[:12],
        "ServiceBusQueueName": "notifications",
        "ServiceBusConnection": "Endpoint=sb://localhost/;SharedAccessKeyName=bench;SharedAccessKey=bench",
        "RetryMaxAttempts": "6",
        "RetryMaxDelaySeconds": "10",
        # Per-send cost rows (1-3, 6) run with the fake's rate limits off and shared.throttle's
        # per-tenant rates at the highest allowed value (1000/s, above what a sequential loop of ~1 ms
        # sends reaches), so pacing never waits and only its CPU is measured. Throttle still spaces
        # sends per conversation (Teams' 7/1 s, 8/2 s, 60/30 s), so those loops rotate over
        # WARM_RECIPIENTS conversations. Row 5 sets deployed-like values and turns the fake's limits on.
        "TenantSendRatePerSecond": "1000",
        "TenantGraphRatePerSecond": "1000",
        "MaxConcurrentSends": "8",
        "BotOpenIdMetadata": info["base_url"] + "/botframework/v1/.well-known/openidconfiguration",
    }
    os.environ.update(env)
    # Every HTTP stack in this process trusts the fake's CA: httpx and aiohttp (SSL_CERT_FILE), and
    # requests/msrest (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE override Session.verify).
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ[name] = fake.ca_pem
    return World(fake=fake, azurite=azurite, env=env)


def stop_world(world: World) -> None:
    world.fake.stop()
    world.azurite.stop()
