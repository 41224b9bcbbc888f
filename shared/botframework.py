"""Every import of the Bot Framework SDK (botbuilder-*, botframework-connector) lives here.

Upstream archived the Python Bot Framework SDK (support ended 2025-12-31); keeping it behind this one
module makes replacing it (microsoft-agents-*, the Teams SDK) a one-file change. The imports are
deferred into the functions so importing the function app stays light (botbuilder.core alone costs
~0.6 s and 60 MB).

Outbound activities are plain dicts in the Activity wire schema: msrest's ``Activity.serialize()``
costs ~100 us per call, more than the rest of the warm send path together, and adds nothing for a
payload we build ourselves. Schema types are used where they parse what others send us.

Inbound activities (the bot's messaging endpoint) are authenticated here too: ``ChannelAuthenticator``
wraps botframework-connector's ``JwtTokenValidation`` and hands back an ``InboundActivity``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import msgspec

from shared.errors import AuthenticationError, ConfigurationError, InvalidRequestError, NotifyError, TransientError
from shared.message_content import MessageContent

logger = logging.getLogger(__name__)

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


class Member(msgspec.Struct, frozen=True):
    """The recipient's ChannelAccount as the Bot Connector reports it."""

    account_id: str
    object_id: str | None
    upn: str | None
    name: str | None


def parse_member(payload: dict[str, Any]) -> Member:
    """A Teams channel account (conversation member) from its JSON (the ChannelAccount wire schema;
    Teams adds objectId, userPrincipalName and email). Plain dict reading: the send path never loads
    the Bot Framework SDK."""
    object_id = payload.get("aadObjectId") or payload.get("objectId")
    upn = payload.get("userPrincipalName") or payload.get("email")
    name = payload.get("name")
    return Member(
        account_id=str(payload.get("id", "")),
        object_id=str(object_id) if object_id else None,
        upn=str(upn) if upn else None,
        name=name if isinstance(name, str) else None,
    )


def _member(account: Any) -> Member:
    """Our Member from a botbuilder-schema ChannelAccount (Teams puts objectId/UPN in extra fields)."""
    extra: dict[str, Any] = getattr(account, "additional_properties", None) or {}
    object_id = account.aad_object_id or extra.get("objectId")
    upn = extra.get("userPrincipalName") or extra.get("email")
    return Member(
        account_id=str(account.id),
        object_id=str(object_id) if object_id else None,
        upn=str(upn) if upn else None,
        name=account.name,
    )


def conversation_parameters(bot_id: str, member_id: str, tenant_id: str) -> dict[str, Any]:
    """The body of POST /v3/conversations for a 1:1 chat (Bot Connector API reference, "Create
    Conversation": https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-api-reference),
    in the ConversationParameters wire schema; Teams requires ``tenantId``."""
    return {
        "isGroup": False,
        "bot": {"id": bot_id},
        "members": [{"id": member_id}],
        "channelData": {"tenant": {"id": tenant_id}},
        "tenantId": tenant_id,
    }


def message_activity(content: MessageContent) -> dict[str, Any]:
    """A message Activity in the wire schema (botbuilder-schema's Activity field names): the one place a
    message's content becomes what a send or an update puts on the wire."""
    activity: dict[str, Any] = {"type": "message"}
    if content.text is not None:
        activity["text"] = content.text
        activity["textFormat"] = "markdown"
    if content.card is not None:
        activity["attachments"] = [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "content": content.card}]
    if content.summary is not None:
        activity["summary"] = content.summary
    activity["channelData"] = {"notification": {"alert": True}}
    return activity


def reply_activity(text: str, reply_to_id: str | None) -> dict[str, Any]:
    """A plain message Activity answering an inbound one (threaded under it where it has an id)."""
    activity: dict[str, Any] = {"type": "message", "text": text, "textFormat": "markdown"}
    if reply_to_id:
        activity["replyToId"] = reply_to_id
    return activity


# --- Inbound activities: the bot's messaging endpoint ------------------------------------------

#: The issuer of the tokens Bot Framework channels (Teams) send to a bot.
CHANNEL_TOKEN_ISSUER = "https://api.botframework.com"
TEAMS_CHANNEL_ID = "msteams"


class InboundActivity(msgspec.Struct, frozen=True):
    """What the app reads from an authenticated inbound activity (the Activity wire schema)."""

    type: str
    channel_id: str
    service_url: str  # normalised to end with "/", as the connector client expects
    activity_id: str | None = None
    action: str | None = None
    conversation_id: str | None = None
    conversation_type: str | None = None
    tenant_id: str | None = None
    sender: Member | None = None
    recipient_id: str | None = None
    members_added: tuple[Member, ...] = ()
    members_removed: tuple[Member, ...] = ()


