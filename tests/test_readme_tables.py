"""The Retries and Error codes tables of docs/ERRORS.md checked against what the code does, so they cannot drift.

Retries: for every upstream request in the table and every status of interest, the fake answers that
status once and the test counts how often the app asked: twice where docs/ERRORS.md says "retried inline",
once otherwise. Error codes: every code the library raises is in the table with the HTTP status it is
raised with (read from the source: the error class's default or the ``http_status=`` given).
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import shared.errors
from shared.bootstrap import reset_services
from tests.conftest import World
from tests.functions import OutputMessages, notify_request, user_function

ROOT = Path(__file__).resolve().parent.parent
ERRORS_PAGE = (ROOT / "docs" / "ERRORS.md").read_text()
STATUSES = (404, 412, 429, 500, 502, 503, 504)


def _section(title: str) -> str:
    return ERRORS_PAGE.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def retry_table() -> dict[str, set[int]]:
    """The Retries table (docs/ERRORS.md): upstream request -> the statuses it says are retried inline."""
    rows: dict[str, set[int]] = {}
    for line in _section("Retries (per upstream request)").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith(("Graph:", "Connector:")):
            rows[cells[0]] = {int(n) for n in re.findall(r"\b\d{3}\b", cells[1])}
    return rows


def test_the_retry_table_names_every_upstream_request() -> None:
    assert set(retry_table()) == set(SCENARIOS)


async def post(body: dict[str, Any], key: str | None = None) -> int:
    request = notify_request(body, key)
    response: func.HttpResponse = await user_function("notify")(request, OutputMessages())
    return response.status_code


async def change(name: str, method: str, key: str, body: Any = None) -> None:
    request = func.HttpRequest(
        method,
        f"http://localhost/api/notifications/{key}",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={"id": key},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    await user_function(name)(request)


Scenario = Callable[[World, str], Awaitable[str]]


def cold_send(route: str, *, installed: bool = False, chat_id_refused: bool = False) -> Scenario:
    """A first send to a new user (a fresh process: nothing memoised); the fault is on ``route``.
    ``installed``: the app is already installed for the user (Graph's list is asked once).
    ``chat_id_refused``: the tenant's connector refuses the installation's chat id as a conversation
    id, so the send falls back to the chat's members and creating the conversation."""

    async def run(world: World, fault_route: str) -> str:
        user = world.tenant.add_user(f"u{uuid.uuid4().hex[:10]}@contoso.com", installed=installed)
        await reset_services()
        if chat_id_refused:
            world.tenant.refuse_chat_id_conversations()
        try:
            arm()
            await post({"recipient": user.upn, "text": "hello"})
        finally:
            world.tenant.refuse_chat_id_conversations(refused=False)
        return route

    return run


def sent_then(name: str, method: str, route: str) -> Scenario:
    """A keyed send, then an update or recall of it; the fault is on ``route``."""

    async def run(world: World, fault_route: str) -> str:
        user = world.tenant.add_user(f"u{uuid.uuid4().hex[:10]}@contoso.com")
        key = "k-" + uuid.uuid4().hex[:12]
        assert await post({"recipient": user.upn, "text": "v1"}, key=key) == 200
        arm()
        await change(name, method, key, {"text": "v2"} if method == "PUT" else None)
        return route

    return run


# Set by the test before a scenario runs: arms the fault right before the request under test.
_ARM: list[Callable[[], None]] = []


def arm() -> None:
    for fn in _ARM:
        fn()


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "Graph: list installed apps": ("graph.installed_apps", cold_send("graph.installed_apps", installed=True)),
    "Graph: org catalog": ("graph.catalog", cold_send("graph.catalog")),
    "Graph: install the app": ("graph.install", cold_send("graph.install")),
    "Graph: installation chat": ("graph.chat", cold_send("graph.chat")),
    "Connector: chat members": ("connector.members", cold_send("connector.members", chat_id_refused=True)),
    "Connector: create conversation": ("connector.create", cold_send("connector.create", chat_id_refused=True)),
    "Connector: send": ("connector.send", cold_send("connector.send")),
    "Connector: update": ("connector.update", sent_then("notification_update", "PUT", "connector.update")),
    "Connector: delete": ("connector.delete", sent_then("notification_recall", "DELETE", "connector.delete")),
}
# Documented in the table's last column as something else than a retry: Graph's install answering
# 400/404 makes the app look the catalog id up again and install once more.
SPECIAL = {("Graph: install the app", 404)}
# Documented in the last column too: a 404 on a cold send to the installation's chat id is the
# connector refusing the chat id, so the send goes once more through the members fallback.
FALLBACK = {("Connector: send", 404): "members fallback"}


