"""Notification ids: the id of a send (its key, or generated), a recipient's delivery id, and the
self-contained ``s1.`` id of a single send made without an Idempotency-Key.

Every send has a notification id (the Idempotency-Key, or the Service Bus message id, when given;
otherwise generated). A single send over HTTP without a key gets a self-contained id instead
(``single_send_handle``: tenant, recipient, conversation, activity, and the Entra ID client that sent
it, under an HMAC tag of shared.storage.signing) and no row until an update or a recall writes one. A queued
per-recipient item carries a tag of the same key (``fan_out_signature``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from urllib.parse import quote, urlsplit

from shared.callerauth import may_access
from shared.errors import InvalidRequestError
from shared.jsonbody import loads_strict
from shared.storage.notifications import Delivery
from shared.storage.signing import Signer


def new_notification_id() -> str:
    return str(uuid.uuid4())


def notification_id_for(key: str) -> str:
    """The notification id of a send keyed by ``key``: the key itself, unless it could not be used as
    one path segment of ``/api/notifications/{id}`` (ASP.NET Core leaves ``%2F`` undecoded in route
    values): then ``n-`` + a hash of it. The response's ``notificationId`` is always the one to use."""
    if "/" in key or "\\" in key or key in (".", ".."):
        return "n-" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return key


def delivery_id(notification_id: str, recipient: str) -> str:
    """The idempotency key of one recipient's send: the same for every retry and redelivery."""
    digest = hashlib.sha256(f"{notification_id}\n{recipient.strip().lower()}".encode()).hexdigest()
    return "d-" + digest[:40]


# A single send without an Idempotency-Key gets a self-contained id instead of a delivery row (a
# storage write on the hot path): "s1." + base64url of the compact JSON below + "." + its HMAC tag
# (shared.storage.signing), so nobody can hand-build or edit one. Status answers from it; update and recall
# decode it into the Delivery its row would have held, then write that row.
HANDLE_PREFIX = "s1."
_HANDLE_PURPOSE = "s1"
_FAN_OUT_PURPOSE = "fanout"
_HANDLE_MAX = 900  # it may become a PartitionKey (Table Storage keys: at most 1 KiB)
_HANDLE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# The service URL in a handle is the one the send used: the configured ServiceUrl or one stored from
# an authenticated inbound activity. The tag keeps a caller from choosing it; the host check is a
# second line: the bot's token never goes anywhere but a Bot Framework host.
_TRUSTED_SERVICE_HOSTS = ("smba.trafficmanager.net", ".botframework.com", ".botframework.us", ".botframework.azure.us")


def single_send_handle(
    delivery: Delivery, default_service_url: str, signer: Signer, owner: str | None = None
) -> str | None:
    """The self-contained notification id of a sent single send, or None when it cannot be one (no
    conversation, an untrusted service URL, too long): the caller then records a row as before."""
    if delivery.state != "sent" or not delivery.conversation_id:
        return None
    fields: dict[str, str | None] = {
        "t": delivery.tenant_id,
        "r": delivery.recipient,
        "c": delivery.conversation_id,
        "a": delivery.activity_id,
    }
    service_url = delivery.service_url or default_service_url
    if service_url != default_service_url:
        if not _trusted_service_url(service_url):
            return None
        fields["u"] = service_url
    if owner:
        fields["k"] = owner  # the Entra ID client that sent it: only it may use the id
    raw = json.dumps(fields, separators=(",", ":")).encode()
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    handle = HANDLE_PREFIX + encoded + "." + signer.tag(_HANDLE_PURPOSE, encoded)
    return handle if len(handle) <= _HANDLE_MAX else None


def delivery_from_handle(notification_id: str, default_service_url: str, signer: Signer) -> Delivery | None:
    """The sent Delivery a handle stands for, or None when it is not a handle this deployment issued
    (forged, edited, or signed by another deployment's key)."""
    if not notification_id.startswith(HANDLE_PREFIX) or len(notification_id) > _HANDLE_MAX:
        return None
    encoded, _, tag = notification_id[len(HANDLE_PREFIX) :].partition(".")
    if not encoded or not tag or not set(encoded) <= _HANDLE_CHARS or not set(tag) <= _HANDLE_CHARS:
        return None
    if not signer.verify(tag, _HANDLE_PURPOSE, encoded):
        return None
    try:
        fields = loads_strict(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, InvalidRequestError):
        return None
    if not isinstance(fields, dict) or not set(fields) <= {"t", "r", "c", "a", "u", "k"}:
        return None
    owner = fields.get("k")
    if owner is not None and not isinstance(owner, str):
        return None
    if not may_access(owner or ""):
        return None  # another client's notification
    tenant, recipient, conversation = fields.get("t"), fields.get("r"), fields.get("c")
    activity, service_url = fields.get("a"), fields.get("u", default_service_url)
    if not (
        isinstance(tenant, str)
        and isinstance(recipient, str)
        and isinstance(conversation, str)
        and isinstance(service_url, str)
        and tenant
        and recipient
        and conversation
        and service_url
    ):
        return None
    if activity is not None and not isinstance(activity, str):
        return None
    delivery = Delivery(notification_id, recipient, tenant, "sent", activity, conversation, service_url)
    # One send, one id: only the exact encoding this API returns is accepted.
    if single_send_handle(delivery, default_service_url, signer, owner) != notification_id:
        return None
    return delivery


def fan_out_signature(signer: Signer, notification_id: str, recipient: str, delivery: str) -> str:
    """The tag of a queued per-recipient item: it names this notification, recipient and delivery id."""
    return signer.tag(_FAN_OUT_PURPOSE, notification_id, recipient.strip().lower(), delivery)


def fan_out_signature_valid(
    signer: Signer, signature: str, notification_id: str, recipient: str, delivery: str
) -> bool:
    """Whether ``signature`` is the tag ``fan_out_signature`` gives this item."""
    return signer.verify(signature, _FAN_OUT_PURPOSE, notification_id, recipient.strip().lower(), delivery)


def _trusted_service_url(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(
        host == h or (h.startswith(".") and host.endswith(h)) for h in _TRUSTED_SERVICE_HOSTS
    )


def status_location(notification_id: str) -> str:
    return "/api/notifications/" + quote(notification_id, safe="")
