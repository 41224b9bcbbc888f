"""The operator's command line: ``python -m shared.cli [--settings FILE] [--json] COMMAND ...``.

    doctor [--recipient UPN] [--tenant ID]      is this deployment set up right? (exit 1 if not)
    send --to UPN|OID (--text T | --card FILE) [--summary S] [--tenant ID] [--idempotency-key K]
                                                send once; prints the notification id
    notification status ID [--watch] | update ID ... | recall ID
                                                follow, change or delete a sent notification
    cache show|evict UPN|OID [--tenant ID]      the memoised Teams identity of one recipient
    failures list | show ID | replay ID|--all | drop ID
                                                Service Bus messages kept after a permanent failure
    erase UPN|OID [--tenant ID] [--include-opt-out]
                                                delete every row of the app's storage naming one person

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
import json
import logging
import sys
import uuid
from typing import Any, TextIO

from shared.cli_failures import cmd_failures
from shared.cli_io import (
    Handler,
    Output,
    SettingsSource,
    UsageError,
    print_fields,
    read_card,
    report_waits,
    services_for,
)
from shared.cli_notifications import cmd_notification
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


async def cmd_send(args: argparse.Namespace, source: SettingsSource, out: Output) -> int:
    """One message through the HTTP API's own handler (``POST /api/notify``): the same validation,
    error codes and idempotency. Every send is keyed (a fresh key when none is given), so a retry
    with the printed key after an unconfirmed send cannot send a second copy."""
    from shared.service import handle_notify

    if args.text is None and args.card is None:
        raise UsageError("give --text, --card, or both")
    body: dict[str, Any] = {"recipient": args.to, "text": args.text, "summary": args.summary, "tenantId": args.tenant}
    if args.card is not None:
        body["card"] = read_card(args.card)
    key = args.idempotency_key or f"cli-{uuid.uuid4()}"
    request = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
    async with services_for(source):
        outcome = await handle_notify(request, content_type="application/json", idempotency_key=key)
    answer = outcome.body or {}
    if outcome.status != 200:
        error = answer.get("error")
        return out.error_body(error if isinstance(error, dict) else {}, retry_after=outcome.retry_after, key=key)
    out.document({**answer, "idempotencyKey": key, "replayed": outcome.replayed})
    if outcome.replayed:
        out.line(f"Already sent to {answer.get('recipient')} with this idempotency key: nothing sent again.")
    else:
        out.line(f"Sent to {answer.get('recipient')}.")
    out.line(f"notification id:  {answer.get('notificationId')}")
    out.line(f"activity id:      {answer.get('activityId') or '(none: Teams accepted it without an id)'}")
    out.line(f"conversation:     {answer.get('conversationId')}")
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
        out.line(f"Evicted {args.recipient} (conversation {entry.conversation_id}); the next send resolves them again.")
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

    erase = command(
        commands,
        "erase",
        "delete every row of the app's storage naming one person (personal data erasure)",
        "python -m shared.cli erase alice@contoso.com",
        "python -m shared.cli erase 00000000-0000-0000-0000-000000000001 --include-opt-out",
    )
    erase.add_argument("recipient", metavar="UPN|OID")
    erase.add_argument("--tenant", metavar="ID", help="default MicrosoftAppTenantId")
    erase.add_argument(
        "--include-opt-out", action="store_true", help="also forget that they uninstalled the bot (it may reinstall)"
    )
    erase.set_defaults(handler=cmd_erase)

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
        with source.applied(), report_waits(out):
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
