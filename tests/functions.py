"""The function app's functions by name, for tests.

``FunctionApp.get_functions()`` may be called only once per process (azure-functions 1.26 raises
"does not have a unique function name" on the second call, as the host itself calls it once), so
every test module gets them from here.
"""

from __future__ import annotations

import functools
from typing import Any

from azure.functions.decorators.core import Binding
from azure.functions.decorators.function_app import Function

from function_app import app


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
