"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport. Nothing is built at import time: shared.bootstrap builds the clients on first use.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared.bootstrap import get_services
from shared.errors import NotifyError, TransientError
from shared.inbound import handle_activity

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


# --- The bot's messaging endpoint -----------------------------------------------------------------


@app.route(route="messages", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def messages(req: func.HttpRequest) -> func.HttpResponse:
    """Bot Framework activities from Teams. Anonymous at the function level: the channel's JWT in the
    Authorization header is the authentication (401 without a valid one)."""
    try:
        await handle_activity(get_services(), req.headers.get("Authorization"), req.get_body())
    except NotifyError as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else {}
        if isinstance(err, TransientError):
            headers["Retry-After"] = str(max(1, round(err.retry_after)))
        return func.HttpResponse(
            json.dumps(err.to_body()), status_code=err.http_status, headers=headers, mimetype="application/json"
        )
    return func.HttpResponse(status_code=200)
