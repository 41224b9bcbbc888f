"""The notify pipeline: resolve a recipient's Teams identity on demand and send to them.

Cold path (Teams' proactive installation,
https://learn.microsoft.com/microsoftteams/platform/graph-api/proactive-bots-and-messages/graph-proactive-bots-and-messages):
app token -> installed app? -> install if missing -> the installation's 1:1 chat, whose id is the
bot's conversation id -> send: 3 requests for an installed user, 6 when installing (plus the catalog
lookup once per process and tenant). Where the connector refuses the chat id, the chat member
(ChannelAccount) and create conversation are the fallback, remembered per tenant in this process so
later resolutions there go straight to it.
Warm path: the memoised entry and a memoised token, so the send is the only HTTP request.

A memoised entry the connector rejects as gone is evicted and resolved again once; a fresh entry
rejected the same way is not looped on. Concurrent cold sends to one recipient share one resolution
(single-flight per process; across instances the install's 409 and the idempotent create keep
duplicate work harmless).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from typing import Any

import msgspec

from shared.botframework import message_activity
from shared.connector import ConnectorClient
from shared.errors import (
    NotifyError,
    RecipientError,
    StaleConversationError,
    TransientError,
    WritesBlockedError,
    WrongRegionError,
)
from shared.graph import GraphClient
from shared.message_content import MessageContent
from shared.settings import Settings
from shared.storage.optout import OptOutStore
from shared.storage.references import ConversationReference, RecipientStore, recipient_key
from shared.throttle import Throttle

logger = logging.getLogger(__name__)

#: How often a warm send refreshes its cache entry's UpdatedAt (what the retention purge measures).
CACHE_USE_RECORD_INTERVAL = datetime.timedelta(days=1)


class SendResult(msgspec.Struct, frozen=True):
    recipient: str
    tenant_id: str
    activity_id: str | None
    conversation_id: str
    service_url: str
    resolved: bool  # True when this send went through the cold path


def recipient_hash(tenant_id: str, recipient: str) -> str:
    """A short, stable, non-reversible name for a recipient in log lines."""
    return hashlib.sha256(f"{tenant_id.lower()}|{recipient_key(recipient)}".encode()).hexdigest()[:12]


class Notifier:
    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        connector: ConnectorClient,
        store: RecipientStore,
        throttle: Throttle | None = None,
        *,
        optouts: OptOutStore | None = None,
    ) -> None:
        self._settings = settings
        self._optouts = optouts
        self._throttle = throttle or Throttle(
            max_concurrent=settings.max_concurrent_sends,
            send_rate=settings.tenant_send_rate,
            graph_rate=settings.tenant_graph_rate,
            max_wait=settings.retry_max_delay,
        )
        self._graph = graph
        self._connector = connector
        self._store = store
        self._inflight: dict[tuple[str, str], asyncio.Task[ConversationReference]] = {}
        # Tenants (lower-cased) whose connector refused a chat id: resolved by members there.
        self._chat_id_refused: set[str] = set()

    @property
    def store(self) -> RecipientStore:
        return self._store

    @property
    def throttle(self) -> Throttle:
        return self._throttle

    async def send(self, recipient: str, message: MessageContent, tenant_id: str | None = None) -> SendResult:
        """Send within one of the process's concurrency slots (MaxConcurrentSends)."""
        async with self._throttle.slot():
            return await self._send_unbounded(recipient, message, tenant_id)

    async def _send_unbounded(self, recipient: str, message: MessageContent, tenant_id: str | None) -> SendResult:
        tenant = tenant_id or self._settings.tenant_id
        activity = message_activity(message)
        entry = await self._store.get(tenant, recipient)
        resolved = False
        if entry is None:
            entry = await self._resolve_fresh(recipient, tenant)
            resolved = True
        try:
            activity_id, entry = await self._send_entry(entry, tenant, recipient, activity, fresh=resolved)
        except (StaleConversationError, WritesBlockedError) as err:
            # MessageWritesBlocked is Teams' one answer for "blocked the bot" AND "uninstalled the
            # app" (Teams docs, "Handle bot errors"): only the installation tells them apart.
            if isinstance(err, WritesBlockedError) and await self._installed(tenant, recipient):
                raise
            logger.info("cached conversation is gone for %s; resolving again", recipient_hash(tenant, recipient))
            await self._store.evict(tenant, recipient)
            if resolved:
                raise _still_stale() from None
            entry = await self._resolve_fresh(recipient, tenant, not_installed=isinstance(err, WritesBlockedError))
            resolved = True
            try:
                activity_id, entry = await self._send_entry(entry, tenant, recipient, activity, fresh=True)
            except StaleConversationError:
                await self._store.evict(tenant, recipient)
                raise _still_stale() from None
        if not resolved:
            await self._note_use(entry, tenant, recipient)
        return SendResult(
            recipient=recipient,
            tenant_id=tenant,
            activity_id=activity_id,
            conversation_id=entry.conversation_id,
            service_url=entry.service_url,
            resolved=resolved,
        )

    async def _installed(self, tenant: str, recipient: str) -> bool:
        return await self._graph.find_installation(tenant, recipient) is not None

    async def _send_entry(
        self, entry: ConversationReference, tenant: str, recipient: str, activity: dict[str, Any], *, fresh: bool
    ) -> tuple[str | None, ConversationReference]:
        """Send to an entry. A freshly resolved chat id (no ChannelAccount yet) the connector refuses as
        gone goes through the members fallback (the chat's members, then create conversation), and the
        tenant is remembered as one that needs it; any other gone conversation raises ``StaleConversationError``."""
        try:
            return await self._send_regional(entry, tenant, recipient, activity)
        except StaleConversationError:
            if not (fresh and entry.account_id is None):
                raise
        # The connector refused the installation's chat id: members + create conversation.
        await self._store.evict(tenant, recipient)
        fallback = await self._resolve_by_members(recipient, tenant, entry.conversation_id, entry.object_id)
        activity_id, fallback = await self._send_regional(fallback, tenant, recipient, activity)
        if tenant.lower() not in self._chat_id_refused:
            self._chat_id_refused.add(tenant.lower())
            logger.info("the connector refuses chat ids as conversation ids in this tenant; using the members fallback")
        return activity_id, fallback

    async def _send_regional(
        self, entry: ConversationReference, tenant: str, recipient: str, activity: dict[str, Any]
    ) -> tuple[str | None, ConversationReference]:
        """Send on the entry's service URL. One the connector says belongs to another region (the
        tenant moved) is dropped: the send is made once on the configured global ServiceUrl, which
        routes to the right region, and the entry keeps that from then on."""
        try:
            return await self._send(entry, tenant, recipient, activity), entry
        except WrongRegionError:
            global_url = self._settings.service_url
            if entry.service_url.rstrip("/") == global_url.rstrip("/"):
                raise
            logger.info("regional service URL is stale for %s; using ServiceUrl", recipient_hash(tenant, recipient))
            entry = msgspec.structs.replace(entry, service_url=global_url, updated_at=None)
            activity_id = await self._send(entry, tenant, recipient, activity)
            await self._store.put(entry, [recipient])
            return activity_id, entry

    async def _send(
        self, entry: ConversationReference, tenant: str, recipient: str, activity: dict[str, Any]
    ) -> str | None:
        try:
            return await self._connector.send_to_conversation(
                entry.service_url, entry.conversation_id, activity, tenant_id=tenant
            )
        except RecipientError as err:
            if err.code == "recipient_blocked_bot":
                # A 403 ConversationBlockedByUser: evict, so an unblock later goes through a fresh resolution.
                await self._store.evict(tenant, recipient)
            raise

    async def _resolve_fresh(
        self, recipient: str, tenant: str, *, not_installed: bool = False
    ) -> ConversationReference:
        """Resolve for a send. A conversation Teams rejects while it is being set up (right after an
        install the roster may lag) is transient, not the caller's fault."""
        try:
            return await self.resolve(recipient, tenant, not_installed=not_installed)
        except StaleConversationError:
            raise _still_stale() from None

    async def _note_use(self, entry: ConversationReference, tenant: str, recipient: str) -> None:
        """Keep a used cache entry from the retention purge (RecipientCacheUnusedDays): rewrite its
        UpdatedAt, at most once a day per entry, so a warm send stays one request nearly always."""
        now = datetime.datetime.now(datetime.UTC)
        if entry.updated_at is not None and now - entry.updated_at < CACHE_USE_RECORD_INTERVAL:
            return
        try:
            await self._store.put(msgspec.structs.replace(entry, updated_at=now), [recipient])
        except NotifyError as err:  # the send happened; the purge may drop the entry: resolved again
            logger.warning("could not record the use of a cache entry (%s)", err.code)

    async def _refuse_if_opted_out(self, tenant: str, recipient: str) -> None:
        """Before installing the app for someone: honour an uninstall (ReinstallAfterUninstall false)."""
        if self._settings.reinstall_after_uninstall or self._optouts is None:
            return
        if await self._optouts.is_opted_out(tenant, recipient):
            logger.info("recipient %s uninstalled the app; not installing it again", recipient_hash(tenant, recipient))
            raise _opted_out()

    async def resolve(
        self, recipient: str, tenant_id: str | None = None, *, not_installed: bool = False
    ) -> ConversationReference:
        """Resolve (and memoise) the recipient's 1:1 conversation; no message is sent.
        ``not_installed``: Graph has just said the app is not installed (the install comes first)."""
        tenant = tenant_id or self._settings.tenant_id
        key = (tenant.lower(), recipient_key(recipient))
        task = self._inflight.get(key)
        if task is None:
            # Detached from the starting send's concurrency slot: sends that join this resolution must
            # not wait on a slot the starter holds (shared.throttle).
            loop = asyncio.get_running_loop()
            task = loop.create_task(
                self._resolve(recipient, tenant, not_installed), context=self._throttle.detached_context()
            )
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _resolve(self, recipient: str, tenant: str, not_installed: bool = False) -> ConversationReference:
        """PROTOCOL steps 1-4: the installation's chat id is the bot's 1:1 conversation id, so that is
        all a send needs (3 requests for an installed user). Only in a tenant whose connector refused a
        chat id does the resolution go on to the members call and create conversation (steps 5-6)."""
        rhash = recipient_hash(tenant, recipient)
        logger.info("resolving recipient %s", rhash)
        installation = None if not_installed else await self._graph.find_installation(tenant, recipient)
        just_installed = False
        if installation is None:
            await self._refuse_if_opted_out(tenant, recipient)
            await self._graph.install(tenant, recipient)
            just_installed = True
            installation = await self._graph.find_installation(tenant, recipient)
            if installation is None:
                raise TransientError(
                    "The app was installed but the installation is not visible yet.", target="graph", retry_after=5.0
                )
            logger.info("installed the Teams app for recipient %s", rhash)
        chat_id = await self._graph.installation_chat(
            tenant, recipient, installation.installation_id, just_installed=just_installed
        )
        if tenant.lower() in self._chat_id_refused:
            return await self._resolve_by_members(recipient, tenant, chat_id, None)
        entry = ConversationReference(
            tenant_id=tenant,
            account_id=None,
            conversation_id=chat_id,
            service_url=self._settings.service_url,
            object_id=_object_id(recipient) or _chat_user_object_id(chat_id, self._settings.app_id),
            upn=recipient.strip() if "@" in recipient else None,
        )
        await self._store.put(entry, [recipient])
        logger.info("resolved recipient %s", rhash)
        return entry

    async def _resolve_by_members(
        self, recipient: str, tenant: str, chat_id: str, object_id: str | None
    ) -> ConversationReference:
        """PROTOCOL steps 5-6: the user's ChannelAccount from the chat's members, then the 1:1
        conversation created for it (memoised with the account)."""
        service_url = self._settings.service_url
        member = await self._connector.get_conversation_members(
            service_url, chat_id, recipient=recipient, tenant_id=tenant
        )
        conversation_id = await self._connector.create_conversation(service_url, member.account_id, tenant)
        entry = ConversationReference(
            tenant_id=tenant,
            account_id=member.account_id,
            conversation_id=conversation_id,
            service_url=service_url,
            object_id=member.object_id or object_id,
            upn=member.upn,
        )
        await self._store.put(entry, [recipient])
        logger.info("resolved recipient %s through the conversation members", recipient_hash(tenant, recipient))
        return entry


