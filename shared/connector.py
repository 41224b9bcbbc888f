"""Bot Connector helpers: conversation members, create the 1:1 conversation, send/update/delete.

Error answers are translated per Teams' bot error codes (learn.microsoft.com, "Handle bot errors"): a gone
conversation or an uninstalled bot raises ``StaleConversationError`` (the pipeline evicts and re-resolves
once), a user who blocked the bot or a tenant that disabled it is the caller's to know about, 401 names our
settings, 429/412/5xx gateway errors are retried, 500 ServiceError is not retried blindly.
"""

from __future__ import annotations

import json as jsonlib
import logging
from typing import Any
from urllib.parse import quote

import httpx

from shared.botframework import Member, conversation_parameters, parse_member
from shared.errors import (
    ConfigurationError,
    InvalidRequestError,
    NotifyError,
    RecipientError,
    StaleConversationError,
    TransientError,
    UpstreamError,
    WritesBlockedError,
    WrongRegionError,
)
from shared.http import DEFAULT_RETRY_STATUSES, BearerAuth, RetryPolicy, request_with_retry
from shared.settings import Settings
from shared.throttle import Gate, Throttle
from shared.tokens import BOT_SCOPE, TokenProvider, bot_token_tenant

logger = logging.getLogger(__name__)

_CONNECTOR_RETRY = DEFAULT_RETRY_STATUSES | {412}
# Right after an install the chat may not be known to the connector yet.
_MEMBERS_RETRY = _CONNECTOR_RETRY | {404}


def _segment(value: str) -> str:
    """One URL path segment; ``.`` and ``..`` percent-encoded so normalisation cannot rewrite the path."""
    segment = quote(value, safe=":@")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


