"""The operator's command line: ``python -m shared.cli [--settings FILE] [--json] COMMAND ...``.

    doctor [--recipient UPN] [--tenant ID]      is this deployment set up right? (exit 1 if not)
    send --to UPN|OID (--text T | --card FILE) [--summary S] [--tenant ID]
    cache show|evict UPN|OID [--tenant ID]      the memoised Teams identity of one recipient
    failures list | show ID | replay ID|--all | drop ID
                                                Service Bus messages kept after a permanent failure
    erase UPN|OID [--tenant ID] [--include-opt-out]
                                                delete every row of the app's storage naming one person

Settings are the function app's: the ``Values`` of a local.settings.json (``--settings FILE``;
by default ./local.settings.json when it exists), otherwise the environment. ``SSL_CERT_FILE`` /
``REQUESTS_CA_BUNDLE`` in those Values are applied as the function host would (a private CA, e.g.
the sandbox's). Output is for people by default and JSON with ``--json``. Exit codes: 0 success,
1 the operation failed (the reason is printed), 2 wrong usage. Secrets and tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from shared.cli_failures import cmd_failures
from shared.cli_io import Handler, Output, SettingsSource, UsageError, print_fields, services_for
from shared.errors import NotifyError

logger = logging.getLogger(__name__)

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
    from shared.pipeline import Message

    if args.text is None and args.card is None:
        raise UsageError("give --text, --card, or both")
    body: dict[str, Any] = {"recipient": args.to, "text": args.text, "summary": args.summary, "tenantId": args.tenant}
    if args.card is not None:
        body["card"] = _read_card(args.card)
    # The HTTP API's request model: the same validation and error codes as POST /api/notify.
    request = parse_notify_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
    message = Message(text=request.text, card=request.card, summary=request.summary)
    async with services_for(source) as services:
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


async def cmd_cache(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    async with services_for(source) as services:
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
        print_fields(out, fields)
    else:
        out.document({"recipient": args.recipient, "evicted": True, **fields})
        out.line(f"Evicted {args.recipient} (Teams account {entry.account_id}); the next send resolves them again.")
    return 0


# --- erase -------------------------------------------------------------------------------------


async def cmd_erase(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    from shared.retention import erase_person

    async with services_for(source) as services:
        tenant = args.tenant or services.settings.tenant_id
        report = await erase_person(services, tenant, args.recipient, include_opt_out=args.include_opt_out)
    out.document({"tenantId": tenant, "names": report.names, "deleted": report.deleted})
    out.line(f"Erased the rows naming {args.recipient} in tenant {tenant}:")
    for table, count in report.deleted.items():
        out.line(f"  {table:<14} {count}")
    if not args.include_opt_out:
        out.line("An opt-out record, if any, was kept (--include-opt-out removes it).")
    return 0


# --- parser and entry point -------------------------------------------------------------------


# --- notifications: status, update, recall ----------------------------------------------------


async def cmd_notification(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    from shared.lifecycle import get_status, recall_notification, update_notification
    from shared.models import parse_update_request

    async with services_for(source) as services:
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

    erase = commands.add_parser("erase", help="delete every row of the app's storage naming one person")
    erase.add_argument("recipient", metavar="UPN|OID")
    erase.add_argument("--tenant", metavar="ID", help="default MicrosoftAppTenantId")
    erase.add_argument(
        "--include-opt-out", action="store_true", help="also forget that they uninstalled the bot (it may reinstall)"
    )
    erase.set_defaults(handler=cmd_erase)

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
