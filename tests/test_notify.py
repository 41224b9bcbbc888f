"""The notify pipeline end to end: the real library against the wire-level fake tenant and Azurite.

Each test states the outcome a user of the product sees and checks the calls the fake recorded.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.bootstrap import Services, build_services
from shared.errors import ConfigurationError, NotifyError, RecipientError, TransientError
from shared.message_content import MessageContent
from tests.conftest import World

HELLO = MessageContent(text="Your **report** is ready")
UPSTREAM = ("graph.", "connector.")


def upstream_calls(world: World) -> list[str]:
    """Graph and connector routes in order (token and metadata requests are left out)."""
    return [r.route for r in world.tenant.log if r.route.startswith(UPSTREAM)]


async def test_cold_send_installs_the_app_resolves_and_sends(world: World, services: Services) -> None:
    alice = world.user("alice")
    result = await services.notifier.send("alice@contoso.com", HELLO)

    assert result.resolved and result.activity_id
    assert upstream_calls(world) == [
        "graph.installed_apps",
        "graph.catalog",
        "graph.install",
        "graph.installed_apps",
        "graph.chat",
        "connector.send",
    ]
    assert world.tenant.is_installed(alice)
    [delivered] = world.tenant.messages_for(alice)
    assert delivered["activity"]["text"] == "Your **report** is ready"
    assert delivered["activity"]["textFormat"] == "markdown"


async def test_cold_send_to_installed_user_then_warm_send_is_one_request(world: World, services: Services) -> None:
    bob = world.user("bob")
    world.tenant.install_app(bob)
    await services.notifier.send("bob@contoso.com", HELLO)
    assert upstream_calls(world) == [
        "graph.installed_apps",
        "graph.chat",
        "connector.send",
    ]

    world.tenant.clear_log()
    result = await services.notifier.send("bob@contoso.com", MessageContent(text="second"))
    assert not result.resolved
    assert [r.route for r in world.tenant.log] == ["connector.send"]
    assert [m["activity"]["text"] for m in world.tenant.messages_for(bob)] == ["Your **report** is ready", "second"]


async def test_memoised_entry_survives_a_process_restart(world: World, services: Services) -> None:
    world.tenant.install_app(world.user("bob"))
    await services.notifier.send("bob@contoso.com", HELLO)

    fresh_process = build_services(world.settings)
    try:
        world.tenant.clear_log()
        await fresh_process.notifier.send("BOB@contoso.com", MessageContent(text="from another instance"))
    finally:
        await fresh_process.aclose()
    # Only a token (new process) and the send: the entry came from Table Storage.
    assert upstream_calls(world) == ["connector.send"]


async def test_card_and_summary_are_sent_as_an_adaptive_card(world: World, services: Services) -> None:
    card = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approve?"}]}
    await services.notifier.send("alice@contoso.com", MessageContent(card=card, summary="Approval needed"))
    [delivered] = world.tenant.messages_for(world.user("alice"))
    activity = delivered["activity"]
    assert activity["attachments"] == [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]
    assert activity["summary"] == "Approval needed" and "text" not in activity


async def test_stale_conversation_is_evicted_resolved_again_and_sent(world: World, services: Services) -> None:
    alice = world.user("alice")
    await services.notifier.send("alice@contoso.com", HELLO)
    gone = {"error": {"code": "ConversationNotFound", "message": "Conversation not found."}}
    world.tenant.add_fault("connector.send", 404, body=gone)
    world.tenant.clear_log()

    again = await services.notifier.send("alice@contoso.com", MessageContent(text="after the conversation was deleted"))
    assert again.resolved
    assert upstream_calls(world) == [
        "connector.send",
        "graph.installed_apps",
        "graph.chat",
        "connector.send",
    ]
    assert world.tenant.messages_for(alice)[-1]["activity"]["text"] == "after the conversation was deleted"


async def test_uninstalled_app_is_reinstalled_once(world: World, services: Services) -> None:
    alice = world.user("alice")
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.uninstall_app(alice)
    world.tenant.clear_log()

    await services.notifier.send("alice@contoso.com", MessageContent(text="reinstalled"))
    assert upstream_calls(world).count("graph.install") == 1
    assert world.tenant.is_installed(alice)
    assert world.tenant.messages_for(alice)[-1]["activity"]["text"] == "reinstalled"


async def test_a_second_stale_answer_is_not_looped_on(world: World, services: Services) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.clear_log()
    not_found = {"error": {"code": "ConversationNotFound", "message": "Conversation not found."}}
    world.tenant.add_fault("connector.send", 404, count=5, body=not_found)

    with pytest.raises(TransientError) as caught:
        await services.notifier.send("alice@contoso.com", MessageContent(text="never delivered"))
    assert caught.value.code == "conversation_unavailable" and caught.value.retry_after > 0
    # The stale entry, the fresh chat id, and the members fallback's conversation: not looped on.
    assert world.tenant.calls("connector.send") == 3
    # The entry that kept failing is not left in the cache.
    assert await services.store.get(world.tenant.tenant_id, "alice@contoso.com") is None


@pytest.mark.parametrize(
    ("arrange", "recipient", "error_type", "code", "target"),
    [
        (lambda w: None, "nobody@contoso.com", RecipientError, "recipient_not_found", "recipient"),
        (
            lambda w: w.tenant.remove_from_catalog(),
            "alice@contoso.com",
            ConfigurationError,
            "app_not_in_catalog",
            "TeamsAppId",
        ),
        (
            lambda w: w.tenant.consented_roles.discard("TeamsAppInstallation.ReadWriteSelfForUser.All"),
            "alice@contoso.com",
            ConfigurationError,
            "missing_permission",
            "TeamsAppInstallation.ReadWriteSelfForUser.All",
        ),
        (
            lambda w: w.tenant.consented_roles.discard("AppCatalog.Read.All"),
            "alice@contoso.com",
            ConfigurationError,
            "missing_permission",
            "AppCatalog.Read.All",
        ),
        (
            lambda w: w.tenant.block_bot(w.user("alice")),
            "alice@contoso.com",
            RecipientError,
            "recipient_blocked_bot",
            "recipient",
        ),
        (
            lambda w: w.tenant.disable_bot_for_tenant(),
            "alice@contoso.com",
            RecipientError,
            "bot_disabled_by_admin",
            "recipient",
        ),
        (
            lambda w: setattr(w.tenant, "client_secret", "rotated-elsewhere"),
            "alice@contoso.com",
            ConfigurationError,
            "invalid_client_credential",
            "MicrosoftAppPassword",
        ),
    ],
    ids=[
        "unknown-user",
        "not-in-catalog",
        "no-install-consent",
        "no-catalog-consent",
        "blocked",
        "admin-disabled",
        "bad-secret",
    ],
)
async def test_each_failure_has_its_own_code(
    world: World,
    services: Services,
    arrange: object,
    recipient: str,
    error_type: type[NotifyError],
    code: str,
    target: str,
) -> None:
    arrange(world)  # type: ignore[operator]
    with pytest.raises(error_type) as caught:
        await services.notifier.send(recipient, HELLO)
    assert caught.value.code == code
    assert caught.value.target == target
    assert world.tenant.activities() == []


async def test_blocked_user_evicts_the_cache_entry(world: World, services: Services) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.block_bot(world.user("alice"))
    with pytest.raises(RecipientError, match="blocked"):
        await services.notifier.send("alice@contoso.com", HELLO)
    assert await services.store.get(world.tenant.tenant_id, "alice@contoso.com") is None


async def test_throttling_is_retried_after_retry_after(world: World, services: Services) -> None:
    world.tenant.add_fault("connector.send", 429, count=2, retry_after=0.05)
    result = await services.notifier.send("alice@contoso.com", HELLO)
    assert result.activity_id
    assert world.tenant.calls("connector.send") == 3
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


@pytest.mark.parametrize("route", ["graph.installed_apps", "graph.chat", "connector.members", "connector.send"])
async def test_persistent_503_is_a_transient_error_with_retry_after(
    world: World, services: Services, route: str
) -> None:
    if route == "connector.members":
        world.tenant.refuse_chat_id_conversations()  # the members call is the fallback of such a tenant
    world.tenant.add_fault(route, 503, count=50, retry_after=0.01)
    with pytest.raises(TransientError) as caught:
        await services.notifier.send("alice@contoso.com", HELLO)
    assert caught.value.code == "upstream_unavailable" and caught.value.retry_after >= 1
    assert world.tenant.calls(route) == world.settings.retry_max_attempts


async def test_malformed_upstream_body_is_transient(world: World, services: Services) -> None:
    world.tenant.add_fault("graph.installed_apps", 200, malformed=True)
    with pytest.raises(TransientError):
        await services.notifier.send("alice@contoso.com", HELLO)


async def test_chat_that_appears_shortly_after_install_is_waited_for(world: World, services: Services) -> None:
    # Within one request's inline retries (RetryMaxAttempts=4: backoff of at least 1.75 s in all).
    world.tenant.chat_ready_after = 0.7
    result = await services.notifier.send("alice@contoso.com", HELLO)
    assert result.activity_id
    assert world.tenant.calls("graph.chat") >= 2


@pytest.mark.parametrize("name", ["oneil", "guest"])
async def test_upns_with_quotes_and_ext_markers_resolve_and_cache(world: World, services: Services, name: str) -> None:
    user = world.user(name)
    await services.notifier.send(user.upn, HELLO)
    assert len(world.tenant.messages_for(user)) == 1
    world.tenant.clear_log()
    await services.notifier.send(user.upn, HELLO)
    assert upstream_calls(world) == ["connector.send"]
    # The object id the connector reported is an alias of the same cache entry.
    world.tenant.clear_log()
    await services.notifier.send(user.oid, HELLO)
    assert upstream_calls(world) == ["connector.send"]


async def test_object_id_recipient(world: World, services: Services) -> None:
    bob = world.user("bob")
    first = await services.notifier.send(bob.oid, HELLO)
    assert len(world.tenant.messages_for(bob)) == 1
    world.tenant.clear_log()
    await services.notifier.send(bob.oid, HELLO)
    assert upstream_calls(world) == ["connector.send"]
    # The chat id names no UPN: a first send by UPN resolves (3 requests) to the same conversation,
    # until Teams' install activity on /api/messages memoises the UPN (test_messages).
    world.tenant.clear_log()
    by_upn = await services.notifier.send("bob@contoso.com", HELLO)
    assert upstream_calls(world) == ["graph.installed_apps", "graph.chat", "connector.send"]
    assert by_upn.conversation_id == first.conversation_id


async def test_recipient_in_another_tenant(world: World, services: Services) -> None:
    other = world.tenant.add_tenant(str(uuid.uuid4()))
    carol = world.tenant.add_user("carol@fabrikam.com", tenant_id=other)
    result = await services.notifier.send("carol@fabrikam.com", HELLO, tenant_id=other)
    assert result.tenant_id == other
    assert len(world.tenant.messages_for(carol)) == 1
    # Alice's tenant does not know Carol.
    with pytest.raises(RecipientError):
        await services.notifier.send("carol@fabrikam.com", HELLO)


async def test_concurrent_cold_sends_make_one_install_and_one_resolution(world: World, services: Services) -> None:
    results = await asyncio.gather(
        *(services.notifier.send("alice@contoso.com", MessageContent(text=f"message {i}")) for i in range(20))
    )
    assert len({r.activity_id for r in results}) == 20
    assert world.tenant.calls("graph.install") == 1
    assert world.tenant.calls("graph.chat") == 1
    assert world.tenant.calls("connector.create") == 0
    assert world.tenant.calls("connector.send") == 20
    assert len(world.tenant.messages_for(world.user("alice"))) == 20


async def test_tokens_are_reused_across_sends(world: World, services: Services) -> None:
    for i in range(5):
        await services.notifier.send("alice@contoso.com", MessageContent(text=str(i)))
    # One Graph token and one Bot Framework token for the whole run.
    assert world.tenant.calls("token") == 2


async def test_secretless_federated_credential(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in world.env.items() if k != "MicrosoftAppPassword"}
    env["ManagedIdentityClientId"] = world.tenant.managed_identity_client_id
    # What the Functions platform provides to a site with a managed identity (App Service protocol).
    monkeypatch.setenv("IDENTITY_ENDPOINT", world.server.base_url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", world.tenant.identity_header)
    from shared.settings import load_settings

    services = build_services(load_settings(env))
    try:
        result = await services.notifier.send("alice@contoso.com", HELLO)
    finally:
        await services.aclose()
    assert result.activity_id
    assert world.tenant.calls("msi") >= 1


async def test_a_send_teams_did_not_confirm_is_not_sent_again(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import load_settings

    await build_and_warm(world)
    # The connector stores the message but answers after our timeout: the outcome is unknown.
    world.tenant.add_fault("connector.send", 200, delay=1.0)
    services = build_services(load_settings({**world.env, "HttpTimeoutSeconds": "0.3"}))
    try:
        with pytest.raises(TransientError) as caught:
            await services.notifier.send("alice@contoso.com", MessageContent(text="pay invoice 1001"))
    finally:
        await services.aclose()
    await asyncio.sleep(1.0)  # let the fake finish the slow answer
    assert caught.value.code == "delivery_unconfirmed"
    assert world.tenant.calls("connector.send") == 2  # the warm-up and the one unconfirmed attempt
    assert [m["activity"]["text"] for m in world.tenant.messages_for(world.user("alice"))].count(
        "pay invoice 1001"
    ) == 1


async def build_and_warm(world: World) -> None:
    warm = build_services(world.settings)
    try:
        await warm.notifier.send("alice@contoso.com", HELLO)
    finally:
        await warm.aclose()


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_on_send_are_unconfirmed_not_retried(
    world: World, services: Services, status: int
) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.add_fault("connector.send", status, count=5)
    with pytest.raises(TransientError) as caught:
        await services.notifier.send("alice@contoso.com", HELLO)
    assert caught.value.code == "delivery_unconfirmed"
    assert world.tenant.calls("connector.send") == 2


async def test_a_confirmed_send_with_an_unreadable_body_counts_as_sent(world: World, services: Services) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.add_fault("connector.send", 200, malformed=True)
    result = await services.notifier.send("alice@contoso.com", MessageContent(text="second"))
    assert result.activity_id is None
    assert world.tenant.calls("connector.send") == 2


async def test_conversation_rejected_while_resolving_is_transient(world: World, services: Services) -> None:
    world.tenant.refuse_chat_id_conversations()
    forbidden = {"error": {"code": "ForbiddenOperationException", "message": "Bot is not in the roster."}}
    world.tenant.add_fault("connector.create", 403, body=forbidden)
    with pytest.raises(TransientError) as caught:
        await services.notifier.send("alice@contoso.com", HELLO)
    assert caught.value.code == "conversation_unavailable"
    # The next attempt goes through.
    assert (await services.notifier.send("alice@contoso.com", HELLO)).activity_id


async def test_a_rejected_create_conversation_is_not_blamed_on_the_card(world: World, services: Services) -> None:
    world.tenant.refuse_chat_id_conversations()
    world.tenant.add_fault("connector.create", 400, body={"error": {"code": "BadArgument", "message": "bad"}})
    with pytest.raises(NotifyError) as caught:
        await services.notifier.send("alice@contoso.com", HELLO)
    assert caught.value.code == "connector_bad_request" and caught.value.http_status == 502


async def test_an_app_reuploaded_to_the_catalog_is_looked_up_again(world: World, services: Services) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    world.tenant.catalog_id = str(uuid.uuid4())  # an admin re-uploaded the app: a new catalog id
    world.tenant.clear_log()

    await services.notifier.send("bob@contoso.com", HELLO)
    assert upstream_calls(world)[:5] == [
        "graph.installed_apps",
        "graph.install",
        "graph.catalog",
        "graph.install",
        "graph.installed_apps",
    ]
    assert len(world.tenant.messages_for(world.user("bob"))) == 1


async def test_a_token_the_connector_rejects_is_fetched_anew(world: World, services: Services) -> None:
    await services.notifier.send("alice@contoso.com", HELLO)
    tokens_before = world.tenant.calls("token")
    world.tenant.add_fault("connector.send", 401, body={"error": {"code": "Unauthorized", "message": "expired"}})
    await services.notifier.send("alice@contoso.com", HELLO)
    assert world.tenant.calls("token") == tokens_before + 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 2


async def test_a_throttled_login_endpoint_is_transient(world: World, services: Services) -> None:
    world.tenant.add_fault("token", 429, count=10, retry_after=1)
    with pytest.raises(TransientError):
        await services.notifier.send("alice@contoso.com", HELLO)


async def test_cold_send_is_three_requests_to_the_installation_chat_id(world: World, services: Services) -> None:
    carol = world.tenant.add_user("carol@contoso.com", installed=True)
    result = await services.notifier.send("carol@contoso.com", HELLO)
    # The installation's chat id is the bot's 1:1 conversation id (https://learn.microsoft.com/microsoftteams/platform/graph-api/proactive-bots-and-messages/graph-proactive-bots-and-messages).
    assert upstream_calls(world) == ["graph.installed_apps", "graph.chat", "connector.send"]
    assert result.conversation_id == world.tenant.chat_id_for(carol)
    [delivered] = world.tenant.messages_for(carol)
    assert delivered["conversation_id"] == world.tenant.chat_id_for(carol)
    entry = await services.store.get(world.tenant.tenant_id, "carol@contoso.com")
    assert entry is not None and entry.account_id is None and entry.object_id == carol.oid


async def test_a_tenant_refusing_chat_ids_falls_back_to_members_and_remembers_it(
    world: World, services: Services
) -> None:
    dave = world.tenant.add_user("dave@contoso.com", installed=True)
    world.tenant.add_user("erin@contoso.com", installed=True)
    world.tenant.refuse_chat_id_conversations()

    first = await services.notifier.send("dave@contoso.com", HELLO)
    assert upstream_calls(world) == [
        "graph.installed_apps",
        "graph.chat",
        "connector.send",  # 404 ConversationNotFound for the chat id
        "connector.members",
        "connector.create",
        "connector.send",
    ]
    assert [r.status for r in world.tenant.log if r.route == "connector.send"] == [404, 201]
    assert first.conversation_id == world.tenant.conversation_id_for(dave)
    entry = await services.store.get(world.tenant.tenant_id, "dave@contoso.com")
    assert entry is not None and entry.account_id == dave.account_id and entry.object_id == dave.oid
    assert len(world.tenant.messages_for(dave)) == 1

    # The tenant is remembered: the next cold recipient there goes straight to the fallback.
    world.tenant.clear_log()
    await services.notifier.send("erin@contoso.com", HELLO)
    assert upstream_calls(world) == [
        "graph.installed_apps",
        "graph.chat",
        "connector.members",
        "connector.create",
        "connector.send",
    ]
    # A warm send there is still one request.
    world.tenant.clear_log()
    await services.notifier.send("dave@contoso.com", MessageContent(text="warm"))
    assert upstream_calls(world) == ["connector.send"]


async def test_refusing_chat_ids_in_one_tenant_leaves_other_tenants_on_the_chat_id(
    world: World, services: Services
) -> None:
    other = world.tenant.add_tenant(str(uuid.uuid4()))
    carol = world.tenant.add_user("carol@fabrikam.com", tenant_id=other, installed=True)
    world.tenant.add_user("dave@contoso.com", installed=True)
    world.tenant.refuse_chat_id_conversations()
    await services.notifier.send("dave@contoso.com", HELLO)
    world.tenant.clear_log()

    result = await services.notifier.send("carol@fabrikam.com", HELLO, tenant_id=other)
    assert upstream_calls(world) == ["graph.installed_apps", "graph.chat", "connector.send"]
    assert result.conversation_id == world.tenant.chat_id_for(carol)
