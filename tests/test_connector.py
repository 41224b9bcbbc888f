"""The Power Automate custom connector (connector/) against what the function app really does: every
action authenticates with the one key the instructions name, the answers the functions really return
validate against the swagger's response schemas, and the files pass the PowerPlatformConnectors
schemas (what ``paconn validate`` checks, offline) and the connector guidance on titles."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import azure.functions as func
import jsonschema
import pytest

from tests.conftest import World
from tests.functions import OutputMessages, bindings, functions, user_function
from tests.test_fanout import run_queue

ROOT = Path(__file__).resolve().parent.parent
SWAGGER = json.loads((ROOT / "connector" / "apiDefinition.swagger.json").read_text(encoding="utf-8"))
PROPERTIES = json.loads((ROOT / "connector" / "apiProperties.json").read_text(encoding="utf-8"))
SCHEMAS = Path(__file__).resolve().parent / "powerplatform"
METHODS = ("get", "put", "post", "delete", "patch")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in SWAGGER["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def function_for(path: str, method: str) -> str:
    """The function app's function that serves a swagger operation (by route and method)."""
    found = []
    for name in functions():
        trigger = bindings(name).get("httpTrigger")
        if trigger is None:
            continue
        methods = [str(getattr(m, "value", m)).lower() for m in trigger["methods"]]
        if SWAGGER["basePath"] + path == "/api/" + trigger["route"] and method in methods:
            found.append(name)
    assert len(found) == 1, (path, method, found)
    return found[0]


# --- one key for every action ------------------------------------------------------------------------


