"""The sandbox: one command (scripts/sandbox) starts the fake tenant and Azurite and writes a settings
file; the commands it prints run as printed; a send through the CLI shows up in its listing and log; a
second sandbox in the same folder is refused; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import io
import json
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from shared.cli import main
from tests.azurite import ROOT


class Lines:
    """The sandbox's stdout, read line by line in a thread so every wait is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            # The pipe is closed here at EOF (the sandbox exited), whatever the test's outcome: a pipe
            # left open is a ResourceWarning in whichever later test the garbage collector runs.
            with stdout:
                for line in stdout:
                    self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output was:\n{''.join(self.seen)}")


def test_sandbox_serves_a_send_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "sandbox"
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "sandbox"), "--state-dir", str(state)]
        + ["--port", "0", "--blob-port", "0", "--queue-port", "0", "--table-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = Lines(proc)
        lines.wait_for("sandbox ready", timeout=60)
        listing = next(line.split()[1] for line in lines.seen if line.strip().startswith("delivered"))
        settings = state / "local.settings.json"
        values = json.loads(settings.read_text())["Values"]
        table_port = int(values["AzureWebJobsStorage"].split("TableEndpoint=http://127.0.0.1:")[1].split("/")[0])

        out = io.StringIO()
        code = main(
            ["--settings", str(settings), "--json", "send", "--to", "alice@contoso.com", "--text", "Hi!"], stdout=out
        )
        assert code == 0, out.getvalue()
        activity_id = json.loads(out.getvalue())["activityId"]

        assert "delivered to alice@contoso.com: Hi!" in lines.wait_for("delivered to alice@contoso.com")
        with httpx.Client(verify=ssl.create_default_context(cafile=values["SSL_CERT_FILE"])) as client:
            messages = client.get(listing + "messages").json()
            page = client.get(listing).text
        assert [m["id"] for m in messages["alice@contoso.com"]] == [activity_id]
        assert "alice@contoso.com (1)" in page and "Hi!" in page

        # Every command the banner prints for the CLI runs as printed (from the repository folder).
        printed = [line.strip() for line in lines.seen if line.strip().startswith(".venv/bin/python")]
        assert len(printed) == 3, lines.seen
        for command in printed[:2]:
            done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        block = printed[2].split("#")[0]
        assert "block alice@contoso.com" in block
        assert subprocess.run(block, shell=True, cwd=ROOT, capture_output=True, timeout=30).returncode == 0
        blocked = subprocess.run(printed[1], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert blocked.returncode != 0 and "recipient_blocked_bot" in blocked.stdout + blocked.stderr
        unblock = block.replace(" block ", " unblock ")
        assert subprocess.run(unblock, shell=True, cwd=ROOT, capture_output=True, timeout=30).returncode == 0

        # A second sandbox in the same folder is refused and leaves the first intact.
        ca_before = (state / "ca.pem").read_bytes()
        second = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "sandbox.py"), "--state-dir", str(state), "--port", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "another sandbox is running in" in second.stderr and "--state-dir" in second.stderr
        assert (state / "ca.pem").read_bytes() == ca_before
        out = io.StringIO()
        assert main(["--settings", str(settings), "send", "--to", "bob@contoso.com", "--text", "x"], stdout=out) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    lines.wait_for("sandbox stopped", timeout=5)
    assert not (state / "sandbox.json").exists()
    assert proc.returncode == 0
    with socket.socket() as sock:  # Azurite is gone too
        assert sock.connect_ex(("127.0.0.1", table_port)) != 0
