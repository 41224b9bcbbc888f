"""The ``notification`` commands of the operator's command line: the status of a sent notification
(``--watch`` follows a fan-out until every recipient is settled), and updating or recalling it, with
progress per recipient."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

from shared.cli_io import Output, SettingsSource, UsageError, after_utc, read_card, services_for


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
    from shared.lifecycle import get_status

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
    from shared.lifecycle import get_status, recall_notification, update_notification
    from shared.request_models import parse_update_request
    from shared.response_models import to_body

    async with services_for(source) as services:
        if args.notification_command == "status":
            if args.watch:
                status = await _watch(services, out, args)
            else:
                status = await get_status(services, args.id, top=args.top, token=args.continuation_token)
            out.document(to_body(status))
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
                body["card"] = read_card(args.card)
            update = parse_update_request(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
        with out.progress(total, verb) as advance:

            def on_result(result: Any) -> None:
                reason = f": {result.error.code}" if result.error else ""
                advance(f"{result.recipient}: {result.outcome}{reason}")

            if args.notification_command == "update":
                response, retry_after = await update_notification(services, args.id, update, args.recipient, on_result)
            else:
                response, retry_after = await recall_notification(services, args.id, args.recipient, on_result)
    out.document(to_body(response))
    tally: dict[str, int] = {}
    for result in response.results:
        tally[result.outcome] = tally.get(result.outcome, 0) + 1
        if result.error is not None and out.terminal:
            out.line(f"  {result.outcome:<9} {result.recipient}  {result.error.code}: {result.error.message}")
    out.line(f"Notification {args.id}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())) + ".")
    if retry_after is not None:
        out.line(
            f"Some recipients failed for a passing reason: run the same command again after {after_utc(retry_after)} "
            "(recipients already done are not called again)."
        )
    return 1 if any(r.outcome == "failed" for r in response.results) else 0
