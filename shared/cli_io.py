"""What every command of the operator's command line shares: where the settings come from, the
output (human lines or one JSON document; for people also progress, waits for a rate limit, and what
to do about an error), the usage error, the card file, and the services built for one command.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.errors import NotifyError

DEFAULT_SETTINGS_FILE = "local.settings.json"
# Process-level variables a settings file may carry that are not app settings: applied to the
# environment while the command runs, as the function host applies every value.
_PROCESS_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class UsageError(Exception):
    """Wrong arguments or an unreadable input file (exit code 2)."""


@dataclass(frozen=True)
class SettingsSource:
    values: Mapping[str, str]
    description: str

    @classmethod
    def locate(cls, path: str | None) -> SettingsSource:
        if path is None and Path(DEFAULT_SETTINGS_FILE).is_file():
            path = DEFAULT_SETTINGS_FILE
        if path is None:
            return cls(dict(os.environ), "the environment")
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"cannot read settings file {path}: {err.strerror}") from err
        except ValueError as err:
            raise UsageError(f"settings file {path} is not valid JSON: {err}") from err
        values = document.get("Values") if isinstance(document, dict) else None
        if not isinstance(values, dict):
            raise UsageError(f'settings file {path} has no "Values" object')
        as_text = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items() if v is not None}
        return cls(as_text, path)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Apply the process-level variables of the settings file for the duration of a command."""
        saved = {name: os.environ.get(name) for name in _PROCESS_VARIABLES}
        for name in _PROCESS_VARIABLES:
            value = self.values.get(name)
            if value:
                os.environ[name] = value
        try:
            yield
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old


class Output:
    """Human lines or one JSON document per command, and progress for people (never with --json)."""

    def __init__(self, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self._stream = stream
        self.terminal = not as_json and stream.isatty()
        self._bar: Any = None  # the tqdm bar being shown, if any

    def line(self, text: str = "") -> None:
        if self.as_json:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def document(self, payload: Any) -> None:
        if self.as_json:
            self._stream.write(json.dumps(payload, indent=2, default=str) + "\n")
            self._stream.flush()

    @contextlib.contextmanager
    def progress(self, total: int, what: str) -> Iterator[Callable[[str], None]]:
        """Yields ``advance(text)`` to call once per item done: a progress bar on a terminal, a line
        ``[n/total] text`` otherwise, nothing with --json."""
        done = 0
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit="", file=self._stream, leave=True, dynamic_ncols=True)

        def advance(text: str) -> None:
            nonlocal done
            done += 1
            if self._bar is not None:
                self._bar.set_postfix_str(text[:40], refresh=False)
                self._bar.update(1)
            else:
                self.line(f"[{done}/{total}] {text}")

        try:
            yield advance
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def error(self, err: NotifyError, *, retry_after: float | None = None, key: str | None = None) -> int:
        return self.error_body(err.to_body()["error"], retry_after=retry_after, key=key)  # type: ignore[arg-type]

    def error_body(self, error: Mapping[str, Any], *, retry_after: float | None = None, key: str | None = None) -> int:
        """Report a failed operation: the stable code and the library's message, then what to do."""
        code, message, target = str(error.get("code")), str(error.get("message", "")), error.get("target")
        if self.as_json:
            body: dict[str, Any] = {"error": dict(error)}
            if retry_after is not None:
                body["retryAfter"] = max(1, round(retry_after))
            self.document(body)
            return 1
        where = f" [{target}]" if target else ""
        self.line(f"error: {code}{where}: {message}")
        for hint in advice(code, message, target, retry_after, key):
            self.line("  " + hint)
        return 1


# What the upstream services are, for people who do not know the internal names.
_SERVICES = {
    "connector": "Teams (its Bot Connector service, which delivers the bot's messages)",
    "graph": "Microsoft Graph (which finds the user and installs the Teams app for them)",
}


def after_utc(retry_after: float) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=retry_after)
    return at.strftime("%H:%M:%S UTC")


