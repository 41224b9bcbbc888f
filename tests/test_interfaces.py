"""The published interfaces stay what callers depend on: the Power Automate connector's OpenAPI
definition matches the models the function validates with, the bindings are what README documents,
host.json is what the triggers assume, and every error code the library can produce is documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openapi_spec_validator import OpenAPIV2SpecValidator

from shared.request_models import NotifyRequest, UpdateRequest
from shared.response_models import (
    ChangeResponse,
    ChangeResult,
    DeliveryCounts,
    DeliveryResult,
    ErrorDetail,
    ErrorResponse,
    NotificationStatus,
    NotifyResponse,
)
from shared.storage.idempotency import DEFAULT_LEASE_SECONDS
from tests.functions import bindings

ROOT = Path(__file__).resolve().parent.parent
SWAGGER = json.loads((ROOT / "connector" / "apiDefinition.swagger.json").read_text())
README = (ROOT / "README.md").read_text()
ERRORS_PAGE = (ROOT / "docs" / "ERRORS.md").read_text()


# --- the Power Automate connector ------------------------------------------------------------------


def test_swagger_is_valid_openapi_2() -> None:
    OpenAPIV2SpecValidator(SWAGGER).validate()
    assert SWAGGER["swagger"] == "2.0"


def test_swagger_operation_is_the_notify_function() -> None:
    trigger = bindings("notify")["httpTrigger"]
    operation = SWAGGER["paths"]["/" + trigger["route"]]["post"]
    assert SWAGGER["basePath"] == "/api"
    assert operation["operationId"] == "SendTeamsMessage"
    assert SWAGGER["securityDefinitions"]["api_key"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-functions-key",
        "description": SWAGGER["securityDefinitions"]["api_key"]["description"],
    }
    [body] = [p for p in operation["parameters"] if p["in"] == "body"]
    assert body["schema"] == {"$ref": "#/definitions/NotifyRequest"}
    assert {p["name"] for p in operation["parameters"] if p["in"] == "header"} == {
        "Idempotency-Key",
        "x-correlation-id",
    }
    assert operation["responses"]["200"]["schema"] == {"$ref": "#/definitions/NotifyResponse"}
    # One recipient only: its answer is always a NotifyResponse (many recipients: SendTeamsMessageToMany).
    assert "202" not in operation["responses"]
    for status, response in operation["responses"].items():
        if status != "200":
            assert response["schema"] == {"$ref": "#/definitions/ErrorResponse"}, status
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    properties = json.loads((ROOT / "connector" / "apiProperties.json").read_text())["properties"]
    assert properties["connectionParameters"]["api_key"]["type"] == "securestring"


def test_swagger_many_recipient_operation_is_its_function() -> None:
    trigger = bindings("notification_create")["httpTrigger"]
    assert trigger["route"] == "notifications"
    assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == ["POST"]
    operation = SWAGGER["paths"]["/notifications"]["post"]
    assert operation["operationId"] == "SendTeamsMessageToMany"
    [body] = [p for p in operation["parameters"] if p["in"] == "body"]
    assert body["schema"] == {"$ref": "#/definitions/NotifyManyRequest"}
    # Synchronous with the id: 200 with the status, never a 202 (which starts Power Automate's polling).
    assert operation["responses"]["200"]["schema"] == {"$ref": "#/definitions/NotificationStatus"}
    assert "202" not in operation["responses"] and "Location" not in operation["responses"]["200"]["headers"]
    assert "`notification_create`" in README
    assert bindings("notification_create")["serviceBus"]["queueName"] == "%ServiceBusQueueName%"


# The connector's two send actions each show one of the request's two ways to name users.
_REQUEST_VIEWS = {"NotifyRequest": "recipients", "NotifyManyRequest": "recipient"}


def _json_schema_property(schema: dict[str, Any]) -> dict[str, Any]:
    """A property of a model's JSON Schema without the null branch of an optional field (and the type
    of a ``Literal``, which JSON Schema states by its ``enum`` alone)."""
    if "anyOf" in schema:
        [branch] = [b for b in schema["anyOf"] if b.get("type") != "null"]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        return _json_schema_property({**outer, **branch, "nullable": True})
    if "enum" in schema and "type" not in schema and all(isinstance(v, str) for v in schema["enum"]):
        return {**schema, "type": "string"}
    return schema


@pytest.mark.parametrize(
    ("model", "definition"),
    [
        (NotifyRequest, "NotifyRequest"),
        (NotifyRequest, "NotifyManyRequest"),
        (NotifyResponse, "NotifyResponse"),
        (ErrorResponse, "ErrorResponse"),
        (ErrorDetail, "ErrorDetail"),
        (NotificationStatus, "NotificationStatus"),
        (DeliveryResult, "DeliveryResult"),
        (DeliveryCounts, "DeliveryCounts"),
        (UpdateRequest, "UpdateRequest"),
        (ChangeResponse, "ChangeResponse"),
        (ChangeResult, "ChangeResult"),
    ],
)
def test_swagger_definitions_match_the_models(model: type[msgspec.Struct], definition: str) -> None:
    swagger = SWAGGER["definitions"][definition]
    schema = msgspec.json.schema_components([model])[1][model.__name__]
    model_required = {f.encode_name for f in msgspec.structs.fields(model) if f.required}

    hidden = _REQUEST_VIEWS.get(definition)
    if hidden is not None:
        # A view of the request: one way of naming users, required there (the model needs one of them).
        shown = "recipient" if hidden == "recipients" else "recipients"
        assert set(swagger["properties"]) == set(schema["properties"]) - {hidden}
        assert swagger["required"] == [shown] and not model_required
        swagger = {**swagger, "properties": {k: v for k, v in swagger["properties"].items() if k != shown}}
    else:
        assert set(swagger["properties"]) == set(schema["properties"])
        assert set(swagger.get("required", [])) == model_required == set(schema.get("required", []))
    assert swagger["additionalProperties"] is False and schema["additionalProperties"] is False
    for name, prop in swagger["properties"].items():
        assert prop.get("x-ms-summary") and prop.get("description"), f"{definition}.{name} needs a summary"
        ours = _json_schema_property(schema["properties"][name])
        if "$ref" in ours:
            assert prop["$ref"].rsplit("/", 1)[-1] == ours["$ref"].rsplit("/", 1)[-1]
            continue
        assert prop["type"] == ours["type"], name
        for keyword in ("pattern", "minLength", "maxLength"):
            assert prop.get(keyword) == ours.get(keyword), f"{definition}.{name}.{keyword}"
        assert prop["description"] == ours["description"], f"{definition}.{name} description drifted"
        # A response field that can be null is marked so for Power Automate (optional request
        # fields are simply left out by callers, so they are not marked).
        if ours.get("type") == "array":
            assert prop["items"].get("$ref", "").rsplit("/", 1)[-1] == ours["items"].get("$ref", "").rsplit("/", 1)[-1]
        if ours.get("enum") is not None:
            assert sorted(prop["enum"]) == sorted(ours["enum"]), f"{definition}.{name}"  # msgspec sorts them
        if definition not in ("NotifyRequest", "NotifyManyRequest", "UpdateRequest"):
            assert prop.get("x-nullable", False) == ours.get("nullable", False), f"{definition}.{name}"


@pytest.mark.parametrize(
    ("method", "operation_id", "function", "schema"),
    [
        ("get", "GetNotificationStatus", "notification_status", "NotificationStatus"),
        ("put", "UpdateTeamsMessage", "notification_update", "ChangeResponse"),
        ("delete", "RecallTeamsMessage", "notification_recall", "ChangeResponse"),
    ],
)
def test_swagger_notification_operations_are_the_functions(
    method: str, operation_id: str, function: str, schema: str
) -> None:
    trigger = bindings(function)["httpTrigger"]
    assert trigger["route"] == "notifications/{id}"
    assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == [method.upper()]
    operation = SWAGGER["paths"]["/" + trigger["route"]][method]
    assert operation["operationId"] == operation_id
    assert operation["responses"]["200"]["schema"] == {"$ref": f"#/definitions/{schema}"}
    for status, response in operation["responses"].items():
        if status != "200":
            assert response["schema"] == {"$ref": "#/definitions/ErrorResponse"}, status
    if method == "put":
        [body] = [p for p in operation["parameters"] if p["in"] == "body"]
        assert body["schema"] == {"$ref": "#/definitions/UpdateRequest"}
    assert f"`{function}`" in README


def test_fan_out_output_bindings_write_to_the_trigger_queue() -> None:
    for function in ("notify", "notify_queue"):
        output = bindings(function)["serviceBus"]
        assert output["queueName"] == "%ServiceBusQueueName%"
        assert output["connection"] == "ServiceBusConnection"


# --- bindings and host.json ------------------------------------------------------------------------


def test_http_binding_is_what_readme_documents() -> None:
    trigger = bindings("notify")["httpTrigger"]
    assert trigger["route"] == "notify"
    assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == ["POST"]
    assert str(getattr(trigger["authLevel"], "value", trigger["authLevel"])) == "function"
    assert "| `notify` | `POST /api/notify` (function key)" in README


def test_service_bus_binding_is_what_readme_documents() -> None:
    trigger = bindings("notify_queue")["serviceBusTrigger"]
    assert trigger["queueName"] == "%ServiceBusQueueName%"
    assert trigger["connection"] == "ServiceBusConnection"
    assert "| `notify_queue` | Service Bus queue `%ServiceBusQueueName%`" in README


def _seconds(timespan: str) -> int:
    hours, minutes, seconds = (int(p) for p in timespan.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def test_host_json_suits_the_triggers() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    service_bus = host["extensions"]["serviceBus"]
    # Completion is by return/raise: the trigger raises to have a message redelivered.
    assert service_bus["autoCompleteMessages"] is True
    # Teams allows ~30-50 sends/s per app per tenant: a few concurrent sends per instance.
    assert 1 <= service_bus["maxConcurrentCalls"] <= 8
    # A stale in-flight marker is taken over after twice the function timeout.
    assert DEFAULT_LEASE_SECONDS == _seconds(host["functionTimeout"]) + 60


# --- error codes -------------------------------------------------------------------------------------


def _codes_in_library() -> set[str]:
    codes: set[str] = set()
    for path in (ROOT / "shared").rglob("*.py"):  # subpackages too (shared/storage/)
        codes |= set(re.findall(r'\bcode\s*=\s*"([a-z_]+)"', path.read_text()))
    codes |= {"internal_error"}  # the HTTP trigger's answer to a bug
    return codes - {"notify_error"}  # the abstract base's placeholder


def test_every_error_code_is_documented_with_its_status() -> None:
    section = ERRORS_PAGE.split("## Error codes (troubleshooting)", 1)[1].split("\n## ", 1)[0]
    documented = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([a-z_]+)` \| (\d{3})", section, re.M)}
    missing = _codes_in_library() - set(documented)
    assert not missing, f"error codes missing from docs/ERRORS.md's Error codes table: {sorted(missing)}"
    stale = set(documented) - _codes_in_library()
    assert not stale, f"docs/ERRORS.md documents codes the library no longer produces: {sorted(stale)}"


def test_indexing_the_app_loads_no_library() -> None:
    """The host's cold start imports function_app and indexes it: the functions import the library on
    first invocation, so none of its heavy dependencies load then (bench row 4). Only shared.authmode
    is read then (stdlib only): ApiAuthMode chooses the HTTP functions' auth level."""
    probe = (
        "import sys\n"
        "from function_app import app\n"
        "names = [f.get_function_name() for f in app.get_functions()]\n"
        "heavy = ('shared', 'httpx', 'msgspec', 'msal', 'botbuilder', 'botframework', 'aiohttp', 'azure.data')\n"
        "light = {'shared', 'shared.authmode'}\n"
        "print(sorted({m for m in sys.modules if m.startswith(heavy)} - light), len(names))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert run.stdout.split() == ["[]", "9"], run.stdout
