"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport. Nothing is built at import time: shared.bootstrap builds the clients on first use.
"""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