@pytest.mark.parametrize("row", sorted(SCENARIOS))
async def test_the_retry_table_is_what_the_code_does(
    world: World, row: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="azure")
    monkeypatch.setenv("TenantGraphRatePerSecond", "1000")
    monkeypatch.setenv("TenantSendRatePerSecond", "1000")
    route, scenario = SCENARIOS[row]
    documented = retry_table()[row]
    observed: dict[int, int] = {}
    for status in STATUSES:
        if (row, status) in SPECIAL:
            continue
        world.tenant.clear_faults()
        _ARM[:] = [lambda status=status: world.tenant.add_fault(route, status, retry_after=0)]  # type: ignore[misc]
        before = world.tenant.calls(route)
        try:
            await scenario(world, route)
        finally:
            _ARM.clear()
        observed[status] = world.tenant.calls(route) - before
    for (fallback_row, _status), words in FALLBACK.items():
        if fallback_row == row:
            assert words in _section("Retries (per upstream request)"), row
    expected = {status: 2 if status in documented or (row, status) in FALLBACK else 1 for status in observed}
    assert observed == expected, f"{row}: docs/ERRORS.md says {sorted(documented)} are retried"


# --- Error codes ---------------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[shared.errors.NotifyError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(shared.errors, inspect.isclass)
        if issubclass(cls, shared.errors.NotifyError)
    }


def codes_and_statuses() -> set[tuple[str, int]]:
    """Every (code, HTTP status) the library raises: error classes' own codes, and every
    ``SomeError(..., code="x"[, http_status=N])`` in shared/ (status: given, else the class's)."""
    classes = _error_classes()
    found = {(cls.code, cls.http_status) for cls in classes.values() if cls.code != "notify_error"}
    for path in (ROOT / "shared").rglob("*.py"):  # subpackages too (shared/storage/)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes):
                continue
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            code, status = keywords.get("code"), keywords.get("http_status")
            if not (isinstance(code, ast.Constant) and isinstance(code.value, str)):
                continue
            default = classes[node.func.id].http_status
            value = status.value if isinstance(status, ast.Constant) else default
            found.add((code.value, int(value)))
    return found


def test_every_error_code_is_in_the_table_with_the_status_it_is_raised_with() -> None:
    section = _section("Error codes (troubleshooting)")
    documented: set[tuple[str, int]] = set()
    for m in re.finditer(r"^\| `([a-z_]+)` \| (\d{3}) \|(.*)$", section, re.M):
        documented.add((m.group(1), int(m.group(2))))
        # "(500 when it is MicrosoftAppTenantId)": another status the row documents.
        documented |= {(m.group(1), int(n)) for n in re.findall(r"\((\d{3}) when", m.group(3))}
    raised = codes_and_statuses()
    # internal_error (500) is the triggers' answer to a bug, not a NotifyError.
    assert raised - documented == set(), "raised with another status than docs/ERRORS.md says, or undocumented"
    # A code chosen at run time (``code = "unknown_field" if ... else ...``) is raised with its class's status.
    named = {
        c for path in (ROOT / "shared").rglob("*.py") for c in re.findall(r'\bcode\s*=\s*"([a-z_]+)"', path.read_text())
    }
    known = {c for c, _ in raised} | named | {"internal_error"}
    stale = {entry for entry in documented - raised if entry[0] not in known}
    assert stale == set(), "docs/ERRORS.md documents codes the library no longer raises"