def advice(code: str, message: str, target: Any, retry_after: float | None, key: str | None = None) -> list[str]:
    """What a person should do about an error, in plain words."""
    service = _SERVICES.get(str(target), str(target) if target else "an upstream service")
    same_key = f" --idempotency-key {key}" if key else ""
    if code == "delivery_unconfirmed":
        return [
            f"{service} did not confirm the send: the message may or may not have arrived.",
            "Check the recipient's chat in Teams before sending it again.",
            f"To retry safely, repeat the same command with{same_key or ' the same --idempotency-key'}: for 6 "
            "minutes a retry with that key cannot send a second copy (it answers request_in_progress while the "
            "first attempt may still land); after that it sends once more.",
        ]
    if code == "request_in_progress":
        wait = f" in {max(1, round(retry_after))} s" if retry_after else ""
        return [f"An earlier attempt with this idempotency key is still being sent: ask again{wait}."]
    status = re.search(r"answered (\d{3})", message)
    if code == "upstream_unavailable" and status is not None and status.group(1) == "429":
        lines = [f"{service} is rate-limiting this app (HTTP 429); nothing was sent."]
        if retry_after is not None:
            lines.append(
                f"It asked to wait {max(1, round(retry_after))} s: try again after {after_utc(retry_after)}"
                + (f" with{same_key}." if same_key else ".")
            )
        return lines
    if code in ("upstream_unavailable", "storage_unavailable", "conversation_unavailable") and retry_after is not None:
        return [
            f"{service} is temporarily unavailable; nothing was sent. Try again after {after_utc(retry_after)} "
            f"(in {max(1, round(retry_after))} s)" + (f" with{same_key}." if same_key else ".")
        ]
    if str(target) in _SERVICES:
        return [f'"{target}" is {_SERVICES[str(target)]}.']
    return []


class _WaitReporter(logging.Handler):
    """Shows the library's inline waits (a 429's Retry-After, a backoff) as a line for people."""

    def __init__(self, out: Output) -> None:
        super().__init__(logging.INFO)
        self._out = out
        self._until = 0.0  # when the last wait shown ends: concurrent requests' waits are not repeated

    def emit(self, record: logging.LogRecord) -> None:
        seconds = getattr(record, "wait_seconds", None)
        if seconds is None:
            return
        ends = record.created + seconds
        if ends <= self._until + 1.0:
            return
        self._until = ends
        status = getattr(record, "wait_status", None)
        service = getattr(record, "wait_service", "")
        name = {"connector": "Teams", "graph": "Microsoft Graph"}.get(service, service)
        wait = f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
        if status == 429:
            owner = name + ("'" if name.endswith("s") else "'s")
            self._out.line(f"waiting {wait} for {owner} rate limit (HTTP 429), then trying again")
        else:
            why = f"HTTP {status}" if status else "no answer"
            self._out.line(f"waiting {wait}: {name} is temporarily unavailable ({why}), then trying again")


@contextlib.contextmanager
def report_waits(out: Output) -> Iterator[None]:
    """While a command runs, show the library's inline waits to people (not with --json)."""
    if out.as_json:
        yield
        return
    source = logging.getLogger("shared.http")
    handler, level = _WaitReporter(out), source.level
    source.addHandler(handler)
    if source.getEffectiveLevel() > logging.INFO:
        source.setLevel(logging.INFO)
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)


Handler = Callable[[argparse.Namespace, SettingsSource, Output], Coroutine[Any, Any, int]]


@contextlib.asynccontextmanager
async def services_for(source: SettingsSource) -> Any:
    """The library's services from these settings, installed as the process's own (what the function
    app's handlers use), so a command runs exactly what the HTTP API runs."""
    from shared.bootstrap import get_services, reset_services

    await reset_services()
    try:
        yield get_services(source.values)
    finally:
        await reset_services()


def read_card(path: str) -> dict[str, Any]:
    """An Adaptive Card from a JSON file (``-``: stdin) for --card."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read card file {path}: {err.strerror}") from err
    try:
        card = json.loads(text)
    except ValueError as err:
        raise UsageError(f"card file {path} is not valid JSON: {err}") from err
    if not isinstance(card, dict):
        raise UsageError(f"card file {path} must hold one JSON object (an Adaptive Card)")
    return card


FIELD_LABELS = {
    "tenantId": "tenant",
    "accountId": "Teams account",
    "conversationId": "conversation",
    "serviceUrl": "service URL",
    "objectId": "object id",
    "upn": "UPN",
    "updatedAt": "cached at",
}


def print_fields(out: Output, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        out.line(f"  {FIELD_LABELS.get(name, name):<14} {value if value is not None else '-'}")
