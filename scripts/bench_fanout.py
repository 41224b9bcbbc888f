#!/usr/bin/env python3
"""Fan-out wall time against the minimum set by the emulated Teams limits (for bench/).

    .venv/bin/python scripts/bench_fanout.py [--recipients 1000] [--app-rate 200] [--concurrency 32] [--cold]

Starts the fake tenant (rate limits on, ``app_rate_per_second`` = --app-rate) and Azurite, posts one
notification to N recipients through the function app object, feeds every Service Bus message the
HTTP function's output binding produced to the queue function with bounded concurrency (redelivering
on a raise, as Service Bus does), and prints one row: wall time, the emulated minimum (Bot Connector
requests / app rate), their ratio, 429s. ``run_fanout()`` returns the same numbers for bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class FanOutResult:
    recipients: int
    cold: bool
    app_rate: int
    wall_seconds: float
    minimum_seconds: float
    connector_requests: int
    throttled: int
    sent: int

    @property
    def ratio(self) -> float:
        return self.wall_seconds / self.minimum_seconds if self.minimum_seconds else float("inf")


async def run_fanout(
    recipients: int = 1000, *, app_rate: int = 200, concurrency: int = 32, cold: bool = False
) -> FanOutResult:
    import azure.functions as func
    from azure.functions.servicebus import ServiceBusMessage

    from faketenant import FakeTenant, FakeTenantServer
    from shared.bootstrap import build_services, reset_services
    from shared.errors import TransientError
    from shared.settings import load_settings
    from shared.storage.references import ConversationReference
    from tests.azurite import Azurite
    from tests.functions import OutputMessages, user_function

    secret = "bench-" + uuid.uuid4().hex
    tenant = FakeTenant(client_secret=secret)
    users = [tenant.add_user(f"user{i}@contoso.com") for i in range(recipients)]
    azurite = Azurite().start()
    server = FakeTenantServer(tenant)
    server.start()
    try:
        env = {
            "MicrosoftAppId": tenant.app_id,
            "MicrosoftAppPassword": secret,
            "MicrosoftAppTenantId": tenant.tenant_id,
            "TeamsAppId": tenant.teams_app_id,
            "ServiceUrl": server.base_url + "/teams/",
            "AuthorityHost": server.base_url,
            "GraphEndpoint": server.base_url,
            "AzureWebJobsStorage": azurite.connection_string,
            "TableNamePrefix": "b" + uuid.uuid4().hex[:12],
            "ServiceBusConnection": "Endpoint=sb://localhost/;SharedAccessKeyName=b;SharedAccessKey=b",
            "TenantSendRatePerSecond": str(app_rate * 2),  # above the emulated limit: 429s are part of the run
            "TenantGraphRatePerSecond": "1000",
            "MaxConcurrentSends": str(concurrency),
            "RetryMaxDelaySeconds": "2",
            "SSL_CERT_FILE": server.ca_pem_path,
        }
        os.environ.update(env)
        if not cold:
            services = build_services(load_settings(env))
            for user in users:
                tenant.install_app(user)
                conversation = tenant.open_conversation(user)
                await services.store.put(
                    ConversationReference(tenant.tenant_id, user.account_id, conversation, env["ServiceUrl"], user.oid),
                    [user.upn],
                )
            await services.aclose()
        tenant.rate_limits = True
        tenant.app_rate_per_second = app_rate
        tenant.clear_log()
        await reset_services()

        started = time.monotonic()
        out = OutputMessages()
        body = json.dumps({"recipients": [u.upn for u in users], "text": "bench"}).encode()
        request = func.HttpRequest(
            "POST",
            "http://localhost/api/notify",
            headers={"Content-Type": "application/json"},
            params={},
            route_params={},
            body=body,
        )
        await user_function("notify")(request, out)
        gate = asyncio.Semaphore(concurrency)

        async def one(message: bytes) -> None:
            for count in range(1, 20):
                msg = ServiceBusMessage(
                    body=message,
                    message_id=str(uuid.uuid4()),
                    delivery_count=count,
                    application_properties={},
                    user_properties={},
                )
                async with gate:
                    try:
                        await user_function("notify_queue")(msg, OutputMessages())
                        return
                    except TransientError:
                        continue

        await asyncio.gather(*(one(m) for m in out.messages))
        wall = time.monotonic() - started
        log = tenant.log
        connector = sum(1 for r in log if r.route.startswith("connector.") and r.status != 429)
        return FanOutResult(
            recipients=recipients,
            cold=cold,
            app_rate=app_rate,
            wall_seconds=round(wall, 2),
            minimum_seconds=round(connector / app_rate, 2),
            connector_requests=connector,
            throttled=sum(1 for r in log if r.status == 429),
            sent=sum(len(tenant.messages_for(u)) for u in users),
        )
    finally:
        await reset_services()
        server.stop()
        azurite.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--app-rate", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cold", action="store_true", help="recipients never messaged before (full resolution)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_fanout.json")
    args = parser.parse_args()
    result = asyncio.run(
        run_fanout(args.recipients, app_rate=args.app_rate, concurrency=args.concurrency, cold=args.cold)
    )
    print("| recipients | path | app rate/s | wall s | minimum s | ratio | 429s | sent |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {result.recipients} | {'cold' if result.cold else 'warm'} | {result.app_rate} | {result.wall_seconds} "
        f"| {result.minimum_seconds} | {result.ratio:.1f}x | {result.throttled} | {result.sent} |"
    )
    args.out.write_text(json.dumps(asdict(result) | {"ratio": round(result.ratio, 2)}, indent=2))


if __name__ == "__main__":
    main()
