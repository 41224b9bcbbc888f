"""ApiAuthMode read alone with the standard library, because the host needs it when it indexes the app.

The HTTP functions' auth level is chosen at indexing time (function_app.API_AUTH), before the library
and msgspec load (the host's cold start). shared.settings validates the same setting strictly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

ApiAuthMode = Literal["FunctionKey", "EntraId"]
# Accepted spellings, case-insensitive.
API_AUTH_MODES: dict[str, ApiAuthMode] = {"functionkey": "FunctionKey", "entraid": "EntraId"}


def api_auth_mode(env: Mapping[str, str] | None = None) -> ApiAuthMode:
    """The ``ApiAuthMode`` alone, for the function app's HTTP auth level at indexing time (EntraId:
    the host checks no function key, the app checks the bearer token). An unknown value counts as
    FunctionKey (the host keeps checking keys); shared.settings.load_settings reports it."""
    value = ((os.environ if env is None else env).get("ApiAuthMode") or "").strip().lower()
    return "EntraId" if value == "entraid" else "FunctionKey"
