"""GET /api/health through the function app object: 200 when settings and storage are usable, 503
naming the failing check's code otherwise; never a secret or tenant data."""

from __future__ import annotations

import json
import socket

import azure.functions as func
import pytest

from tests.azurite import ACCOUNT, KEY
from tests.conftest import CLIENT_SECRET, World
from tests.functions import bindings, user_function


async def call_health() -> func.HttpResponse:
    trigger = bindings("health")["httpTrigger"]
    assert trigger["authLevel"] == func.AuthLevel.ANONYMOUS and trigger["route"] == "health"
    assert [str(m) for m in trigger["methods"]] == ["GET"]
    request = func.HttpRequest("GET", "http://localhost/api/health", headers={}, body=b"")
    response: func.HttpResponse = await user_function("health")(request)
    return response


def assert_nothing_sensitive(world: World, text: str) -> None:
    for value in (CLIENT_SECRET, world.tenant.tenant_id, world.tenant.app_id, world.tenant.teams_app_id, "eyJ"):
        assert value not in text


async def test_health_is_ok_when_settings_and_storage_are(world: World) -> None:
    response = await call_health()
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert json.loads(response.get_body()) == {
        "status": "ok",
        "checks": {"settings": {"status": "ok"}, "store": {"status": "ok"}},
    }
    assert_nothing_sensitive(world, response.get_body().decode())
    assert world.tenant.calls() == 0  # readiness costs no token and no Graph call


async def test_health_is_503_with_configuration_error_when_a_setting_is_missing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TeamsAppId")
    response = await call_health()
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["status"] == "unavailable" and body["error"] == {"code": "configuration_error"}
    assert body["checks"] == {
        "settings": {"status": "fail", "code": "configuration_error"},
        "store": {"status": "skipped"},
    }
    assert_nothing_sensitive(world, response.get_body().decode())


async def test_health_is_503_with_storage_unavailable_when_the_store_is_down(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};",
    )
    response = await call_health()
    body = json.loads(response.get_body())
    assert response.status_code == 503 and body["error"] == {"code": "storage_unavailable"}
    assert body["checks"]["settings"] == {"status": "ok"}
    assert body["checks"]["store"] == {"status": "fail", "code": "storage_unavailable"}
    assert_nothing_sensitive(world, response.get_body().decode())