def _inbound_activity(activity: Any) -> InboundActivity:
    """Our InboundActivity from a botbuilder-schema Activity."""
    conversation = activity.conversation
    conversation_extra: dict[str, Any] = getattr(conversation, "additional_properties", None) or {}
    channel_data = activity.channel_data if isinstance(activity.channel_data, dict) else {}
    tenant = channel_data.get("tenant")
    # botbuilder-schema 4.17 maps ConversationAccount.tenant_id to "tenantID"; Teams sends "tenantId".
    tenant_id = (
        (conversation.tenant_id if conversation is not None else None)
        or conversation_extra.get("tenantId")
        or (tenant.get("id") if isinstance(tenant, dict) else None)
    )
    service_url = _str_or_none(activity.service_url) or ""
    return InboundActivity(
        type=_str_or_none(activity.type) or "",
        channel_id=_str_or_none(activity.channel_id) or "",
        service_url=service_url if service_url.endswith("/") else service_url + "/",
        activity_id=_str_or_none(activity.id),
        action=_str_or_none(activity.action),
        conversation_id=_str_or_none(conversation.id) if conversation is not None else None,
        conversation_type=_str_or_none(conversation.conversation_type) if conversation is not None else None,
        tenant_id=_str_or_none(tenant_id),
        sender=_member(activity.from_property) if activity.from_property is not None else None,
        recipient_id=_str_or_none(activity.recipient.id) if activity.recipient is not None else None,
        members_added=tuple(_member(m) for m in activity.members_added or () if m is not None),
        members_removed=tuple(_member(m) for m in activity.members_removed or () if m is not None),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class ChannelAuthenticator:
    """Authenticates inbound activities with botframework-connector's ``JwtTokenValidation``.

    Built once per process by shared.bootstrap. The SDK's configuration is process-wide class state:
    ``ChannelValidation.open_id_metadata_endpoint`` (Bot Framework's ``BotOpenIdMetadata`` setting;
    None keeps the public cloud's), and the signing keys the SDK fetches per metadata URL, which this
    class supplies itself (``_ChannelSigningKeys``) so the fetch goes through the app's httpx client.

    Two refusals come before the SDK sees a request. An empty Authorization header: the SDK accepts
    it whenever the app id is empty ("authentication disabled"). A token whose (unverified) issuer is
    not the channel's: the SDK would route it to its Emulator or skill validation, which a Teams bot
    never needs and which skips the serviceUrl binding.
    """

    def __init__(self, app_id: str, openid_metadata_url: str | None, http: httpx.AsyncClient) -> None:
        if not app_id:
            raise ConfigurationError(
                "MicrosoftAppId is required: without it the messaging endpoint would accept unauthenticated requests.",
                target="MicrosoftAppId",
            )
        from botframework.connector.auth import (
            AuthenticationConstants,
            ChannelValidation,
            JwtTokenExtractor,
            SimpleCredentialProvider,
        )

        ChannelValidation.open_id_metadata_endpoint = openid_metadata_url
        metadata_url = openid_metadata_url or AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL
        JwtTokenExtractor.metadataCache[metadata_url] = _ChannelSigningKeys(metadata_url, http)
        self._credentials = SimpleCredentialProvider(app_id, "")

    async def authenticate_activity(self, authorization: str | None, payload: Any) -> InboundActivity:
        """Validate the channel token for this activity (signature, issuer, audience = our app id,
        expiry, the key's endorsement of the channel, serviceurl claim = the activity's serviceUrl).

        Raises AuthenticationError (401), InvalidRequestError (400: a valid token with a body that is not an
        activity), TransientError (the signing keys could not be fetched).
        """
        from botbuilder.schema import Activity
        from botframework.connector.auth import JwtTokenValidation

        _require_channel_token(authorization)
        assert authorization is not None
        try:
            activity = Activity.deserialize(payload) if isinstance(payload, dict) else None
        except ValueError:  # msrest's DeserializationError
            activity = None
        if activity is None or not activity.type or not activity.service_url or not activity.channel_id:
            # Without serviceUrl and channelId the SDK would skip the serviceurl and endorsement checks.
            await self.authenticate_token(authorization)
            raise InvalidRequestError(
                "The body is not a Bot Framework activity (type, serviceUrl and channelId are required).",
                code="invalid_activity",
                target="body",
            )
        await self._validate(JwtTokenValidation.authenticate_request(activity, authorization, self._credentials))
        return _inbound_activity(activity)

    async def authenticate_token(self, authorization: str | None) -> None:
        """Validate the channel token alone (for a body that is not an activity)."""
        from botframework.connector.auth import ChannelValidation

        _require_channel_token(authorization)
        await self._validate(ChannelValidation.authenticate_channel_token(authorization, self._credentials, ""))

    async def _validate(self, validation: Any) -> None:
        from botframework.connector.auth import AuthenticationConstants

        try:
            identity = await validation
        except NotifyError:
            raise
        except Exception as err:  # noqa: BLE001 - the SDK signals a rejected token with bare Exception too
            # The type names the reason (ExpiredSignatureError, InvalidSignatureError, PermissionError...);
            # the message is left out: some of the SDK's messages quote claims of the token.
            logger.info("rejected an inbound activity: %s", type(err).__name__)
            raise _unauthorized() from None
        if (
            identity is None
            or not identity.is_authenticated
            or identity.get_claim_value(AuthenticationConstants.ISSUER_CLAIM) != CHANNEL_TOKEN_ISSUER
        ):
            logger.info("rejected an inbound activity: no channel identity")
            raise _unauthorized()


def _unauthorized() -> AuthenticationError:
    return AuthenticationError(
        "A valid Bot Framework channel token is required.", code="unauthorized", target="Authorization"
    )


def _require_channel_token(authorization: str | None) -> None:
    import jwt

    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not token or " " in token:
        logger.info("rejected an inbound activity: no bearer token")
        raise _unauthorized()
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        logger.info("rejected an inbound activity: malformed token")
        raise _unauthorized() from None
    if issuer != CHANNEL_TOKEN_ISSUER:
        logger.info("rejected an inbound activity: not a channel token")
        raise _unauthorized()


class _SigningKey(msgspec.Struct, frozen=True):
    """What the SDK's JwtTokenExtractor reads from its key source: the key and its endorsements."""

    public_key: Any
    endorsements: list[str]


class _ChannelSigningKeys:
    """The Bot Framework channel signing keys (OpenID metadata -> jwks_uri), fetched through the app's
    httpx client.

    Stands in for botframework-connector's ``_OpenIdMetadata`` in ``JwtTokenExtractor.metadataCache``
    (same contract: ``await get(kid)`` gives an object with ``public_key`` and ``endorsements``). The
    SDK's own fetch is a blocking ``requests.get`` without a timeout inside the event loop, and requests
    trusts only certifi's bundle: it ignores SSL_CERT_FILE, which the rest of the app honours. Keys are
    refreshed daily, and at most every few minutes when a token names a key we do not know (rotation).
    """

    REFRESH_AFTER = 24 * 3600.0
    MISS_REFRESH_AFTER = 300.0

    def __init__(self, metadata_url: str, http: httpx.AsyncClient) -> None:
        self._url = metadata_url
        self._http = http
        self._keys: dict[str, _SigningKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, key_id: str | None) -> _SigningKey:
        if self._fetched_at is None or time.monotonic() - self._fetched_at > self.REFRESH_AFTER:
            await self._refresh(self._fetched_at)
        key = self._keys.get(key_id or "")
        fetched_at = self._fetched_at
        if key is None and fetched_at is not None and time.monotonic() - fetched_at > self.MISS_REFRESH_AFTER:
            await self._refresh(fetched_at)
            key = self._keys.get(key_id or "")
        if key is None:
            logger.info("rejected an inbound activity: unknown signing key")
            raise _unauthorized()
        return key

    async def _refresh(self, seen: float | None) -> None:
        async with self._lock:
            if self._fetched_at != seen:
                return  # another request refreshed while this one waited
            metadata = await self._get_json(self._url)
            jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
                raise ConfigurationError(
                    "The Bot Framework OpenID metadata has no https jwks_uri: check BotOpenIdMetadata.",
                    code="bot_openid_metadata_invalid",
                    target="BotOpenIdMetadata",
                )
            jwks = await self._get_json(jwks_uri)
            self._keys = _parse_jwks(jwks)
            self._fetched_at = time.monotonic()
            logger.info("loaded %d Bot Framework signing key(s)", len(self._keys))

    async def _get_json(self, url: str) -> Any:
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as err:
            raise TransientError(
                f"The Bot Framework signing keys could not be fetched ({type(err).__name__}).",
                code="bot_signing_keys_unavailable",
                target="BotOpenIdMetadata",
                retry_after=5.0,
            ) from err
        if 400 <= response.status_code < 500:
            raise ConfigurationError(
                f"The Bot Framework OpenID metadata answered {response.status_code}: check BotOpenIdMetadata.",
                code="bot_openid_metadata_invalid",
                target="BotOpenIdMetadata",
            )
        if response.status_code != 200:
            raise TransientError(
                f"The Bot Framework signing keys could not be fetched (HTTP {response.status_code}).",
                code="bot_signing_keys_unavailable",
                target="BotOpenIdMetadata",
                retry_after=5.0,
            )
        try:
            return response.json()
        except ValueError as err:
            raise TransientError(
                "The Bot Framework signing keys answer is not JSON.",
                code="bot_signing_keys_unavailable",
                target="BotOpenIdMetadata",
                retry_after=5.0,
            ) from err


def _parse_jwks(jwks: Any) -> dict[str, _SigningKey]:
    from jwt import PyJWTError
    from jwt.algorithms import RSAAlgorithm

    keys: dict[str, _SigningKey] = {}
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not entry.get("kid"):
            continue
        try:
            public_key = RSAAlgorithm.from_jwk(json.dumps(entry))
        except PyJWTError:
            logger.warning("skipped a malformed Bot Framework signing key")
            continue
        endorsements = entry.get("endorsements")
        keys[str(entry["kid"])] = _SigningKey(
            public_key, [str(e) for e in endorsements] if isinstance(endorsements, list) else []
        )
    return keys
