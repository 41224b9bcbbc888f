"""The function app's functions by name, for tests.

``FunctionApp.get_functions()`` may be called only once per process (azure-functions 1.26 raises
"does not have a unique function name" on the second call, as the host itself calls it once), so
every test module gets them from here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import azure.functions as func
from azure.functions.decorators.core import Binding
from azure.functions.decorators.function_app import Function

from function_app import app


def shorten_waits(**waits: float) -> None:
    """Make the process's waits (shared.bootstrap.Waits) short for this test, e.g. ``http_in_flight=0.2``:
    what would take minutes runs at once. Each test starts with fresh services (tests/conftest.py)."""
    import msgspec

    from shared.bootstrap import get_services

    services = get_services()
    services.waits = msgspec.structs.replace(services.waits, **waits)


@functools.cache
def functions() -> dict[str, Function]:
    return {f.get_function_name(): f for f in app.get_functions()}


def user_function(name: str) -> Any:
    """The function as the host calls it (a coroutine function for async triggers)."""
    return functions()[name].get_user_function()


def bindings(name: str) -> dict[str, dict[str, Any]]:
    """A function's bindings by type ("httpTrigger", "serviceBusTrigger", ...), as the host sees them."""
    found: list[Binding] = functions()[name].get_bindings()
    return {b.get_dict_repr()["type"]: b.get_dict_repr() for b in found}


class OutputMessages(func.Out[str]):
    """A Service Bus output binding as the host provides it: what the function sets becomes messages
    (a JSON array is written as one message per element, as the Functions host does)."""

    def __init__(self) -> None:
        self._value: str | None = None

    def set(self, val: str) -> None:
        self._value = val

    def get(self) -> str:
        return self._value or ""

    @property
    def messages(self) -> list[bytes]:
        if self._value is None:
            return []
        parsed = json.loads(self._value)
        items = parsed if isinstance(parsed, list) else [parsed]
        return [json.dumps(item).encode() for item in items]


def notify_request(body: Any, key: str | None = None) -> func.HttpRequest:
    """``POST /api/notify`` with a JSON body, and an ``Idempotency-Key`` when ``key`` is given."""
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    return func.HttpRequest(
        "POST",
        "http://localhost/api/notify",
        headers=headers,
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )
