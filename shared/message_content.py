"""The content of a message (text, Adaptive Card, summary), validated once: what a send, an update, a
notification's stored record and the pipeline carry, and what ``botframework.message_activity`` puts
on the wire."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The fields' constraints; each request model gives them its own description (docs/API.md and the
# connector's OpenAPI definition word a send and an update differently).
Text = Annotated[str | None, Field(min_length=1, title="Text")]
Card = Annotated[dict[str, Any] | None, Field(title="Adaptive Card")]
Summary = Annotated[str | None, Field(min_length=1, max_length=1024, title="Summary")]


class MessageContent(BaseModel):
    """Text and/or an Adaptive Card, with an optional summary (the notification's preview text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Annotated[
        Text,
        Field(
            description="The message text (Markdown). Give text, card, or both. Teams accepts about 100 KB of text "
            "and card together, measured as UTF-16 (2 bytes per character; images as URLs)."
        ),
    ] = None
    card: Annotated[
        Card,
        Field(description='An Adaptive Card JSON object ({"type": "AdaptiveCard", ...}). Give text, card, or both.'),
    ] = None
    summary: Annotated[
        Summary, Field(description="Optional preview text shown in the notification and activity feed.")
    ] = None

    @field_validator("card")
    @classmethod
    def _card_is_adaptive(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "AdaptiveCard":
            raise ValueError('must be an Adaptive Card object with "type": "AdaptiveCard"')
        return value

    @model_validator(mode="after")
    def _text_or_card(self) -> Self:
        if self.text is None and self.card is None:
            raise ValueError("give text, card, or both")
        return self

    def content(self) -> MessageContent:
        """The content alone (a request's text, card and summary, without whom it goes to)."""
        return MessageContent.model_construct(text=self.text, card=self.card, summary=self.summary)

    def content_bytes(self) -> int:
        """The size of what is sent (text, card, summary), which Teams limits."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())

    def fingerprint(self) -> str:
        """A digest of the content (an update's: what a delivery row records as the content it shows)."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
