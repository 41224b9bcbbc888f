"""Property-based: any input to any entrypoint gets an answer, never a crash (issue 16).

Hypothesis generates hostile input for every HTTP function (POST /api/notify, GET/PUT/DELETE
/api/notifications/{id}, POST /api/messages, GET /api/health) and for the Service Bus message body,
and checks, against the healthy fake tenant and Azurite:

- no 5xx answer, and no exception escapes a function (a queue message is sent, kept or completed;
  only a transient error may make Service Bus redeliver it, and none happens in a healthy world);
- every 4xx carries the documented error schema and a code from the error table (docs/ERRORS.md);
- every upstream request keeps each name or id inside one path segment: no ``.``/``..`` segment,
  no request to a route the fake does not know, and the user segment decodes to the recipient.

Bounded: a fixed number of examples per entrypoint, no example database (CI runs the same set size).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from urllib.parse import unquote

import azure.functions as func
import msgspec
import pytest
from azure.functions.servicebus import ServiceBusMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import TransientError
from shared.response_models import ErrorResponse
from tests.conftest import World
from tests.functions import OutputMessages, user_function

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _documented_codes() -> dict[str, int]:
    """The error codes docs/ERRORS.md documents, with their HTTP status (the table under "Error codes")."""
    text = (Path(__file__).parent.parent / "docs" / "ERRORS.md").read_text(encoding="utf-8")
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.M)}


DOCUMENTED = _documented_codes()

# Text a URL or header can carry (no lone surrogates), with the characters that matter most.
HOSTILE_CHARS = st.sampled_from(list("./\\#?%&=+ '\"@:;~*!$()[]{}<>|^`\t\x00\x7f") + ["..", "%2e", "%2F", "é", "😀"])
url_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.lists(HOSTILE_CHARS, max_size=12).map("".join),
    st.sampled_from([".", "..", "", " ", "n-" + "a" * 600, "/" * 300, "#" * 400, "s1.e30"]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
recipients = st.one_of(
    st.sampled_from(["alice@contoso.com", "bob@contoso.com", ".", "..", "../..", "#" * 300, " alice@contoso.com "]),
    url_text,
)
cards = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.just("AdaptiveCard")}, optional={"body": json_values, "x": json_values}),
)
request_objects = st.fixed_dictionaries(
    {},
    optional={
        "recipient": st.one_of(recipients, json_scalars),
        "recipients": st.one_of(st.lists(recipients, max_size=4), json_values),
        "text": st.one_of(st.text(max_size=40), json_scalars),
        "card": cards,
        "summary": st.one_of(st.text(max_size=20), json_scalars),
        "tenantId": st.one_of(st.just(str(uuid.uuid4())), url_text),
        "extra": json_values,
    },
)
# Raw bytes that json.loads would crash on or mis-read, spliced into otherwise valid requests.
POISON_JSON = [
    b"9" * 4400,
    b"1e999",
    b"NaN",
    b"-Infinity",
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b"[" * 100 + b"]" * 100,
    b"[" * 3000 + b"]" * 3000,
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    obj = draw(request_objects)
    raw = json.dumps(obj).encode()
    if kind == 3:
        poison = draw(st.sampled_from(POISON_JSON))
        field = draw(st.sampled_from([b'"card":{"type":"AdaptiveCard","x":', b'"text":', b'"extra":']))
        raw = b'{"recipient":"alice@contoso.com",' + field + poison + (b"}}" if b"card" in field else b"}")
    return raw


def check_answer(response: func.HttpResponse) -> None:
    status = response.status_code
    raw = response.get_body()
    assert status < 500, raw[:300]
    if status >= 400:
        body = json.loads(raw)
        msgspec.convert(body, ErrorResponse)
        code = body["error"]["code"]
        assert code in DOCUMENTED, f"undocumented code {code}"
        assert b"Traceback" not in raw


def check_upstream(world: World, recipients_sent: list[str]) -> None:
    for entry in world.tenant.log:
        if entry.route in ("token", "openid", "botframework.openid", "botframework.jwks"):
            continue
        assert entry.route != "unknown", f"{entry.method} {entry.path} reached no known route"
        segments = entry.path.split("/")
        assert "." not in segments and ".." not in segments, entry.path
        if entry.route.startswith("graph.") and "/users/" in entry.path:
            user = unquote(segments[segments.index("users") + 1])
            assert user in recipients_sent, f"{entry.path} names {user!r}"
    world.tenant.clear_log()


def _names(body: bytes) -> list[str]:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(obj, dict):
        return []
    found = [obj.get("recipient")] + (obj.get("recipients") if isinstance(obj.get("recipients"), list) else [])
    return [n.strip() for n in found if isinstance(n, str)]


@PROPERTY_SETTINGS
@given(
    body=bodies(),
    key=st.one_of(st.none(), url_text),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
)
async def test_notify_answers_every_input(world: World, body: bytes, key: str | None, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = func.HttpRequest("POST", "http://localhost/api/notify", headers=headers, params={}, body=body)

    response = await user_function("notify")(request, OutputMessages())

    check_answer(response)
    check_upstream(world, _names(body))


@PROPERTY_SETTINGS
@given(body=bodies(), message_id=url_text)
async def test_queue_handles_every_body(world: World, body: bytes, message_id: str) -> None:
    msg = ServiceBusMessage(
        body=body,
        message_id=message_id or "m",
        delivery_count=1,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )
    try:
        await user_function("notify_queue")(msg, OutputMessages())
    except TransientError as err:  # pragma: no cover - a healthy world has no transient trouble
        raise AssertionError(f"redelivery asked for a healthy world: {err.code}") from err
    check_upstream(world, _names(body))


KNOWN = "prop-known"


async def _ensure_known_notification(world: World) -> None:
    """A real notification (two recipients, sent) for the update and recall examples to act on."""
    if getattr(world, "_known_sent", False):
        return
    request = func.HttpRequest(
        "POST",
        "http://localhost/api/notify",
        headers={"Content-Type": "application/json", "Idempotency-Key": KNOWN},
        params={},
        body=json.dumps({"recipients": ["alice@contoso.com", "bob@contoso.com"], "text": "Known"}).encode(),
    )
    response = await user_function("notify")(request, OutputMessages())
    assert response.status_code == 200, response.get_body()
    world._known_sent = True  # type: ignore[attr-defined]
    world.tenant.clear_log()


@PROPERTY_SETTINGS
@given(
    notification_id=st.one_of(url_text, st.just(KNOWN)),
    recipient=st.one_of(st.none(), url_text, st.sampled_from(["alice@contoso.com", "BOB@contoso.com"])),
    top=st.one_of(st.none(), url_text, st.integers(-5, 2000).map(str)),
    token=st.one_of(st.none(), url_text),
    body=bodies(),
    method=st.sampled_from(["GET", "PUT", "DELETE"]),
)
async def test_notifications_answer_every_input(
    world: World,
    notification_id: str,
    recipient: str | None,
    top: str | None,
    token: str | None,
    body: bytes,
    method: str,
) -> None:
    params = {
        k: v for k, v in {"recipient": recipient, "top": top, "continuationToken": token}.items() if v is not None
    }
    request = func.HttpRequest(
        method,
        "http://localhost/api/notifications/x",
        headers={"Content-Type": "application/json"},
        params=params,
        route_params={"id": notification_id},
        body=body if method == "PUT" else b"",
    )
    name = {"GET": "notification_status", "PUT": "notification_update", "DELETE": "notification_recall"}[method]
    if notification_id == KNOWN:
        await _ensure_known_notification(world)

    response = await user_function(name)(request)

    check_answer(response)
    check_upstream(world, [])


@PROPERTY_SETTINGS
@given(
    body=st.one_of(bodies(), st.builds(lambda v: json.dumps(v).encode(), json_values)),
    authorization=st.one_of(st.none(), url_text, st.just("Bearer x.y.z"), st.just("valid")),
)
async def test_messages_answers_every_input(world: World, body: bytes, authorization: str | None) -> None:
    headers = {}
    if authorization == "valid":
        headers["Authorization"] = "Bearer " + world.tenant.sign_channel_token(service_url=world.server.service_url)
    elif authorization is not None:
        headers["Authorization"] = authorization
    request = func.HttpRequest("POST", "http://localhost/api/messages", headers=headers, body=body)

    response = await user_function("messages")(request)

    check_answer(response)
    if authorization != "valid":
        assert response.status_code == 401


async def test_health_answers(world: World) -> None:
    response = await user_function("health")(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert response.status_code == 200


@pytest.mark.parametrize("code", ["json_too_deep", "invalid_json", "message_too_large"])
def test_the_codes_this_suite_relies_on_are_documented(code: str) -> None:
    assert code in DOCUMENTED
