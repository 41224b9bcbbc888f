"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport. Nothing is built at import time: shared.bootstrap builds the clients on first use.

| function      | trigger                                          | library call                      |
| ------------- | ------------------------------------------------ | --------------------------------- |
| notify        | HTTP POST /api/notify (function key)             | shared.service.handle_notify      |
| notify_queue  | Service Bus %ServiceBusQueueName% (ServiceBusConnection) | shared.service.handle_queue_message |
"""

from __future__ import annotations

import json

import azure.functions as func

# The library (httpx, pydantic, MSAL, azure-data-tables) is imported on the first invocation, not
# when the host indexes the functions: a cold start pays only for azure.functions.

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("notify")
@app.route(route="notify", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def notify(req: func.HttpRequest) -> func.HttpResponse:
    from shared.service import handle_notify

    outcome = await handle_notify(
        req.get_body(),
        content_type=req.headers.get("content-type"),
        idempotency_key=req.headers.get("idempotency-key"),
        correlation_id=req.headers.get("x-correlation-id") or req.headers.get("x-ms-client-tracking-id"),
    )
    headers = {"x-correlation-id": outcome.correlation_id or ""}
    if outcome.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(outcome.retry_after)))
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return func.HttpResponse(
        json.dumps(outcome.body), status_code=outcome.status, headers=headers, mimetype="application/json"
    )


@app.function_name("notify_queue")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
async def notify_queue(msg: func.ServiceBusMessage) -> None:
    from shared.service import QueueDelivery, handle_queue_message

    # Returning completes the message (host.json autoCompleteMessages); raising abandons it, so
    # Service Bus redelivers it and dead-letters it after the queue's maxDeliveryCount.
    await handle_queue_message(
        QueueDelivery(
            body=msg.get_body(),
            message_id=msg.message_id,
            delivery_count=msg.delivery_count,
            enqueued_time=msg.enqueued_time_utc,
            correlation_id=msg.correlation_id,
        )
    )
