"""The ``failures`` commands of the operator's command line: list, show, replay and drop the Service
Bus messages kept after a permanent failure."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from shared.cli_io import Output, SettingsSource, UsageError, services_for
from shared.errors import NotifyError


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
    from shared.errors import InvalidRequestError

    return InvalidRequestError(
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
    async with services_for(source) as services:
        if args.failures_command == "list":
            return await _failures_list(services, out)
        if args.failures_command == "show":
            return await _failures_show(services, out, args.message_id)
        if args.failures_command == "replay":
            return await _failures_replay(services, out, args.message_id, args.all)
        return await _failures_drop(services, out, args.message_id)
