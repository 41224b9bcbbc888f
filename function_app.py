"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport. Nothing is built at import time: shared.bootstrap builds the clients on first use.
"""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


# --- operations: GET /api/health (issue 7) ------------------------------------------------------


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness and readiness (settings, Table Storage). No secrets, no tenant data."""
    import json

    from shared.health import check_health

    report = await check_health()
    return func.HttpResponse(
        json.dumps(report.to_body()),
        status_code=report.status_code,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )
