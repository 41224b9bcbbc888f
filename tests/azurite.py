"""Azurite (the Azure Storage emulator from npm) for the test session: installed if missing, started
on free loopback ports, stopped after. Each test isolates itself by table-name prefix."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (published in Azurite's README; not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


_START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True)
    return str(local)


class Azurite:
    """``tls=(cert_pem, key_pem)``: HTTPS with OAuth (``--oauth basic``: Azurite checks a bearer
    token's issuer, audience and expiry, not its signature; Azurite's README, "OAuth Configuration"),
    as a storage account with shared keys disabled is reached with a Microsoft Entra token."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.blob_port, self.queue_port, self.table_port = _free_port(), _free_port(), _free_port()
        self._tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def table_service_uri(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.table_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT};"
        )

    def start(self) -> Azurite:
        # The ports were free when picked, but another process (another test worker's Azurite or fake)
        # may bind one before Azurite does; Azurite then exits, and it is started again on new ports.
        for attempt in range(_START_ATTEMPTS):
            if attempt:
                self.blob_port, self.queue_port, self.table_port = _free_port(), _free_port(), _free_port()
            if self._start_once():
                return self
        raise RuntimeError(f"Azurite exited during start-up {_START_ATTEMPTS} times (ports in use?)")

    def _start_once(self) -> bool:
        """Start Azurite and wait until it serves; False when it exited during start-up."""
        self._proc = subprocess.Popen(
            [
                azurite_binary(),
                "--silent",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--blobPort",
                str(self.blob_port),
                "--queuePort",
                str(self.queue_port),
                "--tablePort",
                str(self.table_port),
                *(["--oauth", "basic", "--cert", self._tls[0], "--key", self._tls[1]] if self._tls else []),
            ],
            cwd=tempfile.gettempdir(),  # Azurite writes a debug log and extent files into its cwd
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.table_port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            # Something answers on the table port: Azurite, unless another process holds the port and
            # Azurite is about to exit for it (it binds all three ports before it serves).
            time.sleep(0.2)
            if self._proc.poll() is None:
                return True
        self.stop()
        raise RuntimeError("Azurite did not start within 60 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # Azurite shuts down cleanly on SIGINT, not SIGTERM
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
