"""The operator's command line: ``python -m shared.cli [--settings FILE] [--json] COMMAND ...``.

    doctor [--recipient UPN] [--tenant ID]      is this deployment set up right? (exit 1 if not)
    send --to UPN|OID (--text T | --card FILE) [--summary S] [--tenant ID]
    cache show|evict UPN|OID [--tenant ID]      the memoised Teams identity of one recipient
    failures list | show ID | replay ID|--all | drop ID
                                                Service Bus messages kept after a permanent failure

Settings are the function app's: the ``Values`` of a local.settings.json (``--settings FILE``;
by default ./local.settings.json when it exists), otherwise the environment. ``SSL_CERT_FILE`` /
``REQUESTS_CA_BUNDLE`` in those Values are applied as the function host would (a private CA, e.g.
the sandbox's). Output is for people by default and JSON with ``--json``. Exit codes: 0 success,
1 the operation failed (the reason is printed), 2 wrong usage. Secrets and tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
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
    """Human lines or one JSON document per command."""

    def __init__(self, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self._stream = stream

    def line(self, text: str = "") -> None:
        if not self.as_json:
            self._stream.write(text + "\n")
            self._stream.flush()

    def document(self, payload: Any) -> None:
        if self.as_json:
            self._stream.write(json.dumps(payload, indent=2, default=str) + "\n")
            self._stream.flush()

    def error(self, err: NotifyError) -> int:
        if self.as_json:
            self.document(err.to_body())
        else:
            target = f" [{err.target}]" if err.target else ""
            self.line(f"error: {err.code}{target}: {err.message}")
        return 1


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
    from shared.bootstrap import build_services
    from shared.settings import load_settings

    services = build_services(load_settings(source.values))
    try:
        yield services
    finally:
        await services.aclose()


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
    from shared.models import parse_notify_request
    from shared.notify import Message

    if args.text is None and args.card is None:
        raise UsageError("give --text, --card, or both")
    body: dict[str, Any] = {"recipient": args.to, "text": args.text, "summary": args.summary, "tenantId": args.tenant}
    if args.card is not None:
        body["card"] = _read_card(args.card)
    # The HTTP API's request model: the same validation and error codes as POST /api/notify.
    request = parse_notify_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
    message = Message(text=request.text, card=request.card, summary=request.summary)
    async with _services(source) as services:
        result = await services.notifier.send(request.recipient, message, request.tenant_id)
    out.document(
        {
            "status": "sent",
            "activityId": result.activity_id,
            "conversationId": result.conversation_id,
            "recipient": result.recipient,
            "tenantId": result.tenant_id,
            "resolved": result.resolved,
        }
    )
    how = "resolved and cached just now" if result.resolved else "from the cache"
    out.line(f"Sent to {result.recipient} ({how}).")
    out.line(f"activity id:   {result.activity_id or '(none: Teams accepted it without an id)'}")
    out.line(f"conversation:  {result.conversation_id}")
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
        out.line(f"Evicted {args.recipient} (conversation {entry.conversation_id}); the next send resolves them again.")
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
    for index, current in enumerate(ids, start=1):
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
        progress = f"[{index}/{len(ids)}] " if replay_all else ""
        if entry["outcome"] == "failed":
            text = f"{progress}{current}: still failing: {entry['code']}: {entry['message']}"
        elif entry["outcome"] == "already_sent":
            text = f"{progress}{current}: had been sent already; record cleared"
        else:
            text = f"{progress}{current}: sent (activity {entry['activityId']}); record cleared"
        out.line(text)
        if out.as_json and replay_all:
            sys.stderr.write(text + "\n")
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


async def cmd_notification(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    from shared.models import parse_update_request
    from shared.notifications import get_status, recall_notification, update_notification

    async with _services(source) as services:
        if args.notification_command == "status":
            status = await get_status(services, args.id, top=args.top, token=args.continuation_token)
            out.document(status.model_dump(by_alias=True))
            counts = status.counts
            state = "finished" if status.finished else "in progress"
            out.line(
                f"Notification {status.notification_id}: {state}; {status.total} recipient(s): {counts.sent} sent, "
                f"{counts.failed} failed, {counts.pending} pending, {counts.recalled} recalled."
            )
            for row in status.recipients:
                detail = row.activity_id or (f"{row.error.code}: {row.error.message}" if row.error else "")
                out.line(f"  {row.state:<9} {row.recipient}  {detail}")
            if status.continuation_token:
                out.line(f"more: --continuation-token {status.continuation_token}")
            return 0
        if args.notification_command == "update":
            if args.text is None and args.card is None:
                raise UsageError("give --text, --card, or both")
            body: dict[str, Any] = {"text": args.text, "summary": args.summary}
            if args.card is not None:
                body["card"] = _read_card(args.card)
            update = parse_update_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
            response, _ = await update_notification(services, args.id, update, args.recipient)
        else:
            response, _ = await recall_notification(services, args.id, args.recipient)
    out.document(response.model_dump(by_alias=True))
    for result in response.results:
        reason = f"  {result.error.code}: {result.error.message}" if result.error else ""
        out.line(f"  {result.outcome:<9} {result.recipient}{reason}")
    return 1 if any(r.outcome == "failed" for r in response.results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.cli",
        description="Operate the Teams proactive notify app: check the setup, send, inspect the cache and failures.",
    )
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help="a local.settings.json whose Values are the settings (default: ./local.settings.json if present, "
        "else the environment)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="check settings, tokens, permissions, catalog, storage")
    doctor.add_argument("--recipient", metavar="UPN|OID", help="also resolve this user end to end (sends nothing)")
    doctor.add_argument("--tenant", metavar="ID", help="the tenant to check (default MicrosoftAppTenantId)")
    doctor.set_defaults(handler=cmd_doctor)

    send = commands.add_parser("send", help="send one message through the app's pipeline")
    send.add_argument("--to", required=True, metavar="UPN|OID", help="the recipient")
    send.add_argument("--text", help="markdown text")
    send.add_argument("--card", metavar="FILE", help="an Adaptive Card JSON file ('-' for stdin)")
    send.add_argument("--summary", help="preview text for notifications")
    send.add_argument("--tenant", metavar="ID", help="the recipient's tenant (default MicrosoftAppTenantId)")
    send.set_defaults(handler=cmd_send)

    cache = commands.add_parser("cache", help="show or evict one recipient's memoised Teams identity")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    for action, text in (("show", "show the cached entry"), ("evict", "drop it (the next send resolves again)")):
        sub = cache_commands.add_parser(action, help=text)
        sub.add_argument("recipient", metavar="UPN|OID")
        sub.add_argument("--tenant", metavar="ID", help="default MicrosoftAppTenantId")
    cache.set_defaults(handler=cmd_cache)

    failures = commands.add_parser("failures", help="Service Bus messages kept after a permanent failure")
    failures_commands = failures.add_subparsers(dest="failures_command", required=True, metavar="ACTION")
    failures_commands.add_parser("list", help="the kept failures, oldest first")
    show = failures_commands.add_parser("show", help="one kept failure with its reason and body")
    show.add_argument("message_id", metavar="ID")
    replay = failures_commands.add_parser("replay", help="send again (once) and clear the record")
    replay.add_argument("message_id", metavar="ID", nargs="?")
    replay.add_argument("--all", action="store_true", help="replay every kept failure, oldest first")
    drop = failures_commands.add_parser("drop", help="forget a kept failure without sending it")
    drop.add_argument("message_id", metavar="ID")
    failures.set_defaults(handler=cmd_failures)

    notification = commands.add_parser("notification", help="status, update or recall of a sent notification")
    notification_commands = notification.add_subparsers(dest="notification_command", required=True, metavar="ACTION")
    status = notification_commands.add_parser("status", help="counts by state and the recipients")
    status.add_argument("id", metavar="NOTIFICATION_ID")
    status.add_argument("--top", type=int, default=100, help="recipients per page (1-1000)")
    status.add_argument("--continuation-token", metavar="TOKEN")
    update = notification_commands.add_parser("update", help="replace the sent message in place")
    update.add_argument("id", metavar="NOTIFICATION_ID")
    update.add_argument("--text", help="new markdown text")
    update.add_argument("--card", metavar="FILE", help="new Adaptive Card JSON file ('-' for stdin)")
    update.add_argument("--summary", help="new preview text")
    update.add_argument("--recipient", metavar="UPN|OID", help="only this recipient (default: all)")
    recall = notification_commands.add_parser("recall", help="delete the sent message")
    recall.add_argument("id", metavar="NOTIFICATION_ID")
    recall.add_argument("--recipient", metavar="UPN|OID", help="only this recipient (default: all)")
    notification.set_defaults(handler=cmd_notification)

    return parser


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json, stdout or sys.stdout)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        source = SettingsSource.locate(args.settings)
        with source.applied():
            return asyncio.run(handler(args, source, out))
    except UsageError as err:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 2
    except NotifyError as err:
        return out.error(err)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
