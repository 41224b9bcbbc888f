"""The bot's messaging endpoint: authenticated inbound activities keep the recipient cache fresh.

Teams tells the bot about every personal install (``installationUpdate`` add, ``conversationUpdate``
with the user or the bot in ``membersAdded``), the ones the notify pipeline makes through Graph
included, and the activity carries exactly what a send needs: the user's ChannelAccount id, the 1:1
conversation id and the user's regional service URL. That becomes the user's ``ConversationReference``, so
the next send to them is warm and goes to their regional service URL. An uninstall
(``installationUpdate`` remove, or the bot or user removed from the personal conversation) evicts it,
so the next send resolves, and installs, again. Teams sends no activity when a user blocks the bot:
the pipeline learns it from the send's 403 and evicts there.

A message from the user gets a short reply saying what the bot is for; everything else is
acknowledged and ignored. Nothing is read or stored before the channel token is validated
(shared.botframework.ChannelAuthenticator).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.botframework import (
    TEAMS_CHANNEL_ID,
    ChannelAuthenticator,
    InboundActivity,
    Member,
    reply_activity,
)
from shared.connector import ConnectorClient
from shared.errors import InvalidRequestError, NotifyError
from shared.jsonbody import loads_strict
from shared.pipeline import recipient_hash
from shared.settings import Settings
from shared.storage.optout import OptOutStore
from shared.storage.references import ConversationReference, RecipientStore

if TYPE_CHECKING:
    from shared.bootstrap import Services

logger = logging.getLogger(__name__)

HELP_TEXT = (
    "Hi! I'm the notification bot of your organization: I deliver messages to you from its systems. "
    "I can't read or answer chat messages, so there is no need to reply here."
)

#: The largest activity accepted (Teams' own messages are at most ~28 KB; the rest is envelope).
MAX_ACTIVITY_BYTES = 256 * 1024

#: How long an install activity may spend looking up the user's UPN (Teams waits ~15 s for the bot).
UPN_LOOKUP_TIMEOUT = 5.0

_INSTALL_ACTIONS = frozenset({"add", "add-upgrade"})
_UNINSTALL_ACTIONS = frozenset({"remove", "remove-upgrade"})

Outcome = Literal["stored", "unchanged", "evicted", "replied", "reply_failed", "ignored"]


@dataclass(frozen=True)
class InboundResult:
    """What the endpoint did with an activity (the HTTP answer is 200 for all of them)."""

    outcome: Outcome
    activity_type: str


async def handle_activity(services: Services, authorization: str | None, body: bytes) -> InboundResult:
    """The messaging endpoint with the process's services (the function app's entry point)."""
    handler = InboundHandler(
        services.settings, services.store, services.connector, services.channel_auth, optouts=services.optouts
    )
    return await handler.handle(authorization, body)


class InboundHandler:
    def __init__(
        self,
        settings: Settings,
        store: RecipientStore,
        connector: ConnectorClient,
        authenticator: ChannelAuthenticator,
        *,
        optouts: OptOutStore | None = None,
    ) -> None:
        self._settings = settings
        self._optouts = optouts
        self._store = store
        self._connector = connector
        self._authenticator = authenticator

    async def handle(self, authorization: str | None, body: bytes) -> InboundResult:
        """Authenticate and act on one inbound activity.

        Raises AuthenticationError (401: no or invalid channel token), InvalidRequestError (400: a valid token
        with a body that is not an activity), TransientError / ConfigurationError (the signing keys could
        not be fetched; Table Storage is down).
        """
        # The channel token is validated before the body is looked at: a caller without one cannot make
        # the endpoint parse anything. The activity is validated again with the token below (serviceUrl
        # and channel endorsement need the activity).
        await self._authenticator.authenticate_token(authorization)
        if len(body) > MAX_ACTIVITY_BYTES:
            raise InvalidRequestError(
                f"The activity is {len(body)} bytes; this endpoint accepts up to {MAX_ACTIVITY_BYTES}.",
                code="message_too_large",
                target="body",
                http_status=413,
            )
        activity = await self._authenticator.authenticate_activity(authorization, _json_or_none(body))
        result = await self._dispatch(activity)
        logger.info("inbound %s (%s): %s", activity.type, activity.action or "-", result.outcome)
        return result

    async def _dispatch(self, activity: InboundActivity) -> InboundResult:
        kind = activity.type
        if kind == "message":
            return await self._on_message(activity)
        personal = activity.channel_id == TEAMS_CHANNEL_ID and activity.conversation_type == "personal"
        if personal and kind == "installationUpdate":
            if activity.action in _INSTALL_ACTIONS and activity.sender is not None:
                return await self._remember(activity, activity.sender, look_up_upn=True)
            if activity.action in _UNINSTALL_ACTIONS and activity.sender is not None:
                # "remove" is the user's uninstall (kept as an opt-out); "remove-upgrade" is an upgrade.
                return await self._forget(activity, activity.sender, opt_out=activity.action == "remove")
        if personal and kind == "conversationUpdate":
            added = self._user_among(activity, activity.members_added)
            if added is not None:
                return await self._remember(activity, added, look_up_upn=True)
            removed = self._user_among(activity, activity.members_removed)
            if removed is not None:
                return await self._forget(activity, removed)
        return InboundResult("ignored", kind)

    def _user_among(self, activity: InboundActivity, members: tuple[Member, ...]) -> Member | None:
        """The user a personal-scope membership change is about: the user listed in ``members``, or
        the sender when only the bot is listed (Teams lists one or both)."""
        sender = activity.sender
        for member in members:
            if member.account_id.startswith("29:"):
                if member.object_id is None and sender is not None and sender.account_id == member.account_id:
                    return sender
                return member
        bot_ids = {self._settings.bot_id.lower(), (activity.recipient_id or "").lower()} - {""}
        if any(m.account_id.lower() in bot_ids for m in members) and sender is not None:
            if sender.account_id.startswith("29:"):
                return sender
        return None

    async def _remember(self, activity: InboundActivity, user: Member, *, look_up_upn: bool) -> InboundResult:
        tenant, object_id, conversation_id = activity.tenant_id, user.object_id, activity.conversation_id
        if not tenant or not object_id or not conversation_id or not user.account_id.startswith("29:"):
            return InboundResult("ignored", activity.type)
        existing = await self._store.get(tenant, object_id)
        upn = user.upn
        if upn is None and existing is not None and existing.account_id in (user.account_id, None):
            # The same account, or an entry a send resolved from the installation's chat id (found by
            # this user's object id, no account yet): its UPN stays an alias.
            upn = existing.upn
        if upn is None and look_up_upn:
            upn = await self._look_up_upn(activity, tenant, user)
        entry = ConversationReference(
            tenant_id=tenant,
            account_id=user.account_id,
            conversation_id=conversation_id,
            service_url=activity.service_url,
            object_id=object_id,
            upn=upn,
        )
        if look_up_upn and self._optouts is not None:
            # An install (the user's, or ours through Graph) ends an opt-out.
            await self._optouts.clear(tenant, [alias for alias in (object_id, upn, user.upn) if alias])
        # Install events are rare and always written; messages only when something changed.
        if not look_up_upn and existing is not None and _same(existing, entry):
            return InboundResult("unchanged", activity.type)
        await self._store.put(entry, [alias for alias in (object_id, upn) if alias])
        logger.info("memoised recipient %s from an inbound %s", recipient_hash(tenant, object_id), activity.type)
        return InboundResult("stored", activity.type)

    async def _look_up_upn(self, activity: InboundActivity, tenant: str, user: Member) -> str | None:
        """Install activities carry no UPN; the conversation's member does. Best effort: without it the
        entry is still stored under the object id."""
        assert activity.conversation_id is not None and user.object_id is not None
        try:
            async with asyncio.timeout(UPN_LOOKUP_TIMEOUT):
                member = await self._connector.get_conversation_members(
                    activity.service_url, activity.conversation_id, recipient=user.object_id
                )
        except NotifyError as err:
            reason = err.code
        except TimeoutError:
            reason = "timeout"
        else:
            return member.upn if member.account_id == user.account_id else None
        logger.info("no UPN for recipient %s (%s)", recipient_hash(tenant, user.object_id), reason)
        return None

    async def _forget(self, activity: InboundActivity, user: Member, *, opt_out: bool = False) -> InboundResult:
        tenant = activity.tenant_id
        names = [name for name in (user.object_id, user.upn) if name]
        if not tenant or not names:
            return InboundResult("ignored", activity.type)
        evicted = False
        known = set(names)
        for name in names:
            entry = await self._store.evict(tenant, name)
            evicted = entry is not None or evicted
            if entry is not None:
                known |= {a for a in (entry.upn, entry.object_id) if a}
        if opt_out and self._optouts is not None:
            await self._optouts.record(tenant, known)
            logger.info("recipient %s uninstalled the app: opt-out recorded", recipient_hash(tenant, names[0]))
        logger.info("evicted recipient %s after an inbound %s", recipient_hash(tenant, names[0]), activity.type)
        return InboundResult("evicted" if evicted else "unchanged", activity.type)

    async def _on_message(self, activity: InboundActivity) -> InboundResult:
        sender = activity.sender
        if sender is None or not activity.conversation_id or sender.account_id.lower() == self._settings.bot_id.lower():
            return InboundResult("ignored", activity.type)
        if activity.channel_id == TEAMS_CHANNEL_ID and activity.conversation_type == "personal":
            try:
                await self._remember(activity, sender, look_up_upn=False)
            except NotifyError as err:  # a cache refresh is a bonus; the reply still goes out
                logger.warning("could not refresh the recipient cache from a message (%s)", err.code)
        reply = reply_activity(HELP_TEXT, activity.activity_id)
        try:
            if activity.activity_id:
                await self._connector.reply_to_activity(
                    activity.service_url, activity.conversation_id, activity.activity_id, reply
                )
            else:
                await self._connector.send_to_conversation(activity.service_url, activity.conversation_id, reply)
        except NotifyError as err:
            # The user must never see an error for chatting with the bot: acknowledge and log.
            logger.warning("could not answer an inbound message (%s)", err.code)
            return InboundResult("reply_failed", activity.type)
        return InboundResult("replied", activity.type)


def _same(a: ConversationReference, b: ConversationReference) -> bool:
    return a.tenant_id.lower() == b.tenant_id.lower() and (
        a.account_id,
        a.conversation_id,
        a.service_url,
        a.object_id,
        a.upn,
    ) == (b.account_id, b.conversation_id, b.service_url, b.object_id, b.upn)


def _json_or_none(body: bytes) -> Any:
    """The parsed body, strictly (shared.jsonbody.loads_strict); None when it is not JSON at all, so the
    caller answers invalid_activity. Too deep a body is refused (413 json_too_deep)."""
    try:
        return loads_strict(body)
    except InvalidRequestError as err:
        if err.http_status == 413:
            raise
        return None
