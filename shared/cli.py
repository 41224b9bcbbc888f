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
    from shared.notify import Message

    if args.text is None and args.card is None:
        raise UsageError("give --text, --card, or both")
    message = Message(text=args.text, card=_read_card(args.card) if args.card else None, summary=args.summary)
    async with _services(source) as services:
        result = await services.notifier.send(args.to, message, args.tenant)
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
        out.line(f"Evicted {args.recipient} (Teams account {entry.account_id}); the next send resolves them again.")
    return 0


# --- parser and entry point -------------------------------------------------------------------


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
