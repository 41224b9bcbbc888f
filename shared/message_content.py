"""The content of a message (text, Adaptive Card, summary), validated once: what a send, an update, a
notification's stored record and the pipeline carry, and what ``botframework.message_activity`` puts
on the wire.

The models of the HTTP API are msgspec Structs (shared.request_models, shared.response_models): typed,
frozen, checked against their declared constraints by ``msgspec.convert``, and their JSON Schema is
what the connector's OpenAPI definition is tested against. msgspec rather than pydantic because the
first send after every cold start imports these models: msgspec costs a few ms to import and nothing
to declare a model, pydantic about 0.15 s (docs/PERFORMANCE.md, row 4b).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# The fields' constraints; each request model adds its own description (docs/API.md and the
# connector's OpenAPI definition word a send and an update differently).
Text = Annotated[str, Meta(min_length=1, title="Text")]
Card = Annotated[dict[str, Any], Meta(title="Adaptive Card")]
Summary = Annotated[str, Meta(min_length=1, max_length=1024, title="Summary")]
NOT_ADAPTIVE = 'must be an Adaptive Card object with "type": "AdaptiveCard"'
NO_CONTENT = "give text, card, or both"


class MessageContent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Text and/or an Adaptive Card, with an optional summary (the notification's preview text).

    Built from a request by ``shared.request_models`` (which checks ``problem()``), or in code."""

    text: (
        Annotated[
            Text,
            Meta(
                description="The message text (Markdown). Give text, card, or both. Teams accepts about 100 KB of "
                "text and card together, measured as UTF-16 (2 bytes per character; images as URLs)."
            ),
        ]
        | None
    ) = None
    card: (
        Annotated[
            Card,
            Meta(description='An Adaptive Card JSON object ({"type": "AdaptiveCard", ...}). Give text, card, or both.'),
        ]
        | None
    ) = None
    summary: (
        Annotated[Summary, Meta(description="Optional preview text shown in the notification and activity feed.")]
        | None
    ) = None

    def problem(self) -> tuple[str, str] | None:
        """What is wrong with the content beyond its fields' types, as (field, reason), or None."""
        if self.card is not None and self.card.get("type") != "AdaptiveCard":
            return "card", NOT_ADAPTIVE
        if self.text is None and self.card is None:
            return "text, card", NO_CONTENT
        return None

    def content(self) -> MessageContent:
        """The content alone (a request's text, card and summary, without whom it goes to)."""
        return MessageContent(text=self.text, card=self.card, summary=self.summary)

    def content_dict(self) -> dict[str, Any]:
        """The present ones of text, card and summary."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        return {name: value for name, value in content.items() if value is not None}

    def content_bytes(self) -> int:
        """The size of what is sent (text, card, summary), which Teams limits."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())

    def fingerprint(self) -> str:
        """A digest of the content (an update's: what a delivery row records as the content it shows)."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
