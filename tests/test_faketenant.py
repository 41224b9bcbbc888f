"""Tests of the loopback fake itself (sync httpx against a started server)."""

from __future__ import annotations

import http.client
import json
import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from faketenant import FakeTenant, FakeTenantServer, FakeUser

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
BOT_SCOPE = "https://api.botframework.com/.default"


@pytest.fixture(autouse=True)
def _quiet_test_client_urls() -> None:
    """This module's own httpx client logs request URLs (with UPNs) at INFO; the product quiets the
    same logger when it builds its services, which a run of this module alone never does."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


@pytest.fixture()
def tenant() -> FakeTenant:
    return FakeTenant(
        tenant_id=str(uuid.uuid4()),
        app_id=str(uuid.uuid4()),
        teams_app_id=str(uuid.uuid4()),
        client_secret="s3cret-value",
    )


@pytest.fixture()
def server(tenant: FakeTenant) -> Iterator[FakeTenantServer]:
    with FakeTenantServer(tenant) as srv:
        yield srv


@pytest.fixture()
def client(server: FakeTenantServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, verify=server.ssl_context(), timeout=5) as c:
        yield c


def get_token(client: httpx.Client, tenant: FakeTenant, scope: str, authority: str | None = None) -> str:
    resp = client.post(
        f"/{authority or tenant.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": tenant.app_id,
            "client_secret": tenant.client_secret,
            "scope": scope,
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 3000
    return str(body["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def install_and_get_chat(client: httpx.Client, tenant: FakeTenant, user: FakeUser, token: str) -> str:
    catalog = client.get(
        "/v1.0/appCatalogs/teamsApps",
        params={"$filter": f"distributionMethod eq 'organization' and externalId eq '{tenant.teams_app_id}'"},
        headers=auth(token),
    )
    catalog_id = catalog.json()["value"][0]["id"]
    path = f"/v1.0/users/{user.upn}/teamwork/installedApps"
    bind = {"teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{catalog_id}"}
    assert client.post(path, json=bind, headers=auth(token)).status_code == 201
    listed = client.get(
        path,
        params={"$expand": "teamsApp", "$filter": f"teamsApp/externalId eq '{tenant.teams_app_id}'"},
        headers=auth(token),
    ).json()["value"]
    return str(listed[0]["id"])


def test_token_secret_checks(client: httpx.Client, tenant: FakeTenant) -> None:
    token = get_token(client, tenant, GRAPH_SCOPE)
    assert token.count(".") == 2
    bad = client.post(
        f"/{tenant.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": tenant.app_id,
            "client_secret": "wrong",
            "scope": GRAPH_SCOPE,
        },
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client" and bad.json()["error_codes"] == [7000215]
    unknown_tenant = client.post(
        f"/{uuid.uuid4()}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": tenant.app_id,
            "client_secret": tenant.client_secret,
            "scope": GRAPH_SCOPE,
        },
    )
    assert unknown_tenant.status_code == 400 and unknown_tenant.json()["error_codes"] == [90002]
    # A forged bearer token is refused by Graph.
    forged = client.get("/v1.0/appCatalogs/teamsApps", headers=auth(token[:-4] + "AAAA"))
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert all("secret" not in repr(e) for e in tenant.log)


def test_install_chat_ready_after_and_conflict(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("o'neil@contoso.com", display_name="Alice O'Neil")
    tenant.chat_ready_after = 0.5
    token = get_token(client, tenant, GRAPH_SCOPE)
    path = f"/v1.0/users/{alice.upn.upper()}/teamwork/installedApps"
    params = {"$expand": "teamsApp", "$filter": f"teamsApp/externalId eq '{tenant.teams_app_id}'"}
    assert client.get(path, params=params, headers=auth(token)).json()["value"] == []
    installation_id = install_and_get_chat(client, tenant, alice, token)
    again = client.post(
        path,
        json={"teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{tenant.catalog_id}"},
        headers=auth(token),
    )
    assert again.status_code == 409
    chat_path = f"/v1.0/users/{alice.oid}/teamwork/installedApps/{installation_id}/chat"
    # The chat appears after a time, not after a number of requests.
    first = client.get(chat_path, headers=auth(token))
    assert first.status_code == 404 and first.json()["error"]["code"] == "NotFound"
    time.sleep(0.6)
    second = client.get(chat_path, headers=auth(token))
    assert second.status_code == 200
    assert second.json()["id"] == f"19:{alice.oid}_{tenant.app_id}@unq.gbl.spaces"
    # The quoted $filter value with a doubled quote is parsed: a non-matching id gives nothing.
    other = {"$filter": "teamsApp/externalId eq 'o''neil'"}
    assert client.get(path, params=other, headers=auth(token)).json()["value"] == []
    assert tenant.calls("graph.chat") == 2 and tenant.calls("graph.install") == 2


def test_unknown_user_and_missing_role(client: httpx.Client, tenant: FakeTenant) -> None:
    tenant.add_user("bob@contoso.com")
    tenant.consented_roles.discard("TeamsAppInstallation.ReadWriteSelfForUser.All")
    token = get_token(client, tenant, GRAPH_SCOPE)
    resp = client.get("/v1.0/users/bob@contoso.com/teamwork/installedApps", headers=auth(token))
    assert resp.status_code == 403
    message = resp.json()["error"]["message"]
    assert "TeamsAppInstallation.ReadWriteSelfForUser.All" in message
    assert "Roles on the request 'AppCatalog.Read.All'" in message
    tenant.consented_roles.add("TeamsAppInstallation.ReadWriteSelfForUser.All")
    token = get_token(client, tenant, GRAPH_SCOPE)
    missing = client.get("/v1.0/users/nobody@contoso.com/teamwork/installedApps", headers=auth(token))
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "User Id 'nobody@contoso.com' not found."


def test_fault_injection_consumes_count(client: httpx.Client, tenant: FakeTenant) -> None:
    tenant.add_fault("token", 503, count=2, retry_after=0.25)
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.app_id,
        "client_secret": tenant.client_secret,
        "scope": GRAPH_SCOPE,
    }
    statuses = []
    for _ in range(3):
        resp = client.post(f"/{tenant.tenant_id}/oauth2/v2.0/token", data=form)
        statuses.append(resp.status_code)
        if resp.status_code == 503:
            assert resp.headers["Retry-After"] == "0.25"
    assert statuses == [503, 503, 200]
    assert [e.status for e in tenant.log if e.route == "token"] == [503, 503, 200]
    tenant.add_fault("graph.catalog", 200, malformed=True)
    token = get_token(client, tenant, GRAPH_SCOPE)
    malformed = client.get("/v1.0/appCatalogs/teamsApps", headers=auth(token))
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()
    with pytest.raises(ValueError):
        tenant.add_fault("graph.nope", 500)


def test_send_update_delete_and_errors(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com", display_name="Alice Smith", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    create_body = {
        "isGroup": False,
        "bot": {"id": f"28:{tenant.app_id}"},
        "members": [{"id": alice.account_id}],
        "tenantId": tenant.tenant_id,
    }
    created = client.post("/teams/v3/conversations", json=create_body, headers=auth(token))
    assert created.status_code == 201
    cid = created.json()["id"]
    assert cid.startswith("a:")
    assert client.post("/teams/v3/conversations", json=create_body, headers=auth(token)).json()["id"] == cid
    no_tenant = {k: v for k, v in create_body.items() if k != "tenantId"}
    assert client.post("/teams/v3/conversations", json=no_tenant, headers=auth(token)).status_code == 400

    sent = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "hello"}, headers=auth(token)
    )
    assert sent.status_code == 201
    aid = sent.json()["id"]
    upd = client.put(
        f"/teams/v3/conversations/{cid}/activities/{aid}",
        json={"type": "message", "text": "edited"},
        headers=auth(token),
    )
    assert upd.status_code == 200
    [msg] = tenant.messages_for(alice)
    assert msg["activity"]["text"] == "edited" and msg["updated"] == 1
    assert client.delete(f"/teams/v3/conversations/{cid}/activities/{aid}", headers=auth(token)).status_code == 200
    gone = client.delete(f"/teams/v3/conversations/{cid}/activities/{aid}", headers=auth(token))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ActivityNotFound"
    assert tenant.messages_for(alice) == []

    tenant.block_bot(alice)
    blocked = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "x"}, headers=auth(token)
    )
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "ConversationBlockedByUser"
    assert "X-Correlating-OperationId" in blocked.headers
    tenant.unblock_bot(alice)
    tenant.uninstall_app(alice)
    roster = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "x"}, headers=auth(token)
    )
    assert roster.json()["error"]["code"] == "BotNotInConversationRoster"
    tenant.install_app(alice)
    tenant.delete_conversation(cid)
    stale = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "x"}, headers=auth(token)
    )
    assert stale.status_code == 404 and stale.json()["error"]["code"] == "ConversationNotFound"
    fresh = client.post("/teams/v3/conversations", json=create_body, headers=auth(token)).json()["id"]
    assert fresh != cid
    graph_token = get_token(client, tenant, GRAPH_SCOPE)
    wrong_aud = client.post(
        f"/teams/v3/conversations/{fresh}/activities", json={"type": "message", "text": "x"}, headers=auth(graph_token)
    )
    assert wrong_aud.status_code == 401


def test_rate_limits_give_429_with_retry_after(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com", installed=True)
    tenant.rate_limits = True
    token = get_token(client, tenant, BOT_SCOPE, authority=tenant.tenant_id)
    cid = tenant.open_conversation(alice)
    started = time.monotonic()
    statuses = [
        client.post(
            f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": str(i)}, headers=auth(token)
        )
        for i in range(8)
    ]
    assert [r.status_code for r in statuses] == [201] * 7 + [429]
    assert statuses[-1].json()["error"]["code"] == "Throttled"
    retry_after = float(statuses[-1].headers["Retry-After"])
    assert 0 < retry_after <= 1.0
    assert retry_after >= 1.0 - (time.monotonic() - started) - 0.05
    time.sleep(retry_after)
    again = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "later"}, headers=auth(token)
    )
    assert again.status_code == 201


def test_requests_share_one_keep_alive_connection(
    server: FakeTenantServer, client: httpx.Client, tenant: FakeTenant
) -> None:
    """The fake answers HTTP/1.1 keep-alive, so a client pays one TLS handshake, as with Graph and Teams.

    (Its per-request latency, which needs TCP_NODELAY on the handler, is a bench figure, not a timed test.)
    """
    tenant.add_user("alice@contoso.com", installed=True)
    token = get_token(client, tenant, GRAPH_SCOPE)
    host, port = server.base_url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=server.ssl_context(), timeout=5)
    try:
        first_socket = None
        for _ in range(20):
            conn.request("GET", "/v1.0/users/alice@contoso.com/teamwork/installedApps", headers=auth(token))
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["value"]
            first_socket = first_socket or conn.sock
            assert conn.sock is first_socket
    finally:
        conn.close()


def test_tenant_isolation_and_guest_upn(client: httpx.Client, tenant: FakeTenant) -> None:
    other = tenant.add_tenant(str(uuid.uuid4()))
    guest = tenant.add_user("guest_fabrikam.com#EXT#@contoso.onmicrosoft.com", installed=True)
    tenant.add_user("carol@fabrikam.com", tenant_id=other, installed=True)
    token_a = get_token(client, tenant, GRAPH_SCOPE)
    token_b = get_token(client, tenant, GRAPH_SCOPE, authority=other)
    encoded = "guest_fabrikam.com%23EXT%23@contoso.onmicrosoft.com"
    listed = client.get(f"/v1.0/users/{encoded}/teamwork/installedApps", headers=auth(token_a))
    assert listed.status_code == 200 and listed.json()["value"][0]["id"] == tenant.installation_id_for(guest)
    assert client.get("/v1.0/users/carol@fabrikam.com/teamwork/installedApps", headers=auth(token_a)).status_code == 404
    assert client.get("/v1.0/users/carol@fabrikam.com/teamwork/installedApps", headers=auth(token_b)).status_code == 200
    assert {e.tenant_id for e in tenant.log if e.route == "graph.installed_apps"} == {tenant.tenant_id, other}


def test_msal_secret_and_federated_managed_identity(
    server: FakeTenantServer, tenant: FakeTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    msal = pytest.importorskip("msal")
    requests = pytest.importorskip("requests")
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify=
    session.verify = server.ca_pem_path
    app = msal.ConfidentialClientApplication(
        tenant.app_id,
        client_credential=tenant.client_secret,
        authority=f"{server.base_url}/{tenant.tenant_id}",
        http_client=session,
        instance_discovery=False,
    )
    first = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert "access_token" in first, first
    second = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert second["access_token"] == first["access_token"]
    assert tenant.calls("token") == 1

    monkeypatch.setenv("IDENTITY_ENDPOINT", server.base_url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", tenant.identity_header)
    mi = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(client_id=tenant.managed_identity_client_id), http_client=session
    )

    def assertion() -> str:
        return str(mi.acquire_token_for_client(resource="api://AzureADTokenExchange")["access_token"])

    fed = msal.ConfidentialClientApplication(
        tenant.app_id,
        client_credential={"client_assertion": assertion},
        authority=f"{server.base_url}/botframework.com",
        http_client=session,
        instance_discovery=False,
    )
    bot = fed.acquire_token_for_client(["https://api.botframework.com/.default"])
    assert "access_token" in bot, bot
    tenant.federated_credential_enabled = False
    refused = msal.ConfidentialClientApplication(
        tenant.app_id,
        client_credential={"client_assertion": assertion},
        authority=f"{server.base_url}/{tenant.tenant_id}",
        http_client=session,
        instance_discovery=False,
    ).acquire_token_for_client(["https://api.botframework.com/.default"])
    assert "access_token" not in refused and "AADSTS70021" in refused["error_description"]


def test_channel_token_verifies_against_published_jwks(
    client: httpx.Client, tenant: FakeTenant, server: FakeTenantServer
) -> None:
    import jwt

    meta = client.get("/botframework/v1/.well-known/openidconfiguration").json()
    assert meta["issuer"] == "https://api.botframework.com"
    keys = client.get(meta["jwks_uri"].removeprefix(server.base_url)).json()["keys"]
    assert "msteams" in keys[0]["endorsements"]
    token = tenant.sign_channel_token(service_url=server.service_url, tid=tenant.tenant_id)
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK({k: v for k, v in next(k for k in keys if k["kid"] == kid).items() if k != "endorsements"})
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=tenant.app_id, issuer="https://api.botframework.com"
    )
    assert claims["serviceurl"] == server.service_url and claims["tid"] == tenant.tenant_id
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            tenant.sign_channel_token(audience="someone-else"), key.key, algorithms=["RS256"], audience=tenant.app_id
        )


def test_control_endpoints(client: httpx.Client, tenant: FakeTenant) -> None:
    created = client.post("/_fake/users", json={"upn": "dave@contoso.com", "installed": True})
    assert created.status_code == 201
    assert client.post("/_fake/settings", json={"chat_ready_after": 3, "rate_limits": True}).status_code == 204
    assert tenant.chat_ready_after == 3.0 and tenant.rate_limits is True
    assert client.post("/_fake/faults", json={"route": "connector.send", "status": 503}).status_code == 204
    assert client.post("/_fake/faults", json={"route": "bogus", "status": 503}).status_code == 400
    dave = tenant.find_user("DAVE@contoso.com")
    assert dave is not None and tenant.is_installed(dave)
    token = get_token(client, tenant, BOT_SCOPE)
    cid = tenant.open_conversation(dave)
    path = f"/teams/v3/conversations/{cid}/activities"
    assert client.post(path, json={"type": "message", "text": "hi"}, headers=auth(token)).status_code == 503
    assert client.post(path, json={"type": "message", "text": "hi"}, headers=auth(token)).status_code == 201
    messages = client.get("/_fake/messages").json()
    assert [m["activity"]["text"] for m in messages["dave@contoso.com"]] == ["hi"]
    assert "hi" in client.get("/_fake/").text
    log = client.get("/_fake/log").json()
    assert [e["route"] for e in log] == ["token", "connector.send", "connector.send"]
    assert client.post("/_fake/log/clear").status_code == 204 and tenant.log == []


def test_entra_access_tokens_verify_against_the_tenants_published_keys(
    client: httpx.Client, tenant: FakeTenant
) -> None:
    """The OpenID configuration's jwks_uri serves the key that signs the tenant's access tokens (and
    not the Bot Framework channel key)."""
    import jwt

    config = client.get(f"/{tenant.tenant_id}/v2.0/.well-known/openid-configuration").json()
    keys = client.get(config["jwks_uri"].replace(tenant.base_url or "", "")).json()["keys"]
    token = tenant.sign_access_token("api://the-api", roles=["Notifications.Send"], client_id="client-1")
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in keys if k["kid"] == kid]
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience="api://the-api")
    assert claims["iss"] == config["issuer"] and claims["tid"] == tenant.tenant_id
    assert claims["azp"] == "client-1" and claims["roles"] == ["Notifications.Send"] and claims["ver"] == "2.0"
    channel_kid = jwt.get_unverified_header(tenant.sign_channel_token())["kid"]
    assert channel_kid not in {k["kid"] for k in keys}
    assert client.get(f"/{uuid.uuid4()}/discovery/v2.0/keys").status_code == 400


# --- Teams and Graph as they really behave (issue 14) -------------------------------------------------


def open_chat(client: httpx.Client, tenant: FakeTenant, user: FakeUser, token: str) -> str:
    created = client.post(
        "/teams/v3/conversations",
        json={
            "isGroup": False,
            "bot": {"id": f"28:{tenant.app_id}"},
            "members": [{"id": user.account_id}],
            "tenantId": tenant.tenant_id,
        },
        headers=auth(token),
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


WRITES_BLOCKED = {"errorCode": 209, "message": '{"subCode":"MessageWritesBlocked"}'}


def test_blocked_and_uninstalled_give_the_same_documented_403(client: httpx.Client, tenant: FakeTenant) -> None:
    tenant.message_writes_blocked = True
    alice = tenant.add_user("alice@contoso.com", installed=True)
    bob = tenant.add_user("bob@contoso.com", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    alice_chat, bob_chat = open_chat(client, tenant, alice, token), open_chat(client, tenant, bob, token)
    tenant.block_bot(alice)
    tenant.uninstall_app(bob)
    answers = [
        client.post(
            f"/teams/v3/conversations/{c}/activities", json={"type": "message", "text": "x"}, headers=auth(token)
        )
        for c in (alice_chat, bob_chat)
    ]
    assert [a.status_code for a in answers] == [403, 403]
    assert answers[0].json() == answers[1].json() == WRITES_BLOCKED
    # Reinstalled, the same conversation takes messages again; the blocked user's still does not.
    tenant.install_app(bob)
    again = client.post(
        f"/teams/v3/conversations/{bob_chat}/activities", json={"type": "message", "text": "y"}, headers=auth(token)
    )
    assert again.status_code == 201
    assert [m["activity"]["text"] for m in tenant.messages_for(bob)] == ["y"]
    assert tenant.messages_for(alice) == []


def test_update_and_delete_are_gated_by_installation_and_block(client: httpx.Client, tenant: FakeTenant) -> None:
    tenant.message_writes_blocked = True
    alice = tenant.add_user("alice@contoso.com", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    cid = open_chat(client, tenant, alice, token)
    sent = client.post(
        f"/teams/v3/conversations/{cid}/activities", json={"type": "message", "text": "v1"}, headers=auth(token)
    )
    path = f"/teams/v3/conversations/{cid}/activities/{sent.json()['id']}"
    tenant.uninstall_app(alice)
    update = client.put(path, json={"type": "message", "text": "v2"}, headers=auth(token))
    delete = client.delete(path, headers=auth(token))
    for answer in (update, delete):
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "BotNotInConversationRoster"
    tenant.install_app(alice)
    tenant.block_bot(alice)
    blocked = client.delete(path, headers=auth(token))
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "ConversationBlockedByUser"
    # Nothing was updated or deleted: the message is still in the chat as sent.
    [kept] = tenant.messages_for(alice)
    assert kept["activity"]["text"] == "v1" and kept["updated"] == 0


def test_install_blocked_by_app_permission_policy_for_one_user(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com")
    bob = tenant.add_user("bob@contoso.com")
    tenant.block_app_by_policy(bob)
    token = get_token(client, tenant, GRAPH_SCOPE)
    bind = {"teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{tenant.catalog_id}"}
    ok = client.post(f"/v1.0/users/{alice.upn}/teamwork/installedApps", json=bind, headers=auth(token))
    refused = client.post(f"/v1.0/users/{bob.upn}/teamwork/installedApps", json=bind, headers=auth(token))
    assert ok.status_code == 201
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "Forbidden" and error["message"].startswith("App is blocked by app permission policy.")
    assert error["innerError"]["code"] == "AccessDenied"
    assert "Missing role permissions" not in error["message"]
    assert tenant.is_installed(alice) and not tenant.is_installed(bob)


def test_chat_appears_seconds_after_install_not_requests(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com")
    tenant.chat_ready_after = 1.0
    graph = get_token(client, tenant, GRAPH_SCOPE)
    installation_id = install_and_get_chat(client, tenant, alice, graph)
    chat_path = f"/v1.0/users/{alice.oid}/teamwork/installedApps/{installation_id}/chat"
    bot = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    chat_id = tenant.chat_id_for(alice)
    for _ in range(5):  # however often one asks
        assert client.get(chat_path, headers=auth(graph)).status_code == 404
        members = client.get(f"/teams/v3/conversations/{chat_id}/members", headers=auth(bot))
        assert members.status_code == 404 and members.json()["error"]["code"] == "ConversationNotFound"
    time.sleep(1.05)
    assert client.get(chat_path, headers=auth(graph)).json()["id"] == chat_id
    assert client.get(f"/teams/v3/conversations/{chat_id}/members", headers=auth(bot)).status_code == 200


def test_message_size_is_measured_as_teams_does(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    cid = open_chat(client, tenant, alice, token)
    path = f"/teams/v3/conversations/{cid}/activities"

    def send(text: str, **extra: object) -> httpx.Response:
        body = json.dumps({"type": "message", "text": text, **extra}, ensure_ascii=False).encode()
        return client.post(path, content=body, headers={**auth(token), "Content-Type": "application/json"})

    # 10,000 characters of Japanese: 20 KB as UTF-16 (30 KB as UTF-8): delivered.
    assert send("お知らせ" * 2500).status_code == 201
    # 51,300 ASCII characters: 51 KB on the wire, 102.6 KB as UTF-16: over Teams' ~100 KB.
    over = send("x" * 51_300)
    assert over.status_code == 413 and over.json()["error"]["code"] == "MessageSizeTooBig"
    # A base64 image is not counted.
    image = "data:image/png;base64," + "A" * 150_000
    card = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {"type": "AdaptiveCard", "body": [{"type": "Image", "url": image}]},
    }
    assert send("see the chart", attachments=[card]).status_code == 201
    # Any body over 262,144 bytes is refused by the connector itself.
    huge = send("see", attachments=[{**card, "content": {**card["content"], "pad": "A" * 262_144}}])
    assert huge.status_code == 413
    assert huge.json()["error"]["message"] == "The request content length exceeded limit of 262144 bytes."
    assert [m["activity"]["text"][:4] for m in tenant.messages_for(alice)] == ["お知らせ", "see "]


def test_regional_service_urls_and_the_wrong_geo(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    cid = open_chat(client, tenant, alice, token)
    activity = {"type": "message", "text": "hi"}
    # No geo set: every regional URL works (msteams-docs#2410).
    assert (
        client.post(f"/emea/v3/conversations/{cid}/activities", json=activity, headers=auth(token)).status_code == 201
    )
    tenant.set_geo("emea")
    assert tenant.service_url_for(alice).endswith("/emea/")
    tenant.set_geo("eudb")  # the tenant moved (EU Data Boundary)
    moved = client.post(f"/emea/v3/conversations/{cid}/activities", json=activity, headers=auth(token))
    assert moved.status_code == 400
    assert moved.json()["error"] == {
        "code": "BadArgument",
        "message": "Incoming request was redirected to the wrong geo! Current geo: EMEA, Target geo: EUDB",
    }
    assert client.get(f"/emea/v3/conversations/{cid}/members", headers=auth(token)).status_code == 400
    assert (
        client.post(f"/eudb/v3/conversations/{cid}/activities", json=activity, headers=auth(token)).status_code == 201
    )
    assert (
        client.post(f"/teams/v3/conversations/{cid}/activities", json=activity, headers=auth(token)).status_code == 201
    )
    assert len(tenant.messages_for(alice)) == 3
    with pytest.raises(ValueError):
        tenant.set_geo("mars")


def test_delivered_then_an_error_or_a_timeout(client: httpx.Client, tenant: FakeTenant) -> None:
    alice = tenant.add_user("alice@contoso.com", installed=True)
    token = get_token(client, tenant, BOT_SCOPE, authority="botframework.com")
    cid = open_chat(client, tenant, alice, token)
    path = f"/teams/v3/conversations/{cid}/activities"
    tenant.add_fault("connector.send", 502, applied=True)
    answer = client.post(path, json={"type": "message", "text": "one"}, headers=auth(token))
    assert answer.status_code == 502
    tenant.add_fault("connector.send", 504, applied=True, delay=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.post(path, json={"type": "message", "text": "two"}, headers=auth(token), timeout=0.2)
    time.sleep(0.4)
    # Both were stored although the sender saw an error.
    assert [m["activity"]["text"] for m in tenant.messages_for(alice)] == ["one", "two"]
