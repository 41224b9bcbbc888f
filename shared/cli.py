"""The operator's command line: ``python -m shared.cli [--settings FILE] [--json] COMMAND ...``.

    doctor [--recipient UPN] [--tenant ID]      is this deployment set up right? (exit 1 if not)
    send --to UPN|OID (--text T | --card FILE) [--summary S] [--tenant ID] [--idempotency-key K]
                                                send once; prints the notification id
    notification status ID [--watch] | update ID ... | recall ID
                                                follow, change or delete a sent notification
    cache show|evict UPN|OID [--tenant ID]      the memoised Teams identity of one recipient
    failures list | show ID | replay ID|--all | drop ID
                                                Service Bus messages kept after a permanent failure

Settings are the function app's: the ``Values`` of a local.settings.json (``--settings FILE``;
by default ./local.settings.json when it exists), otherwise the environment. ``SSL_CERT_FILE`` /
``REQUESTS_CA_BUNDLE`` in those Values are applied as the function host would (a private CA, e.g.
the sandbox's). The global options (--settings, --json, -v) may also follow the command.

Output is for people by default: on a terminal, work on many recipients shows a progress bar and a
wait for Teams' rate limit shows a "waiting N s" line; when not on a terminal the same progress is
plain lines. ``--json`` prints one JSON document and nothing else. Exit codes: 0 success, 1 the
operation failed (the reason is printed), 2 wrong usage. Secrets and tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.errors import NotifyError

logger = logging.getLogger(__name__)

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


def _when(retry_after: float) -> str:
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
                f"It asked to wait {max(1, round(retry_after))} s: try again after {_when(retry_after)}"
                + (f" with{same_key}." if same_key else ".")
            )
        return lines
    if code in ("upstream_unavailable", "storage_unavailable", "conversation_unavailable") and retry_after is not None:
        return [
            f"{service} is temporarily unavailable; nothing was sent. Try again after {_when(retry_after)} "
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
def _report_waits(out: Output) -> Iterator[None]:
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


# --- doctor -------------------------------------------------------------------------------------


async def cmd_doctor(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    from shared.doctor import diagnose

    out.line(f"Checking the settings from {source.description}")
    results = []
    async for result in diagnose(source.values, recipient=args.recipient, tenant_id=args.tenant):
        results.append(result)
        label = {"ok": "OK  ", "fail": "FAIL", "skip": "SKIP"}[result.status]
        code = f"{result.code}: " if result.code else ""
        out.line(f"[{label}] {result.title:<21} {code}{result.detail}")
    failed = [r for r in results if r.status == "fail"]
    out.line()
    out.line("All checks passed." if not failed else f"{len(failed)} check(s) failed; fix them in order.")
    out.document({"ok": not failed, "checks": [r.to_dict() for r in results]})
    return 1 if failed else 0


# --- the commands that need the library's services ----------------------------------------------


@contextlib.asynccontextmanager
async def _services(source: SettingsSource) -> Any:
    """The library's services from these settings, installed as the process's own (what the function
    app's handlers use), so a command runs exactly what the HTTP API runs."""
    from shared.bootstrap import get_services, reset_services

    await reset_services()
    try:
        yield get_services(source.values)
    finally:
        await reset_services()


def _read_card(path: str) -> dict[str, Any]:
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


async def cmd_send(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    """One message through the HTTP API's own handler (``POST /api/notify``): the same validation,
    error codes and idempotency. Every send is keyed (a fresh key when none is given), so a retry
    with the printed key after an unconfirmed send cannot send a second copy."""
    from shared.service import handle_notify

    if args.text is None and args.card is None:
        raise UsageError("give --text, --card, or both")
    body: dict[str, Any] = {"recipient": args.to, "text": args.text, "summary": args.summary, "tenantId": args.tenant}
    if args.card is not None:
        body["card"] = _read_card(args.card)
    key = args.idempotency_key or f"cli-{uuid.uuid4()}"
    request = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
    async with _services(source):
        outcome = await handle_notify(request, content_type="application/json", idempotency_key=key)
    if outcome.status != 200:
        error = outcome.body.get("error")
        return out.error_body(error if isinstance(error, dict) else {}, retry_after=outcome.retry_after, key=key)
    out.document({**outcome.body, "idempotencyKey": key, "replayed": outcome.replayed})
    if outcome.replayed:
        out.line(f"Already sent to {outcome.body.get('recipient')} with this idempotency key: nothing sent again.")
    else:
        out.line(f"Sent to {outcome.body.get('recipient')}.")
    out.line(f"notification id:  {outcome.body.get('notificationId')}")
    out.line(f"activity id:      {outcome.body.get('activityId') or '(none: Teams accepted it without an id)'}")
    out.line(f"conversation:     {outcome.body.get('conversationId')}")
    out.line(f"idempotency key:  {key}")
    return 0


def _entry_fields(entry: Any) -> dict[str, Any]:
    return {
        "tenantId": entry.tenant_id,
        "accountId": entry.account_id,
        "conversationId": entry.conversation_id,
        "serviceUrl": entry.service_url,
        "objectId": entry.object_id,
        "upn": entry.upn,
        "updatedAt": entry.updated_at.isoformat() if entry.updated_at else None,
    }


_FIELD_LABELS = {
    "tenantId": "tenant",
    "accountId": "Teams account",
    "conversationId": "conversation",
    "serviceUrl": "service URL",
    "objectId": "object id",
    "upn": "UPN",
    "updatedAt": "cached at",
}


def _print_fields(out: Output, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        out.line(f"  {_FIELD_LABELS.get(name, name):<14} {value if value is not None else '-'}")


async def cmd_cache(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    async with _services(source) as services:
        tenant = args.tenant or services.settings.tenant_id
        if args.cache_command == "show":
            entry = await services.store.get(tenant, args.recipient)
        else:
            entry = await services.store.evict(tenant, args.recipient)
    if entry is None:
        out.document({"recipient": args.recipient, "tenantId": tenant, "cached": False})
        out.line(f"Nothing cached for {args.recipient} in tenant {tenant} (the next send resolves them).")
        return 1
    fields = _entry_fields(entry)
    if args.cache_command == "show":
        out.document({"recipient": args.recipient, "cached": True, **fields})
        out.line(f"{args.recipient} in tenant {tenant}:")
        _print_fields(out, fields)
    else:
        out.document({"recipient": args.recipient, "evicted": True, **fields})
        out.line(f"Evicted {args.recipient} (Teams account {entry.account_id}); the next send resolves them again.")
    return 0


# --- failures ------------------------------------------------------------------------------------


def _failure_recipient(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    recipient = parsed.get("recipient") if isinstance(parsed, dict) else None
    return str(recipient) if recipient is not None else None


def _failure_fields(record: Any, *, with_body: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "messageId": record.message_id,
        "code": record.code,
        "message": record.message,
        "target": record.target,
        "httpStatus": record.http_status,
        "recipient": _failure_recipient(record.body),
        "firstFailedAt": record.first_failed_at.isoformat(),
        "lastFailedAt": record.last_failed_at.isoformat(),
        "failures": record.failures,
        "replays": record.replays,
        "deliveryCount": record.delivery_count,
        "enqueuedTime": record.enqueued_time.isoformat() if record.enqueued_time else None,
        "correlationId": record.correlation_id,
    }
    if with_body:
        try:
            fields["body"] = json.loads(record.body)
        except ValueError:
            fields["body"] = record.body_text()
        fields["bodyTruncated"] = record.body_truncated
    return fields


def _short_time(value: Any) -> str:
    return str(value.strftime("%Y-%m-%d %H:%M:%S"))


async def _failures_list(services: Any, out: Output) -> int:
    from shared.failures import list_failures

    records = await list_failures(services)
    out.document({"failures": [_failure_fields(r, with_body=False) for r in records]})
    if not records:
        out.line("No kept failures.")
        return 0
    out.line(f"{len(records)} kept failure(s), oldest first:")
    rows = [("MESSAGE ID", "CODE", "RECIPIENT", "LAST FAILED (UTC)", "TIMES")] + [
        (r.message_id, r.code, _failure_recipient(r.body) or "-", _short_time(r.last_failed_at), str(r.failures))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        out.line("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def _not_kept(message_id: str) -> NotifyError:
    from shared.errors import RequestError

    return RequestError(
        f"No kept failure for message id '{message_id}'.", code="failure_not_found", target="messageId", http_status=404
    )


async def _failures_show(services: Any, out: Output, message_id: str) -> int:
    from shared.failures import get_failure

    record = await get_failure(services, message_id)
    if record is None:
        return out.error(_not_kept(message_id))
    fields = _failure_fields(record, with_body=True)
    out.document(fields)
    out.line(f"Message {record.message_id}")
    out.line(f"  reason          {record.code}: {record.message}" + (f" [{record.target}]" if record.target else ""))
    out.line(f"  recipient       {fields['recipient'] or '-'}")
    out.line(f"  first failed    {record.first_failed_at.isoformat()}")
    out.line(
        f"  last failed     {record.last_failed_at.isoformat()} ({record.failures} time(s), {record.replays} replay(s))"
    )
    out.line(f"  delivery count  {record.delivery_count if record.delivery_count is not None else '-'}")
    out.line(f"  enqueued        {record.enqueued_time.isoformat() if record.enqueued_time else '-'}")
    if record.correlation_id:
        out.line(f"  correlation id  {record.correlation_id}")
    out.line("  body" + (" (truncated)" if record.body_truncated else "") + ":")
    body = fields["body"]
    text = json.dumps(body, indent=2) if not isinstance(body, str) else body
    for line in text.splitlines():
        out.line("    " + line)
    return 0


async def _failures_replay(services: Any, out: Output, message_id: str | None, replay_all: bool) -> int:
    from shared.failures import list_failures, replay_failure

    if replay_all:
        ids = [r.message_id for r in await list_failures(services)]
    elif message_id is not None:
        ids = [message_id]
    else:
        raise UsageError("give a message id or --all")
    results: list[dict[str, Any]] = []
    with out.progress(len(ids), "replaying") if replay_all and ids else contextlib.nullcontext() as advance:
        for current in ids:
            try:
                result = await replay_failure(services, current)
            except NotifyError as err:
                if not replay_all:
                    raise
                entry: dict[str, Any] = {
                    "messageId": current,
                    "outcome": "failed",
                    "code": err.code,
                    "message": err.message,
                }
            else:
                entry = {"messageId": current, "outcome": result.outcome}
                if result.outcome == "failed":
                    entry.update(code=result.code, message=result.message)
                else:
                    entry.update(activityId=result.activity_id, conversationId=result.conversation_id)
            results.append(entry)
            if entry["outcome"] == "failed":
                text = f"{current}: still failing: {entry['code']}: {entry['message']}"
            elif entry["outcome"] == "already_sent":
                text = f"{current}: had been sent already; record cleared"
            else:
                text = f"{current}: sent (activity {entry['activityId']}); record cleared"
            if advance is not None:
                advance(text)
                if out.terminal and entry["outcome"] == "failed":
                    out.line(text)  # a failure stays on screen above the bar
            else:
                out.line(text)
    failed = sum(1 for r in results if r["outcome"] == "failed")
    out.document({"replayed": results, "failed": failed})
    if replay_all:
        out.line(f"{len(ids) - failed} of {len(ids)} replayed." if ids else "No kept failures.")
    return 1 if failed else 0


async def _failures_drop(services: Any, out: Output, message_id: str) -> int:
    from shared.failures import drop_failure

    if not await drop_failure(services, message_id):
        return out.error(_not_kept(message_id))
    out.document({"messageId": message_id, "dropped": True})
    out.line(f"Dropped {message_id} (not sent).")
    return 0


async def cmd_failures(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    if args.failures_command == "replay" and (args.message_id is None) == (not args.all):
        raise UsageError("give a message id or --all (not both)")
    async with _services(source) as services:
        if args.failures_command == "list":
            return await _failures_list(services, out)
        if args.failures_command == "show":
            return await _failures_show(services, out, args.message_id)
        if args.failures_command == "replay":
            return await _failures_replay(services, out, args.message_id, args.all)
        return await _failures_drop(services, out, args.message_id)


# --- parser and entry point -------------------------------------------------------------------


# --- notifications: status, update, recall ----------------------------------------------------


def _status_summary(status: Any) -> str:
    counts = status.counts
    state = "finished" if status.finished else "in progress"
    return (
        f"Notification {status.notification_id}: {state}; {status.total} recipient(s): {counts.sent} sent, "
        f"{counts.failed} failed, {counts.pending} pending, {counts.recalled} recalled."
    )


async def _watch(services: Any, out: Output, args: argparse.Namespace) -> Any:
    """Poll the status until every recipient is settled: a bar of settled recipients on a terminal,
    a line whenever the counts change otherwise. Returns the final status."""
    from shared.notifications import get_status

    status = await get_status(services, args.id, top=args.top, token=None)
    last = ""
    with out.progress(status.total, "sending") if out.terminal else contextlib.nullcontext() as advance:
        settled = 0
        while True:
            counts = status.counts
            now = counts.sent + counts.failed + counts.recalled
            text = f"{counts.sent} sent, {counts.failed} failed, {counts.pending} pending, {counts.recalled} recalled"
            if advance is not None:
                for _ in range(max(0, now - settled)):
                    advance(text)
                settled = max(settled, now)
            elif text != last:
                out.line(f"{now}/{status.total} settled: {text}")
            last = text
            if status.finished:
                return status
            await asyncio.sleep(args.interval)
            status = await get_status(services, args.id, top=args.top, token=None)


async def cmd_notification(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    from shared.models import parse_update_request
    from shared.notifications import get_status, recall_notification, update_notification

    async with _services(source) as services:
        if args.notification_command == "status":
            if args.watch:
                status = await _watch(services, out, args)
            else:
                status = await get_status(services, args.id, top=args.top, token=args.continuation_token)
            out.document(status.model_dump(by_alias=True))
            out.line(_status_summary(status))
            for row in status.recipients:
                detail = row.activity_id or (f"{row.error.code}: {row.error.message}" if row.error else "")
                out.line(f"  {row.state:<9} {row.recipient}  {detail}")
            if status.continuation_token:
                out.line(f"more: --continuation-token {status.continuation_token}")
            return 0
        # One recipient, or all of them: the total comes from the status (it also names an unknown id).
        total = 1 if args.recipient else (await get_status(services, args.id, top=1, token=None)).total
        verb = "updating" if args.notification_command == "update" else "recalling"
        if args.notification_command == "update":
            if args.text is None and args.card is None:
                raise UsageError("give --text, --card, or both")
            body: dict[str, Any] = {"text": args.text, "summary": args.summary}
            if args.card is not None:
                body["card"] = _read_card(args.card)
            update = parse_update_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
        with out.progress(total, verb) as advance:

            def on_result(result: Any) -> None:
                reason = f": {result.error.code}" if result.error else ""
                advance(f"{result.recipient}: {result.outcome}{reason}")

            if args.notification_command == "update":
                response, retry_after = await update_notification(services, args.id, update, args.recipient, on_result)
            else:
                response, retry_after = await recall_notification(services, args.id, args.recipient, on_result)
    out.document(response.model_dump(by_alias=True))
    tally: dict[str, int] = {}
    for result in response.results:
        tally[result.outcome] = tally.get(result.outcome, 0) + 1
        if result.error is not None and out.terminal:
            out.line(f"  {result.outcome:<9} {result.recipient}  {result.error.code}: {result.error.message}")
    out.line(f"Notification {args.id}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())) + ".")
    if retry_after is not None:
        out.line(
            f"Some recipients failed for a passing reason: run the same command again after {_when(retry_after)} "
            "(recipients already done are not called again)."
        )
    return 1 if any(r.outcome == "failed" for r in response.results) else 0


def _examples(*lines: str) -> str:
    return "example" + ("s" if len(lines) > 1 else "") + ":\n" + "\n".join("  " + line for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.cli",
        description="Operate the Teams proactive notify app: check the setup, send, follow, update or recall "
        "a notification, inspect the recipient cache and the kept failures.",
        epilog=_examples(
            "python -m shared.cli doctor --recipient alice@contoso.com",
            "python -m shared.cli --settings .sandbox/local.settings.json send --to alice@contoso.com --text hi",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The global options, accepted before the command and after it (``doctor --json``). After the
    # command their default is SUPPRESS, so a value given before it is kept.
    for target, default in ((parser, None), (common := argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)):
        target.add_argument(
            "--settings",
            metavar="FILE",
            default=default,
            help="a local.settings.json whose Values are the settings (default: ./local.settings.json if present, "
            "else the environment)",
        )
        target.add_argument(
            "--json", action="store_true", default=default if default else False, help="print JSON for scripts"
        )
        target.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=default if default else False,
            help="log the library's progress to stderr",
        )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, text: str, *examples: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            epilog=_examples(*examples) if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    doctor = command(
        commands,
        "doctor",
        "check settings, tokens, permissions, catalog, storage (exit 1 if something is wrong)",
        "python -m shared.cli doctor",
        "python -m shared.cli doctor --recipient alice@contoso.com --json",
    )
    doctor.add_argument("--recipient", metavar="UPN|OID", help="also resolve this user end to end (sends nothing)")
    doctor.add_argument("--tenant", metavar="ID", help="the tenant to check (default MicrosoftAppTenantId)")
    doctor.set_defaults(handler=cmd_doctor)

    send = command(
        commands,
        "send",
        "send one message through the app's pipeline; prints the notification id",
        'python -m shared.cli send --to alice@contoso.com --text "Build **42** passed"',
        "python -m shared.cli send --to alice@contoso.com --card card.json --summary Approval "
        "--idempotency-key invoice-1001",
    )
    send.add_argument("--to", required=True, metavar="UPN|OID", help="the recipient")
    send.add_argument("--text", help="markdown text")
    send.add_argument("--card", metavar="FILE", help="an Adaptive Card JSON file ('-' for stdin)")
    send.add_argument("--summary", help="preview text for notifications")
    send.add_argument("--tenant", metavar="ID", help="the recipient's tenant (default MicrosoftAppTenantId)")
    send.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key sends once: repeat a send with it after an error (default: a new key, printed)",
    )
    send.set_defaults(handler=cmd_send)

    cache = command(
        commands,
        "cache",
        "show or evict one recipient's memoised Teams identity",
        "python -m shared.cli cache show alice@contoso.com",
        "python -m shared.cli cache evict alice@contoso.com",
    )
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    for action, text in (("show", "show the cached entry"), ("evict", "drop it (the next send resolves again)")):
        sub = command(cache_commands, action, text, f"python -m shared.cli cache {action} alice@contoso.com")
        sub.add_argument("recipient", metavar="UPN|OID")
        sub.add_argument("--tenant", metavar="ID", help="default MicrosoftAppTenantId")
    cache.set_defaults(handler=cmd_cache)

    failures = command(
        commands,
        "failures",
        "Service Bus messages kept after a permanent failure",
        "python -m shared.cli failures list",
        "python -m shared.cli failures replay --all",
    )
    failures_commands = failures.add_subparsers(dest="failures_command", required=True, metavar="ACTION")
    command(failures_commands, "list", "the kept failures, oldest first", "python -m shared.cli failures list --json")
    show = command(
        failures_commands,
        "show",
        "one kept failure with its reason and body",
        "python -m shared.cli failures show m-42",
    )
    show.add_argument("message_id", metavar="ID")
    replay = command(
        failures_commands,
        "replay",
        "send again (once) and clear the record",
        "python -m shared.cli failures replay m-42",
        "python -m shared.cli failures replay --all",
    )
    replay.add_argument("message_id", metavar="ID", nargs="?")
    replay.add_argument("--all", action="store_true", help="replay every kept failure, oldest first")
    drop = command(
        failures_commands, "drop", "forget a kept failure without sending it", "python -m shared.cli failures drop m-42"
    )
    drop.add_argument("message_id", metavar="ID")
    failures.set_defaults(handler=cmd_failures)

    notification = command(
        commands,
        "notification",
        "status, update or recall of a sent notification (the id `send` prints)",
        "python -m shared.cli notification status NOTIFICATION_ID --watch",
        'python -m shared.cli notification update NOTIFICATION_ID --text "Build **42** passed (fixed)"',
        "python -m shared.cli notification recall NOTIFICATION_ID",
    )
    notification_commands = notification.add_subparsers(dest="notification_command", required=True, metavar="ACTION")
    status = command(
        notification_commands,
        "status",
        "counts by state and the recipients",
        "python -m shared.cli notification status NOTIFICATION_ID",
        "python -m shared.cli notification status NOTIFICATION_ID --watch   # until every recipient is settled",
    )
    status.add_argument("id", metavar="NOTIFICATION_ID")
    status.add_argument("--top", type=int, default=100, help="recipients per page (1-1000)")
    status.add_argument("--continuation-token", metavar="TOKEN")
    status.add_argument("--watch", action="store_true", help="follow a fan-out until every recipient is settled")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch: seconds between polls")
    update = command(
        notification_commands,
        "update",
        "replace the sent message in place",
        'python -m shared.cli notification update NOTIFICATION_ID --text "New text"',
        "python -m shared.cli notification update NOTIFICATION_ID --card approved.json --recipient bob@contoso.com",
    )
    update.add_argument("id", metavar="NOTIFICATION_ID")
    update.add_argument("--text", help="new markdown text")
    update.add_argument("--card", metavar="FILE", help="new Adaptive Card JSON file ('-' for stdin)")
    update.add_argument("--summary", help="new preview text")
    update.add_argument("--recipient", metavar="UPN|OID", help="only this recipient (default: all)")
    recall = command(
        notification_commands,
        "recall",
        "delete the sent message",
        "python -m shared.cli notification recall NOTIFICATION_ID",
        "python -m shared.cli notification recall NOTIFICATION_ID --recipient bob@contoso.com",
    )
    recall.add_argument("id", metavar="NOTIFICATION_ID")
    recall.add_argument("--recipient", metavar="UPN|OID", help="only this recipient (default: all)")
    notification.set_defaults(handler=cmd_notification)

    return parser


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json, stdout or sys.stdout)
    root = logging.getLogger()
    if not root.handlers:  # (an embedding process keeps its own logging)
        level = logging.INFO if args.verbose else logging.WARNING
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        # The handler's level too: the wait reporter lowers shared.http's level to see its waits.
        handler.setLevel(level)
        root.addHandler(handler)
        root.setLevel(level)
    command: Handler = args.handler
    try:
        source = SettingsSource.locate(args.settings)
        with source.applied(), _report_waits(out):
            return asyncio.run(command(args, source, out))
    except UsageError as err:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 2
    except NotifyError as err:
        retry_after = getattr(err, "retry_after", None)
        return out.error(err, retry_after=retry_after if isinstance(retry_after, float | int) else None)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