def test_every_action_uses_the_one_key_the_instructions_name() -> None:
    # Two alternative security definitions for the whole API (the key, the simple mode; Entra ID OAuth 2.0,
    # ApiAuthMode EntraId), and no operation overriding them: in key mode the one key serves every action.
    assert list(SWAGGER["securityDefinitions"]) == ["api_key", "oauth2_auth"]
    assert SWAGGER["security"] == [{"api_key": []}, {"oauth2_auth": []}]
    parameters = PROPERTIES["properties"]["connectionParameters"]
    assert list(parameters) == ["api_key"] and parameters["api_key"]["type"] == "securestring"
    for path, method, operation in operations():
        assert "security" not in operation, operation["operationId"]
        # A host key authorises every function of authLevel "function"; a function key only its own
        # function; an admin-level function would need the master key.
        trigger = bindings(function_for(path, method))["httpTrigger"]
        assert str(getattr(trigger["authLevel"], "value", trigger["authLevel"])) == "function", path
    assert len({function_for(p, m) for p, m, _ in operations()}) == len(operations()) == 5

    # The same instruction wherever the key is asked for: the default host key.
    api_page = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    deployment = (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    instructions = {
        "apiProperties": parameters["api_key"]["uiDefinition"]["description"],
        "swagger": SWAGGER["securityDefinitions"]["api_key"]["description"],
        "API": api_page.split("### Power Automate", 1)[1].split("\n### ", 1)[0],
        "DEPLOYMENT": deployment.split("### Power Automate custom connector", 1)[1].split("\n## ", 1)[0],
    }
    for where, text in instructions.items():
        flat = " ".join(text.split()).replace("*", "")
        assert "default host key" in flat, where
        assert "authorises only" in flat, where  # and why a function key is not the one
    assert "functionKeys.default" in instructions["API"] + instructions["DEPLOYMENT"]


# --- the connector files against the PowerPlatformConnectors schemas and guidance -----------------------


def _schema(name: str) -> dict[str, Any]:
    """One of the vendored schemas; they carry a few ``// ...`` comments (JSONC), dropped here."""
    text = (SCHEMAS / name).read_text(encoding="utf-8")
    lines = [re.sub(r"\s+//[^\"\n]*$", "", line) for line in text.splitlines() if not line.strip().startswith("//")]
    loaded: dict[str, Any] = json.loads("\n".join(lines))
    return loaded


def test_the_connector_files_pass_the_power_platform_connector_schemas() -> None:
    definition_schema = _schema("apiDefinition.swagger.schema.json")
    properties_schema = _schema("paconn-apiProperties.schema.json")
    jsonschema.Draft4Validator(definition_schema).validate(SWAGGER)
    jsonschema.Draft7Validator(properties_schema).validate(PROPERTIES)


_SMALL_WORDS = {"a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "by", "as"}


def _is_title_case(text: str) -> bool:
    words = text.split()
    return all(w[0].isupper() or (i > 0 and w in _SMALL_WORDS) for i, w in enumerate(words)) and text[-1] != "."


def _summaries(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "x-ms-summary" and isinstance(v, str)]
        return found + [s for k, v in node.items() if k != "x-ms-summary" for s in _summaries(v)]
    if isinstance(node, list):
        return [s for item in node for s in _summaries(item)]
    return []


def test_summaries_are_title_case_and_advanced_fields_are_advanced() -> None:
    for _, _, operation in operations():
        summary = operation["summary"]
        assert _is_title_case(summary) and len(summary) <= 80, summary
        assert operation.get("description"), operation["operationId"]
    labels = _summaries(SWAGGER)
    assert len(labels) > 40
    for label in labels:
        assert _is_title_case(label), label
    # What most flows never set is under "Show advanced options".
    advanced = {
        ("NotifyRequest", "tenantId"),
        ("NotifyRequest", "summary"),
        ("NotifyManyRequest", "tenantId"),
        ("NotifyManyRequest", "summary"),
        ("UpdateRequest", "summary"),
    }
    for definition, name in advanced:
        assert SWAGGER["definitions"][definition]["properties"][name]["x-ms-visibility"] == "advanced", name
    for _, _, operation in operations():
        for parameter in operation.get("parameters", []):
            if parameter["name"] in ("x-correlation-id", "top", "continuationToken"):
                assert parameter["x-ms-visibility"] == "advanced", (operation["operationId"], parameter["name"])


# --- real answers against the swagger's response schemas ------------------------------------------------


def _json_schema(node: Any) -> Any:
    """A swagger 2.0 schema as JSON Schema: ``x-nullable`` becomes a null branch."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-")}
    if node.get("x-nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def check_against_swagger(path: str, method: str, response: func.HttpResponse) -> dict[str, Any]:
    """Validate a function's real answer against the swagger: its status is declared (or the default),
    its body validates against that response's schema, and the headers Power Automate acts on
    (Location, Retry-After) are declared for that status."""
    operation = SWAGGER["paths"][path][method]
    status = str(response.status_code)
    declared = operation["responses"].get(status)
    assert declared is not None or response.status_code >= 400, f"{operation['operationId']} answered {status}"
    declared = declared or operation["responses"]["default"]
    body = json.loads(response.get_body())
    schema = {**_json_schema(copy.deepcopy(declared["schema"])), "definitions": _json_schema(SWAGGER["definitions"])}
    jsonschema.Draft4Validator(schema).validate(body)
    for header in ("Location", "Retry-After"):
        if header in response.headers:
            assert header in declared.get("headers", {}), f"{operation['operationId']} {status}: {header} undeclared"
    return dict(body)


def _request(method: str, url: str, body: Any = None, **kwargs: Any) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        url,
        headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
        params=kwargs.pop("params", {}),
        route_params=kwargs.pop("route_params", {}),
        body=json.dumps(body).encode() if body is not None else b"",
    )


async def _call(path: str, method: str, body: Any = None, **kwargs: Any) -> tuple[func.HttpResponse, list[bytes]]:
    name = function_for(path, method)
    route_params = kwargs.get("route_params", {})
    url = "https://app.example/api" + path.format(**route_params)
    request = _request(method.upper(), url, body, **kwargs)
    if "serviceBus" in bindings(name):
        out = OutputMessages()
        response: func.HttpResponse = await user_function(name)(request, out)
        return response, out.messages
    return await user_function(name)(request), []


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TenantSendRatePerSecond", "1000")
    monkeypatch.setenv("TenantGraphRatePerSecond", "1000")


async def test_real_answers_of_every_action_validate_against_the_swagger(world: World) -> None:
    crew = [world.tenant.add_user(f"crew{i}@contoso.com") for i in range(25)]
    seen: set[tuple[str, str, int]] = set()

    async def call(path: str, method: str, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        response, messages = await _call(path, method, body, **kwargs)
        seen.add((path, method, response.status_code))
        return response.status_code, check_against_swagger(path, method, response), (response, messages)

    # Send a Teams Message to a User: sent, and the caller's mistakes.
    status, sent, _ = await call("/notify", "post", {"recipient": "alice@contoso.com", "text": "Build 42 passed"})
    assert status == 200 and sent["notificationId"] and sent["activityId"]
    keyed = {"recipient": "bob@contoso.com", "text": "Invoice 7", "summary": "Invoice"}
    status, sent_keyed, _ = await call("/notify", "post", keyed, headers={"Idempotency-Key": "inv-7"})
    assert status == 200 and sent_keyed["notificationId"] == "inv-7"
    assert (await call("/notify", "post", {"recipient": "nobody@contoso.com", "text": "hi"}))[0] == 404
    assert (await call("/notify", "post", {"recipient": "alice@contoso.com"}))[0] == 400
    other = {"recipient": "bob@contoso.com", "text": "Another"}
    assert (await call("/notify", "post", other, headers={"Idempotency-Key": "inv-7"}))[0] == 422

    # Send a Teams Message to Many Users: up to 20 at once, more queued; 200 either way, no Location.
    few = {"recipients": ["alice@contoso.com", "bob@contoso.com", "nobody@contoso.com"], "text": "Standup"}
    status, answer, _ = await call("/notifications", "post", few)
    assert (
        status == 200
        and answer["finished"] is True
        and answer["counts"]
        == {
            "pending": 0,
            "sent": 2,
            "failed": 1,
            "recalled": 0,
        }
    )
    many = {"recipients": [u.upn for u in crew], "text": "Fire drill at 3"}
    status, queued, (response, messages) = await call("/notifications", "post", many)
    assert status == 200 and queued["finished"] is False and queued["counts"]["pending"] == 25
    assert "Location" not in response.headers and len(messages) == 25
    one = {"recipient": "alice@contoso.com", "text": "hi"}
    status, wrong, _ = await call("/notifications", "post", one)
    assert status == 400 and wrong["error"]["target"] == "recipients"

    # Get the Status while queued and when finished, then Update and Recall.
    route = {"route_params": {"id": queued["notificationId"]}}
    status, pending, _ = await call("/notifications/{id}", "get", **route)
    assert status == 200 and pending["finished"] is False
    await run_queue(messages)
    status, done, _ = await call("/notifications/{id}", "get", params={"top": "5"}, **route)
    assert status == 200 and done["finished"] is True and done["continuationToken"] and len(done["recipients"]) == 5
    status, updated, _ = await call("/notifications/{id}", "put", {"text": "Fire drill moved to 4"}, **route)
    assert status == 200 and {r["outcome"] for r in updated["results"]} == {"updated"}
    status, recalled, _ = await call("/notifications/{id}", "delete", params={"recipient": crew[0].upn}, **route)
    assert status == 200 and recalled["results"] == [{"recipient": crew[0].upn, "outcome": "recalled", "error": None}]
    single = {"route_params": {"id": sent["notificationId"]}}
    assert (await call("/notifications/{id}", "get", **single))[1]["counts"]["sent"] == 1
    assert (await call("/notifications/{id}", "delete", **single))[0] == 200
    unknown = {"route_params": {"id": "no-such-notification"}}
    assert (await call("/notifications/{id}", "get", **unknown))[0] == 404
    assert (await call("/notifications/{id}", "put", {"text": "x"}, **unknown))[0] == 404

    # Every action was exercised with a success and an error.
    for path, method, _ in operations():
        codes = {code for p, m, code in seen if (p, m) == (path, method)}
        assert 200 in codes and any(c >= 400 for c in codes) or method == "delete", (path, method, codes)


async def test_a_throttled_send_answers_what_the_swagger_declares_with_retry_after(world: World) -> None:
    world.tenant.add_fault("connector.send", 429, count=4, retry_after=600)
    response, _ = await _call("/notify", "post", {"recipient": "alice@contoso.com", "text": "hi"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "600"
    assert check_against_swagger("/notify", "post", response)["error"]["code"] == "upstream_unavailable"
    response, _ = await _call("/notifications", "post", {"recipients": ["alice@contoso.com"], "text": "hi"})
    body = check_against_swagger("/notifications", "post", response)
    assert response.status_code == 200 and body["counts"]["pending"] == 1 and "Retry-After" in response.headers


def test_the_swagger_is_still_what_the_function_routes_are() -> None:
    routes = {("/api/" + bindings(n)["httpTrigger"]["route"]) for n in functions() if "httpTrigger" in bindings(n)}
    for path, _, _ in operations():
        assert SWAGGER["basePath"] + path in routes
    assert re.fullmatch(r"[a-z0-9.-]+", SWAGGER["host"])
