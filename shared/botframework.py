"""Every import of the Bot Framework SDK (botbuilder-*, botframework-connector) lives here.

Upstream archived the Python Bot Framework SDK (support ended 2025-12-31); keeping it behind this one
module makes replacing it (microsoft-agents-*, the Teams SDK) a one-file change. The imports are
deferred into the functions so importing the function app stays light (botbuilder.core alone costs
~0.6 s and 60 MB).

Outbound activities are plain dicts in the Activity wire schema: msrest's ``Activity.serialize()``
costs ~100 us per call, more than the rest of the warm send path together, and adds nothing for a
payload we build ourselves. Schema types are used where they parse what others send us.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True)
class Member:
    """The recipient's ChannelAccount as the Bot Connector reports it."""

    account_id: str
    object_id: str | None
    upn: str | None
    name: str | None


def parse_member(payload: dict[str, Any]) -> Member:
    """A Teams channel account (conversation member) from its JSON, via botbuilder-schema."""
    from botbuilder.schema import ChannelAccount

    account = ChannelAccount.deserialize(payload)
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
    """The body of POST /v3/conversations for a 1:1 chat (PROTOCOL.md step 6)."""
    from botbuilder.schema import ChannelAccount, ConversationParameters

    parameters = ConversationParameters(
        is_group=False,
        bot=ChannelAccount(id=bot_id),
        members=[ChannelAccount(id=member_id)],
        tenant_id=tenant_id,
        channel_data={"tenant": {"id": tenant_id}},
    )
    body: dict[str, Any] = parameters.serialize()
    return body


def message_activity(text: str | None, card: dict[str, Any] | None, summary: str | None) -> dict[str, Any]:
    """A message Activity in the wire schema (botbuilder-schema's Activity field names)."""
    activity: dict[str, Any] = {"type": "message"}
    if text is not None:
        activity["text"] = text
        activity["textFormat"] = "markdown"
    if card is not None:
        activity["attachments"] = [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "content": card}]
    if summary is not None:
        activity["summary"] = summary
    activity["channelData"] = {"notification": {"alert": True}}
    return activity