class ConnectorClient:
    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        tokens: TokenProvider,
        policy: RetryPolicy,
        throttle: Throttle | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._tokens = tokens
        self._policy = policy
        self._throttle = throttle
        self._auth = BearerAuth(tokens.bot_token, lambda: tokens.forget(bot_token_tenant(settings), BOT_SCOPE))

    def _gate(self, tenant_id: str | None, conversation_id: str | None = None) -> Gate | None:
        if self._throttle is None or tenant_id is None:
            return None
        return Gate(self._throttle, "connector", tenant_id, conversation_id)

    async def get_conversation_members(
        self, service_url: str, chat_id: str, *, recipient: str | None = None, tenant_id: str | None = None
    ) -> Member:
        """GetConversationMembers (GET /v3/conversations/{id}/members): the user's ChannelAccount in the
        installation's 1:1 chat.

        The member is the recipient: the one whose aadObjectId/objectId (or UPN) is ``recipient``, else the
        one member that is not the bot. Channel account ids are opaque (Teams' are "29:...", a local
        emulator's are not), so they are not used to tell the user from the bot."""
        response = await self._call(
            "GET",
            service_url,
            f"v3/conversations/{_segment(chat_id)}/members",
            retry_statuses=_MEMBERS_RETRY,
            gate=self._gate(tenant_id),
        )
        members = _json(response)
        payloads = [p for p in members if isinstance(p, dict) and p.get("id")] if isinstance(members, list) else []
        users = [p for p in payloads if not self._is_bot(p)]
        if recipient:
            wanted = recipient.lower()
            for payload in users:
                names = ("aadObjectId", "objectId", "userPrincipalName", "email")
                if any(str(payload.get(name) or "").lower() == wanted for name in names):
                    return parse_member(payload)
        if len(users) == 1:
            return parse_member(users[0])
        if users:
            raise UpstreamError(
                f"The 1:1 chat has {len(users)} members besides the bot and none is the recipient.",
                target="connector",
            )
        raise TransientError("The 1:1 chat has no user member yet.", target="connector", retry_after=5.0)

    def _is_bot(self, payload: dict[str, Any]) -> bool:
        account_id = str(payload.get("id", "")).lower()
        return account_id in (self._settings.bot_id.lower(), self._settings.app_id.lower()) or account_id.startswith(
            "28:"
        )

    async def create_conversation(self, service_url: str, account_id: str, tenant_id: str) -> str:
        """CreateConversation (POST /v3/conversations): the 1:1 conversation id (idempotent per member)."""
        body = conversation_parameters(self._settings.bot_id, account_id, tenant_id)
        response = await self._call(
            "POST", service_url, "v3/conversations", json=body, accept=(200, 201), gate=self._gate(tenant_id)
        )
        payload = _json(response)
        conversation_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(conversation_id, str) or not conversation_id:
            raise UpstreamError("The connector created a conversation without an id.", target="connector")
        return conversation_id

    async def send_to_conversation(
        self, service_url: str, conversation_id: str, activity: dict[str, Any], *, tenant_id: str | None = None
    ) -> str | None:
        """SendToConversation (POST /v3/conversations/{id}/activities). Returns the activity id (None for
        an observed 202 with no body)."""
        path = f"v3/conversations/{_segment(conversation_id)}/activities"
        return await self._post_activity(service_url, path, activity, self._gate(tenant_id, conversation_id))

    async def reply_to_activity(
        self, service_url: str, conversation_id: str, reply_to_id: str, activity: dict[str, Any]
    ) -> str | None:
        """Answer an inbound activity (Bot Framework ReplyToActivity): threaded under it in the chat."""
        path = f"v3/conversations/{_segment(conversation_id)}/activities/{_segment(reply_to_id)}"
        return await self._post_activity(service_url, path, activity, None)

    async def _post_activity(
        self, service_url: str, path: str, activity: dict[str, Any], gate: Gate | None
    ) -> str | None:
        """POST a message activity: not idempotent (an unconfirmed answer is not resent), a 400 is
        the caller's message's fault."""
        response = await self._call(
            "POST",
            service_url,
            path,
            # UTF-8, not \u escapes: the connector limits the body to 262,144 bytes.
            content=jsonlib.dumps(activity, separators=(",", ":"), ensure_ascii=False).encode(),
            accept=(200, 201, 202),
            gate=gate,
            idempotent=False,
            operation="send",
            has_card=bool(activity.get("attachments")),
        )
        return _activity_id(response)

    async def update_activity(
        self,
        service_url: str,
        conversation_id: str,
        activity_id: str,
        activity: dict[str, Any],
        *,
        tenant_id: str | None = None,
    ) -> None:
        """Replace a sent activity in place. A gone activity or conversation raises
        ``StaleConversationError`` (404)."""
        body = dict(activity, id=activity_id)
        await self._call(
            "PUT",
            service_url,
            f"v3/conversations/{_segment(conversation_id)}/activities/{_segment(activity_id)}",
            json=body,
            accept=(200, 201, 202),
            gate=self._gate(tenant_id, conversation_id),
            operation="update",
            has_card=bool(activity.get("attachments")),
        )

    async def delete_activity(
        self, service_url: str, conversation_id: str, activity_id: str, *, tenant_id: str | None = None
    ) -> bool:
        """Delete a sent activity. Returns False when it was already gone (404)."""
        response = await self._call(
            "DELETE",
            service_url,
            f"v3/conversations/{_segment(conversation_id)}/activities/{_segment(activity_id)}",
            accept=(200, 202, 204, 404),
            gate=self._gate(tenant_id, conversation_id),
            operation="delete",
        )
        return response.status_code != 404

    async def _call(
        self,
        method: str,
        service_url: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        accept: tuple[int, ...] = (200,),
        retry_statuses: frozenset[int] = _CONNECTOR_RETRY,
        gate: Gate | None = None,
        idempotent: bool = True,
        operation: str = "other",
        has_card: bool = False,
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = await request_with_retry(
            self._client,
            method,
            service_url + path,
            policy=self._policy,
            service="connector",
            retry_statuses=retry_statuses,
            headers=headers,
            json=json,
            content=content,
            gate=gate,
            idempotent=idempotent,
            auth=self._auth,
        )
        if response.status_code in accept:
            return response
        raise connector_error(response, operation, has_card=has_card)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as err:
        raise TransientError(
            f"The connector returned a malformed body (HTTP {response.status_code}).",
            target="connector",
            retry_after=5.0,
        ) from err


def _activity_id(response: httpx.Response) -> str | None:
    """The id of a sent activity. The send succeeded (2xx) whatever the body says: an empty (observed
    202) or unreadable body gives None rather than an error that would make a retry send twice."""
    try:
        payload = response.json() if response.content else None
    except ValueError:
        logger.warning("the connector confirmed a send with an unreadable body (HTTP %d)", response.status_code)
        return None
    value = payload.get("id") if isinstance(payload, dict) else None
    return str(value) if value else None


def _error_detail(response: httpx.Response) -> tuple[str, str]:
    """Teams' own error code and message (either body shape), the message cut to a readable length."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    # (observed) {"errorCode":209,"message":"{\"subCode\":\"MessageWritesBlocked\"...}"}
    message = str(body.get("message", ""))
    if "MessageWritesBlocked" in message:
        return "MessageWritesBlocked", message[:300]
    return str(body.get("errorCode", "")), message[:300]


def _teams_said(code: str, message: str, status: int) -> str:
    """``Teams answered 400 BadArgument: <its message>`` for our messages (its words, not a guess)."""
    said = f"Teams answered {status} {code or 'with no code'}"
    return f"{said}: {message}" if message else said


# Answers that say the service URL belongs to another region (the tenant moved, e.g. into the EU
# Data Boundary): microsoft/BotFramework-Services#339, microsoft/botbuilder-js#3280.
_WRONG_REGION_HINTS = ("wrong geo", "different region")
_ROSTER_CODES = frozenset({"BotNotInConversationRoster", "ForbiddenOperationException"})


def connector_error(response: httpx.Response, operation: str = "send", *, has_card: bool = False) -> NotifyError:
    """Translate a connector error answer. ``operation`` is "send"/"update" when the payload is the
    caller's message (a 400 is then the caller's to fix), "delete", or anything else for our own
    requests. Every message carries Teams' own code and message."""
    status = response.status_code
    code, teams_message = _error_detail(response)
    said = _teams_said(code, teams_message, status)
    if status in (400, 403) and any(hint in teams_message.lower() for hint in _WRONG_REGION_HINTS):
        return WrongRegionError(f"The service URL belongs to another region ({said}).", target="ServiceUrl")
    if code in _ROSTER_CODES and operation in ("update", "delete"):
        # After an uninstall Teams changes nothing (the message stays in the chat as it was).
        return RecipientError(
            f"The app is no longer installed for the recipient, so Teams left the message as it was ({said}).",
            code="app_not_installed",
            target="recipient",
            http_status=403,
        )
    if status == 404 or code in _ROSTER_CODES:
        return StaleConversationError(
            f"The conversation is gone ({code or status}).", code="conversation_not_found", target="recipient"
        )
    if code == "MessageWritesBlocked":
        return WritesBlockedError(
            f"The recipient blocked the bot in Teams ({said}).", target="recipient", http_status=403
        )
    if code == "ConversationBlockedByUser":
        return RecipientError(
            f"The recipient blocked the bot in Teams ({said}).",
            code="recipient_blocked_bot",
            target="recipient",
            http_status=403,
        )
    if code == "BotDisabledByAdmin":
        return RecipientError(
            f"The tenant's Teams administrator has blocked this app for the recipient ({said}).",
            code="bot_disabled_by_admin",
            target="recipient",
            http_status=403,
        )
    if status == 401 or code in {"BotNotRegistered", "Unauthorized"}:
        return ConfigurationError(
            "The Bot Connector rejected the bot's token: check MicrosoftAppId, MicrosoftAppType and the Azure Bot "
            "resource's app id.",
            code="bot_unauthorized",
            target="MicrosoftAppId",
        )
    if status == 413 or code == "MessageSizeTooBig":
        return InvalidRequestError(
            f"The message is too large for Teams ({said}); Teams accepts about 100 KB of text and card measured "
            "as UTF-16.",
            code="message_too_large",
            target="body",
            http_status=413,
        )
    if status == 400 and operation not in ("send", "update"):
        return UpstreamError(
            f"The Bot Connector rejected a request of ours ({said}).",
            code="connector_bad_request",
            target="connector",
        )
    if status == 400:
        return InvalidRequestError(
            f"Teams rejected the message ({said}): check the {'Adaptive Card' if has_card else 'text'}.",
            code="message_rejected",
            target="card" if has_card else "text",
            http_status=422,
        )
    if status == 403:
        return RecipientError(
            f"Teams refused to deliver to the recipient ({said}).",
            code="recipient_forbidden",
            target="recipient",
            http_status=403,
        )
    return UpstreamError(f"The Bot Connector failed ({said}).", target="connector")