def _opted_out() -> RecipientError:
    return RecipientError(
        "The recipient uninstalled the app and ReinstallAfterUninstall is false: it is not installed "
        "again until they install it themselves.",
        code="recipient_opted_out",
        target="recipient",
        http_status=403,
    )


def _object_id(recipient: str) -> str | None:
    """The recipient's Entra object id when the caller named them by it (a GUID), else None."""
    value = recipient.strip().lower()
    if len(value) == 36 and value.count("-") == 4 and all(c in "0123456789abcdef-" for c in value):
        return value
    return None


def _chat_user_object_id(chat_id: str, app_id: str) -> str | None:
    """The user's object id in a personal chat id ``19:{id}_{id}@unq.gbl.spaces`` (the installation's
    chat: https://learn.microsoft.com/graph/api/userscopeteamsappinstallation-get-chat): the GUID that is
    not the bot's app id. None for any other form (the id stays opaque then)."""
    if not chat_id.startswith("19:") or not chat_id.endswith("@unq.gbl.spaces"):
        return None
    ids = chat_id[3 : -len("@unq.gbl.spaces")].split("_")
    users = [i for i in (_object_id(part) for part in ids) if i is not None and i != app_id.lower()]
    return users[0] if len(ids) == 2 and len(users) == 1 else None


def _still_stale() -> TransientError:
    return TransientError(
        "Teams rejected the freshly resolved conversation; the app installation may still be propagating.",
        code="conversation_unavailable",
        target="recipient",
        retry_after=30.0,
    )
