"""Microsoft 365 Agents Playground (npm ``@microsoft/m365agentsplayground``, pinned in package.json): the
local Teams emulator, as a Bot Connector for the sandbox and the tests.

It serves the Bot Connector API over plain http at ``http://127.0.0.1:PORT/_connector/`` and a Teams-like
page at ``/`` that renders messages and Adaptive Cards. ``GET /_internal/v1/config`` gives its tenant, bot,
users and personal chat id; the page follows the conversation on the websocket
``/_ws_conversation/v1/conversations/stream`` (``createMessage`` / ``updateMessage`` actions; what is sent
while no page is connected is buffered for the first one that connects).
Source: the package's CLI (``cli.js --help``) and its server (``dist/index.js``); Microsoft Learn,
https://learn.microsoft.com/en-us/microsoft-365/agents-sdk/test-with-toolkit-project.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "node_modules" / "@microsoft" / "m365agentsplayground" / "cli.js"
STREAM_PATH = "/_ws_conversation/v1/conversations/stream"


class PlaygroundError(RuntimeError):
    """The Playground is not installed, its port is taken, or it did not start."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Playground:
    """The Playground as a child process in its own process group (it writes ``devTools/`` into
    ``workdir``); ``port=0`` picks a free port."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        self.workdir = workdir
        self.port = port or _free_port()
        self.log_path = workdir / "playground.log"
        self.config: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The page a person opens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_url(self) -> str:
        """Its Bot Connector (the app's ServiceUrl)."""
        return f"{self.url}/_connector/"

    @property
    def personal_chat_id(self) -> str:
        """The conversation id of the bot's personal chat with the Playground's user."""
        return str(self.config["config"]["personalChat"]["id"])

    @property
    def user(self) -> dict[str, Any]:
        """The Playground's signed-in user (``id`` "user-id-0", ``name``, ``aadObjectId``, ...)."""
        user: dict[str, Any] = self.config["config"]["currentUser"]
        return user

    def start(self, timeout: float = 90) -> Self:
        if not CLI.exists():
            raise PlaygroundError(f"the Agents Playground is not installed ({CLI}): run scripts/setup (npm ci)")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                # It would silently move to a random port: refuse instead.
                raise PlaygroundError(f"port {self.port} is in use: pick another with --playground-port")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TEAMSAPPTESTER_BROWSER": "none"}  # do not try to open a browser
        with open(self.log_path, "wb") as log:  # the child keeps its own handle
            self._proc = subprocess.Popen(
                ["node", str(CLI), "-p", str(self.port), "-c", "msteams", "--disable-telemetry"],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PlaygroundError(f"the Agents Playground exited during start-up; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/_internal/v1/config", timeout=40) as response:
                    self.config = json.loads(response.read())
                    return self
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.25)
        self.stop()
        raise PlaygroundError(f"the Agents Playground did not answer within {timeout:.0f} s; see {self.log_path}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
