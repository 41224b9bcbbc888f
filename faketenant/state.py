"""The world of the fake tenant: users, installations, conversations, tokens, faults, the log.

Everything here is guarded by one re-entrant lock (``FakeTenant.lock``).  The HTTP layer
(:mod:`faketenant.server`) parses requests and hands them to :mod:`faketenant.routes`, which
reads and mutates this state under that lock.  Tests manipulate the same state directly.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("faketenant")
activity_logger = logging.getLogger("faketenant.activity")

#: Every route name understood by :meth:`FakeTenant.add_fault` and used in the log.
ROUTES: frozenset[str] = frozenset(
    {
        "token",
        "openid",
        "instance_discovery",
        "msi",
        "graph.installed_apps",
        "graph.catalog",
        "graph.install",
        "graph.chat",
        "connector.members",
        "connector.create",
        "connector.send",
        "connector.update",
        "connector.delete",
        "botframework.openid",
        "botframework.jwks",
        "jwks",
    }
)

GRAPH_AUDIENCE = "https://graph.microsoft.com"
BOT_AUDIENCE = "https://api.botframework.com"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
# Azure Storage's resource: tokens for Table Storage are requested with the scope
# https://storage.azure.com/.default ("Authorize access to tables using Microsoft Entra ID",
# https://learn.microsoft.com/azure/storage/tables/authorize-access-azure-active-directory).
STORAGE_AUDIENCE = "https://storage.azure.com"
#: The tenant id behind the ``botframework.com`` authority (multi-tenant bots).
BOTFRAMEWORK_TENANT_ID = "d6d49420-f39b-4df7-a1dc-d59a935871db"

ROLE_INSTALL = "TeamsAppInstallation.ReadWriteSelfForUser.All"
ROLE_CATALOG = "AppCatalog.Read.All"
DEFAULT_ROLES: frozenset[str] = frozenset({ROLE_INSTALL, ROLE_CATALOG})

#: Per-conversation limits for send + create (count, window seconds), per bot and conversation
#: (Teams, "Optimize your bot with rate limiting": https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit).
SEND_LIMITS: tuple[tuple[int, float], ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
#: Per-conversation limits for get members.
MEMBERS_LIMITS: tuple[tuple[int, float], ...] = ((14, 1.0), (16, 2.0), (120, 30.0), (3600, 3600.0))

#: Regional Bot Connector service URL prefixes (``https://smba.trafficmanager.net/{region}/``) that
#: inbound activities carry; ``teams`` is the global one that routes to the tenant's region.
#: Source: microsoft/BotFramework-Services#339 (``/de/`` -> "redirected to the wrong geo" after the EU
#: Data Boundary move), botbuilder-js#3280 (``/emea/``, ``/fr/``, ``/apac/``, ``/jp/`` service URLs).
REGIONS: frozenset[str] = frozenset(
    {"amer", "emea", "apac", "de", "fr", "uk", "in", "jp", "au", "ca", "kr", "ch", "no", "za", "br", "eudb"}
)
GLOBAL_SERVICE_PREFIX = "teams"

#: Teams' bot message size limit: about 100 KB for the message (text, card, mentions) measured as
#: UTF-16, base64 images excluded; over it the connector answers 413 MessageSizeTooBig.
#: Source: https://learn.microsoft.com/microsoftteams/platform/bots/how-to/format-your-bot-messages
MAX_MESSAGE_UTF16_BYTES = 100 * 1024
#: The connector refuses any request body over 262,144 bytes ("The request content length exceeded
#: limit of 262144 bytes.", MessageSizeTooBig). Source: microsoft/botframework-sdk#6669.
MAX_REQUEST_BYTES = 262_144
_BASE64_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+;base64,[A-Za-z0-9+/=]+")


def message_utf16_bytes(activity: Mapping[str, Any]) -> int:
    """The size Teams limits: text, summary, card content and entities (mentions) as UTF-16, without
    base64-encoded images (format-your-bot-messages, "bot message size limit")."""
    parts: list[str] = [str(activity.get("text") or ""), str(activity.get("summary") or "")]
    for item in list(activity.get("attachments") or []) + list(activity.get("entities") or []):
        content = item.get("content", item) if isinstance(item, dict) else item
        parts.append(_BASE64_DATA_URI.sub("", json.dumps(content, ensure_ascii=False, separators=(",", ":"))))
    return len("".join(parts).encode("utf-16-le"))


_SIGNING_KEY_LOCK = threading.Lock()
#: Key id of the Bot Framework channel signing key (shared by all fakes in a process so that
#: botframework-connector's per-URL key cache never holds a stale key).
SIGNING_KID = "faketenant-channel-key-1"


#: Key id of the tenant's Entra ID token signing key (access tokens for the app's own HTTP API). A
#: different key from the Bot Framework channel's: Entra ID and Bot Framework publish separate JWKS.
ENTRA_SIGNING_KID = "faketenant-entra-key-1"
_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _process_key(kid: str) -> rsa.RSAPrivateKey:
    """The process-wide RSA key with this key id, made on first use."""
    with _SIGNING_KEY_LOCK:
        key = _KEYS.get(kid)
        if key is None:
            key = _KEYS[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key


def _signing_key() -> rsa.RSAPrivateKey:
    """Return the process-wide RSA key used to sign channel (inbound) tokens."""
    return _process_key(SIGNING_KID)


def _entra_signing_key() -> rsa.RSAPrivateKey:
    """The process-wide RSA key that signs the fake tenant's Entra ID access tokens."""
    return _process_key(ENTRA_SIGNING_KID)


def _public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    pub = key.public_key().public_numbers()

    def enc(n: int) -> str:
        return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": enc(pub.n), "e": enc(pub.e)}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FakeUser:
    """A user of a fake tenant.  ``account_id`` is the Teams "29:..." id, derived from ``oid``."""

    upn: str
    oid: str
    display_name: str
    tenant_id: str

    @property
    def account_id(self) -> str:
        """The Bot Framework channel account id ("29:..."), deterministic per oid."""
        return "29:1" + _b64url(hashlib.sha256(self.oid.encode("ascii")).digest())[:42]

    @property
    def given_name(self) -> str:
        """First word of the display name."""
        return self.display_name.split(" ", 1)[0]

    @property
    def surname(self) -> str:
        """Rest of the display name (may be empty)."""
        parts = self.display_name.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""

    def channel_account(self) -> dict[str, Any]:
        """The ChannelAccount JSON the Bot Connector returns for this user."""
        return {
            "id": self.account_id,
            "objectId": self.oid,
            "name": self.display_name,
            "givenName": self.given_name,
            "surname": self.surname,
            "email": self.upn,
            "userPrincipalName": self.upn,
            "tenantId": self.tenant_id,
            "userRole": "user",
        }


@dataclass
class Fault:
    """An injected failure for one route, consumed FIFO ``count`` times."""

    route: str
    status: int
    count: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    body: dict[str, Any] | str | None = None
    malformed: bool = False
    #: The request takes effect (a message is stored, an update applied) and only then is the
    #: answer the fault (5xx, or a ``delay`` longer than the client waits): "delivered, then an
    #: error". Source: microsoft/BotFramework-DirectLineJS#188 (502 "bot timed out" for a request
    #: that was handled), MicrosoftDocs/msteams-docs#4592 (duplicates after slow answers).
    applied: bool = False


@dataclass(frozen=True)
class LoggedRequest:
    """One request the fake answered (never holds headers, tokens or secrets)."""

    method: str
    path: str
    query: str
    route: str
    status: int
    timestamp: float
    tenant_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class Installation:
    """The Teams app installed in a user's personal scope."""

    id: str
    user_oid: str
    catalog_id: str
    #: ``time.monotonic()`` from which Graph returns the installation's chat (and the connector knows
    #: it). Right after an install the chat may be missing for tens of seconds to minutes for users
    #: who have not opened Teams recently: a matter of time, not of how often one asks.
    #: Source: public reports of the chat call failing right after an install; Graph "Get chat between
    #: user and app" (https://learn.microsoft.com/graph/api/userscopeteamsappinstallation-get-chat).
    chat_ready_at: float = 0.0

    def chat_ready(self) -> bool:
        """Whether the chat exists yet."""
        return time.monotonic() >= self.chat_ready_at


@dataclass
class IssuedToken:
    """An access token the fake issued and will accept."""

    audience: str
    tenant_id: str
    app_id: str
    roles: frozenset[str]
    expires_at: float
    managed_identity: bool = False


@dataclass
class TenantInfo:
    """Per-tenant flags."""

    tenant_id: str
    bot_disabled: bool = False
    #: The region the tenant's Teams data lives in (e.g. "emea"), or None: every regional service
    #: URL then works (MicrosoftDocs/msteams-docs#2410: "Service url from wrong region works fine").
    geo: str | None = None
    #: False: the connector refuses the Graph chat id as a conversation id in this tenant (404
    #: ConversationNotFound), so senders need members + create conversation (see get_conversation).
    chat_id_conversations: bool = True


@dataclass
class Conversation:
    """A 1:1 conversation between the bot and a user."""

    id: str
    user_oid: str
    deleted: bool = False


class FakeTenant:
    """The stateful world: one app registration, one or more tenants and their users.

    All public methods are thread-safe.
    """

    def __init__(
        self,
        tenant_id: str | None = None,
        app_id: str | None = None,
        teams_app_id: str | None = None,
        client_secret: str = "s3cret-value",
        *,
        app_display_name: str = "Notifier",
    ) -> None:
        self.lock = threading.RLock()
        self.tenant_id: str = tenant_id or str(uuid.uuid4())
        self.app_id: str = app_id or str(uuid.uuid4())
        self.teams_app_id: str = teams_app_id or str(uuid.uuid4())
        self.client_secret: str = client_secret
        self.app_display_name: str = app_display_name
        self.catalog_id: str = str(uuid.uuid4())
        self.in_catalog: bool = True
        self.app_disabled: bool = False
        self.consented_roles: set[str] = set(DEFAULT_ROLES)
        #: Seconds after a Graph install until the installation's chat exists (see Installation).
        self.chat_ready_after: float = 0.0
        #: Sends to a user who blocked the bot OR uninstalled the app answer Teams' documented 403
        #: ``{"errorCode":209,"message":"{\"subCode\":\"MessageWritesBlocked\"}"}`` (one body for
        #: both) instead of the coded ConversationBlockedByUser / BotNotInConversationRoster.
        #: Source: https://learn.microsoft.com/microsoftteams/platform/bots/how-to/conversations/subscribe-to-conversation-events
        #: ("Uninstall behavior for personal app with bot"); Microsoft Q&A 1513369 ("403 Forbidden -
        #: subCode MessageWritesBlocked": blocked and uninstalled give 403s of different shapes).
        self.message_writes_blocked: bool = False
        self.rate_limits: bool = False
        self.app_rate_per_second: int = 30
        self.token_lifetime: int = 3600
        self.max_message_bytes: int = MAX_MESSAGE_UTF16_BYTES
        self.max_request_bytes: int = MAX_REQUEST_BYTES
        self.identity_header: str = secrets.token_hex(16)
        self.managed_identity_client_id: str = str(uuid.uuid4())
        self.federated_credential_enabled: bool = True
        #: Set by FakeTenantServer.start(); used as the default serviceUrl of channel tokens.
        self.base_url: str | None = None

        self._tenants: dict[str, TenantInfo] = {self.tenant_id: TenantInfo(self.tenant_id)}
        self._users: dict[str, FakeUser] = {}  # oid -> user
        self._upn_index: dict[tuple[str, str], str] = {}  # (tenant, upn lower) -> oid
        self._installations: dict[str, Installation] = {}  # user oid -> installation
        self._external_chats: dict[str, str] = {}  # user oid -> chat id of another Bot Connector
        self._blocked: set[str] = set()  # user oids that blocked the bot
        self._policy_blocked: set[str] = set()  # user oids an app permission policy keeps from the app
        self._conversations: dict[str, Conversation] = {}
        self._conversation_generation: dict[str, int] = {}  # user oid -> generation
        self._activities: dict[str, dict[str, Any]] = {}
        self._activity_seq: int = 0
        self._tokens: dict[str, IssuedToken] = {}
        self._faults: dict[str, collections.deque[Fault]] = {r: collections.deque() for r in ROUTES}
        self._log: list[LoggedRequest] = []
        self._conv_hits: dict[tuple[str, str], collections.deque[float]] = {}
        self._app_hits: dict[str, collections.deque[float]] = {}

    # ------------------------------------------------------------------ tenants and users
    def add_tenant(self, tenant_id: str | None = None) -> str:
        """Register another tenant the app can get tokens for; returns its id."""
        tid = tenant_id or str(uuid.uuid4())
        with self.lock:
            self._tenants.setdefault(tid, TenantInfo(tid))
        return tid

    @property
    def tenant_ids(self) -> list[str]:
        """All known tenant ids (the primary first)."""
        with self.lock:
            return list(self._tenants)

    def has_tenant(self, tenant_id: str) -> bool:
        """Whether ``tenant_id`` is a known tenant (case-insensitive)."""
        with self.lock:
            return tenant_id.lower() in {t.lower() for t in self._tenants}

    def add_user(
        self,
        upn: str,
        *,
        display_name: str | None = None,
        oid: str | None = None,
        tenant_id: str | None = None,
        installed: bool = False,
    ) -> FakeUser:
        """Create a user (in the primary tenant unless ``tenant_id``); optionally pre-install the app."""
        tid = tenant_id or self.tenant_id
        if display_name is None:
            local = upn.split("@", 1)[0].split("#", 1)[0]
            display_name = local.replace(".", " ").replace("_", " ").title()
        user = FakeUser(upn=upn, oid=oid or str(uuid.uuid4()), display_name=display_name, tenant_id=tid)
        with self.lock:
            if tid not in self._tenants:
                raise ValueError(f"unknown tenant {tid!r}: call add_tenant() first")
            key = (tid, upn.lower())
            if key in self._upn_index or user.oid in self._users:
                raise ValueError(f"user {upn!r} already exists")
            self._users[user.oid] = user
            self._upn_index[key] = user.oid
            if installed:
                self.install_app(user)
        return user

    @property
    def users(self) -> list[FakeUser]:
        """All users, in creation order."""
        with self.lock:
            return list(self._users.values())

    def find_user(self, id_or_upn: str, tenant_id: str | None = None) -> FakeUser | None:
        """Look a user up by oid or UPN (case-insensitive), optionally restricted to a tenant."""
        with self.lock:
            user = self._users.get(id_or_upn) or self._users.get(id_or_upn.lower())
            if user is None:
                for (tid, upn), oid in self._upn_index.items():
                    if upn == id_or_upn.lower() and (tenant_id is None or tid == tenant_id):
                        user = self._users[oid]
                        break
            if user is not None and tenant_id is not None and user.tenant_id != tenant_id:
                return None
            return user

    def user_by_account_id(self, account_id: str) -> FakeUser | None:
        """Look a user up by the "29:..." channel account id."""
        with self.lock:
            for user in self._users.values():
                if user.account_id == account_id:
                    return user
            return None

    def _oid(self, user: FakeUser | str) -> str:
        if isinstance(user, FakeUser):
            return user.oid
        found = self.find_user(user)
        if found is None:
            raise KeyError(f"unknown user {user!r}")
        return found.oid

    # ------------------------------------------------------------------ installation and chat
    def installation_id_for(self, user: FakeUser | str) -> str:
        """The (stable) installation id Graph reports for this user's installation."""
        oid = self._oid(user)
        return _b64url(f"{oid}##{self.catalog_id}".encode("ascii"))

    def chat_id_for(self, user: FakeUser | str) -> str:
        """The personal chat id Graph returns: ``19:{oid}_{app_id}@unq.gbl.spaces``, or the chat set by
        :meth:`use_external_chat`."""
        oid = self._oid(user)
        with self.lock:
            external = self._external_chats.get(oid)
        return external or f"19:{oid}_{self.app_id}@unq.gbl.spaces"

    def use_external_chat(self, user: FakeUser | str, chat_id: str) -> None:
        """Graph answers ``chat_id`` as the user's installation chat: a chat of another Bot Connector (the
        sandbox maps its demo users to Microsoft 365 Agents Playground's personal chat this way)."""
        oid = self._oid(user)
        with self.lock:
            self._external_chats[oid] = chat_id

    def install_app(self, user: FakeUser | str, *, chat_delay: float = 0.0) -> Installation:
        """Install the app for a user; its chat exists ``chat_delay`` seconds later (pre-install:
        by default at once)."""
        oid = self._oid(user)
        with self.lock:
            inst = self._installations.get(oid)
            if inst is None:
                ready_at = time.monotonic() + chat_delay if chat_delay > 0 else 0.0
                inst = Installation(self.installation_id_for(oid), oid, self.catalog_id, ready_at)
                self._installations[oid] = inst
            return inst

    def block_app_by_policy(self, user: FakeUser | str, blocked: bool = True) -> None:
        """A Teams app permission policy assigned to this user blocks the app: Graph's install for
        the user answers 403 "App is blocked by app permission policy" (AccessDenied) although every
        permission is granted. Source: OfficeDev/microsoft-teams-apps-company-communicator#479
        (proactive install fails with 403 until the app permission policy allows the app)."""
        oid = self._oid(user)
        with self.lock:
            if blocked:
                self._policy_blocked.add(oid)
            else:
                self._policy_blocked.discard(oid)

    def is_blocked_by_policy(self, user: FakeUser | str) -> bool:
        """Whether an app permission policy keeps the user from installing the app."""
        oid = self._oid(user)
        with self.lock:
            return oid in self._policy_blocked

    def set_geo(self, geo: str | None, tenant_id: str | None = None) -> None:
        """The tenant's data now lives in ``geo`` (e.g. after an EU Data Boundary move): connector
        calls on another region's service URL answer 400 BadArgument "Incoming request was
        redirected to the wrong geo"; the global ``/teams/`` URL keeps working.
        Source: microsoft/BotFramework-Services#339."""
        if geo is not None and geo not in REGIONS:
            raise ValueError(f"unknown region {geo!r}; known: {sorted(REGIONS)}")
        with self.lock:
            self._tenants[tenant_id or self.tenant_id].geo = geo

    def geo_of(self, tenant_id: str) -> str | None:
        """The tenant's region, or None when every regional URL works."""
        with self.lock:
            info = self._tenants.get(tenant_id)
            return info.geo if info else None

    def service_url_for(self, user: FakeUser | str, region: str | None = None) -> str:
        """The service URL an inbound activity for this user carries: the regional one of
        ``region`` (default: the tenant's geo), else the global ``/teams/``."""
        oid = self._oid(user)
        with self.lock:
            region = region or self.geo_of(self._users[oid].tenant_id) or GLOBAL_SERVICE_PREFIX
        return f"{self.base_url or 'https://127.0.0.1'}/{region}/"

    def uninstall_app(self, user: FakeUser | str) -> None:
        """Remove the installation; sends to the user's conversations then fail with 403."""
        oid = self._oid(user)
        with self.lock:
            self._installations.pop(oid, None)

    def is_installed(self, user: FakeUser | str) -> bool:
        """Whether the app is installed for the user."""
        oid = self._oid(user)
        with self.lock:
            return oid in self._installations

    @property
    def installations(self) -> dict[str, Installation]:
        """Snapshot: user oid -> installation."""
        with self.lock:
            return dict(self._installations)

    def block_bot(self, user: FakeUser | str) -> None:
        """The user blocks the bot: creates/sends answer 403 ConversationBlockedByUser."""
        oid = self._oid(user)
        with self.lock:
            self._blocked.add(oid)

    def unblock_bot(self, user: FakeUser | str) -> None:
        """Undo :meth:`block_bot`."""
        oid = self._oid(user)
        with self.lock:
            self._blocked.discard(oid)

    def is_blocked(self, oid: str) -> bool:
        """Whether the user with this oid blocked the bot."""
        with self.lock:
            return oid in self._blocked

    def disable_bot_for_tenant(self, tenant_id: str | None = None, disabled: bool = True) -> None:
        """A tenant admin blocks the app: connector calls answer 403 BotDisabledByAdmin."""
        with self.lock:
            self._tenants[tenant_id or self.tenant_id].bot_disabled = disabled

    def is_bot_disabled(self, tenant_id: str) -> bool:
        """Whether the bot is disabled by the admin of ``tenant_id``."""
        with self.lock:
            info = self._tenants.get(tenant_id)
            return bool(info and info.bot_disabled)

    def remove_from_catalog(self) -> None:
        """The app disappears from the org catalog (catalog query gives an empty ``value``)."""
        with self.lock:
            self.in_catalog = False

    # ------------------------------------------------------------------ conversations
    def conversation_id_for(self, user: FakeUser | str) -> str:
        """The "a:..." id that create-conversation returns now for this user (deterministic)."""
        oid = self._oid(user)
        with self.lock:
            gen = self._conversation_generation.get(oid, 0)
            u = self._users[oid]
        suffix = "" if gen == 0 else f"|{gen}"
        raw = hashlib.sha256(f"{self.app_id}|{u.account_id}{suffix}".encode()).digest()
        return "a:1" + _b64url(raw)[:40]

    def open_conversation(self, user: FakeUser | str, conversation_id: str | None = None) -> str:
        """Register (idempotently) a conversation with the user; returns its id."""
        oid = self._oid(user)
        with self.lock:
            cid = conversation_id or self.conversation_id_for(oid)
            conv = self._conversations.get(cid)
            if conv is None or conv.deleted:
                self._conversations[cid] = Conversation(cid, oid)
            return cid

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The live (not deleted) conversation with that id, or None."""
        with self.lock:
            conv = self._conversations.get(conversation_id)
            if conv is None and conversation_id.startswith("19:"):
                # The Graph personal chat id is a valid conversation id once the app is installed:
                # Teams' "Send proactive installation messages" page sends to it directly
                # (https://learn.microsoft.com/microsoftteams/platform/graph-api/proactive-bots-and-messages/graph-proactive-bots-and-messages).
                # A tenant with chat_id_conversations off models the connector refusing it with 404
                # ConversationNotFound, the answer public reports show for conversation ids it does not
                # know (https://github.com/MicrosoftDocs/msteams-docs/issues/9425,
                # https://github.com/microsoft/botframework-sdk/issues/6628): the members call on the
                # chat id (GET /v3/conversations/{chat id}/members) still works there, as it always has
                # for this flow.
                body = conversation_id[3:].split("@", 1)[0]
                oid, _, app = body.partition("_")
                inst = self._installations.get(oid)
                if app == self.app_id and oid in self._users and inst is not None and inst.chat_ready():
                    conv = self._conversations[conversation_id] = Conversation(conversation_id, oid)
            if conv is None or conv.deleted:
                return None
            return conv

    def refuse_chat_id_conversations(self, tenant_id: str | None = None, refused: bool = True) -> None:
        """Make the connector refuse the Graph chat id as a conversation id for sends in a tenant."""
        tid = tenant_id or self.tenant_id
        with self.lock:
            self._tenants.setdefault(tid, TenantInfo(tid)).chat_id_conversations = not refused

    def accepts_chat_id_conversations(self, tenant_id: str) -> bool:
        """Whether the connector takes the Graph chat id as a conversation id in ``tenant_id``."""
        with self.lock:
            info = self._tenants.get(tenant_id)
            return info is None or info.chat_id_conversations

    def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation: later sends give 404 ConversationNotFound, and the next
        create-conversation for that user returns a new id."""
        with self.lock:
            conv = self._conversations.get(conversation_id)
            if conv is None:
                raise KeyError(conversation_id)
            conv.deleted = True
            if conversation_id.startswith("a:"):
                self._conversation_generation[conv.user_oid] = self._conversation_generation.get(conv.user_oid, 0) + 1

    @property
    def conversations(self) -> dict[str, FakeUser]:
        """Snapshot: live conversation id -> user."""
        with self.lock:
            return {c.id: self._users[c.user_oid] for c in self._conversations.values() if not c.deleted}

    # ------------------------------------------------------------------ activities
    def store_activity(self, conversation: Conversation, activity: dict[str, Any]) -> dict[str, Any]:
        """Record a delivered activity; returns the stored record."""
        with self.lock:
            self._activity_seq += 1
            aid = f"1{1_700_000_000_000 + self._activity_seq}"
            user = self._users[conversation.user_oid]
            record: dict[str, Any] = {
                "id": aid,
                "conversation_id": conversation.id,
                "upn": user.upn,
                "oid": user.oid,
                "activity": activity,
                "deleted": False,
                "updated": 0,
                "timestamp": time.time(),
            }
            self._activities[aid] = record
        activity_logger.info("delivered to %s: %s", user.upn, preview(activity))
        return record

    def get_activity(self, conversation_id: str, activity_id: str) -> dict[str, Any] | None:
        """A live activity of that conversation, or None."""
        with self.lock:
            rec = self._activities.get(activity_id)
            if rec is None or rec["deleted"] or rec["conversation_id"] != conversation_id:
                return None
            return rec

    def activities(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        """All stored activities (including deleted ones), optionally for one conversation."""
        with self.lock:
            return [
                dict(r)
                for r in self._activities.values()
                if conversation_id is None or r["conversation_id"] == conversation_id
            ]

    def messages_for(self, user: FakeUser | str) -> list[dict[str, Any]]:
        """The user's delivered, not deleted activities (stored records), oldest first."""
        oid = self._oid(user)
        with self.lock:
            return [dict(r) for r in self._activities.values() if r["oid"] == oid and not r["deleted"]]

    # ------------------------------------------------------------------ tokens
    def issue_token(
        self,
        audience: str,
        tenant_id: str,
        *,
        app_id: str | None = None,
        managed_identity: bool = False,
        lifetime: int | None = None,
    ) -> tuple[str, IssuedToken]:
        """Mint and remember an access token (an unsigned-looking JWT)."""
        now = time.time()
        life = self.token_lifetime if lifetime is None else lifetime
        with self.lock:
            roles = frozenset(self.consented_roles) if audience == GRAPH_AUDIENCE else frozenset()
            info = IssuedToken(
                audience=audience,
                tenant_id=tenant_id,
                app_id=app_id or self.app_id,
                roles=roles,
                expires_at=now + life,
                managed_identity=managed_identity,
            )
        header = {"typ": "JWT", "alg": "RS256", "kid": "faketenant"}
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + life),
            "tid": tenant_id,
            "appid": info.app_id,
            "oid": info.app_id,
            "jti": secrets.token_hex(12),
        }
        if roles:
            claims["roles"] = sorted(roles)
        token = ".".join(
            (
                _b64url(json.dumps(header).encode()),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(32)),
            )
        )
        with self.lock:
            if len(self._tokens) > 50_000:
                self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
            self._tokens[token] = info
        return token, info

    def lookup_token(self, token: str) -> IssuedToken | None:
        """The unexpired issued token, or None."""
        with self.lock:
            info = self._tokens.get(token)
        if info is None or info.expires_at <= time.time():
            return None
        return info

    def sign_channel_token(
        self,
        audience: str | None = None,
        service_url: str | None = None,
        issuer: str = "https://api.botframework.com",
        expires_in: int = 3600,
        **extra_claims: Any,
    ) -> str:
        """An RS256 Bot Framework channel token (inbound ``Authorization: Bearer``), signed with
        the key published at ``/botframework/keys``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or ((self.base_url or "https://127.0.0.1") + "/teams/"),
            "nbf": now - 5,
            "iat": now - 5,
            "exp": now + expires_in,
        }
        claims.update(extra_claims)
        return jwt.encode(claims, _signing_key(), algorithm="RS256", headers={"kid": SIGNING_KID})

    def sign_access_token(
        self,
        audience: str,
        *,
        roles: Iterable[str] = (),
        client_id: str | None = None,
        expires_in: int = 3600,
        issuer: str | None = None,
        tenant_id: str | None = None,
        **extra_claims: Any,
    ) -> str:
        """An Entra ID v2.0 access token for an API of this tenant, as the token endpoint issues it
        to a client (client credentials: ``roles`` = the app roles assigned to the client; a
        delegated token adds ``scp``). Signed with the key published at
        ``/{tenant}/discovery/v2.0/keys``.

        Claims per https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference:
        v2.0 tokens carry ``iss`` = ``{authority}/{tid}/v2.0``, ``aud`` = the API's client id or
        Application ID URI, ``azp`` = the client's app id, ``tid``, ``oid``, ``sub``, ``roles``,
        ``ver`` = "2.0"; header ``kid`` names the signing key (``alg`` RS256)."""
        now = int(time.time())
        tid = tenant_id or self.tenant_id
        client = client_id or str(uuid.uuid4())
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": issuer or f"{self.base_url or 'https://127.0.0.1'}/{tid}/v2.0",
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + expires_in,
            "azp": client,
            "azpacr": "1",
            # The client's service principal (app-only tokens): stable per client.
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + client)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + client)),
            "tid": tid,
            "ver": "2.0",
        }
        if roles:
            claims["roles"] = list(roles)
        claims.update(extra_claims)
        return jwt.encode(claims, _entra_signing_key(), algorithm="RS256", headers={"kid": ENTRA_SIGNING_KID})

    @staticmethod
    def entra_jwks() -> dict[str, Any]:
        """The tenant's Entra ID signing keys (JWKS at the ``jwks_uri`` of its OpenID configuration)."""
        return {"keys": [_public_jwk(_entra_signing_key(), ENTRA_SIGNING_KID)]}

    @staticmethod
    def jwks() -> dict[str, Any]:
        """The JWKS with the channel signing public key (endorsed for msteams)."""
        key = _public_jwk(_signing_key(), SIGNING_KID)
        return {"keys": [{**key, "endorsements": ["msteams", "webchat", "emulator"]}]}

    # ------------------------------------------------------------------ faults
    def add_fault(
        self,
        route: str,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        body: dict[str, Any] | str | None = None,
        malformed: bool = False,
        applied: bool = False,
    ) -> Fault:
        """Queue a fault for ``route``; faults are consumed FIFO, each ``count`` times.

        A fault with a status below 400 (and no body, not malformed) only delays the request,
        which is then answered normally. ``applied=True``: the request is carried out first, then
        answered with the fault (after ``delay``).
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; known: {sorted(ROUTES)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        fault = Fault(route, status, count, retry_after, delay, body, malformed, applied)
        with self.lock:
            self._faults[route].append(fault)
        return fault

    def take_fault(self, route: str) -> Fault | None:
        """Consume one use of the first fault queued for ``route``."""
        with self.lock:
            queue = self._faults.get(route)
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.popleft()
            return fault

    def queued_faults(self) -> list[Fault]:
        """Snapshot of the queued faults, route by route, in the order they will be consumed."""
        with self.lock:
            return [replace(f) for route in sorted(self._faults) for f in self._faults[route]]

    def clear_faults(self) -> None:
        """Drop all queued faults."""
        with self.lock:
            for q in self._faults.values():
                q.clear()

    # ------------------------------------------------------------------ log
    def record(self, entry: LoggedRequest) -> None:
        """Append to the request log."""
        with self.lock:
            self._log.append(entry)

    @property
    def log(self) -> list[LoggedRequest]:
        """Snapshot of the request log (control endpoints excluded)."""
        with self.lock:
            return list(self._log)

    def calls(self, route: str | None = None) -> int:
        """Number of logged requests (for one route, or all)."""
        with self.lock:
            return sum(1 for e in self._log if route is None or e.route == route)

    def clear_log(self) -> None:
        """Forget all logged requests."""
        with self.lock:
            self._log.clear()

    # ------------------------------------------------------------------ rate limits
    def check_rate(
        self, conversation_key: str | None, tenant_id: str, limits: Iterable[tuple[int, float]]
    ) -> float | None:
        """Apply Teams rate limits when ``rate_limits`` is on.

        Returns None when allowed (the hit is recorded) or the seconds to wait before a retry
        would be allowed.
        """
        if not self.rate_limits:
            return None
        now = time.monotonic()
        with self.lock:
            wait = 0.0
            app_hits = self._app_hits.setdefault(tenant_id, collections.deque())
            while app_hits and app_hits[0] <= now - 1.0:
                app_hits.popleft()
            rate = max(1, int(self.app_rate_per_second))
            if len(app_hits) >= rate:
                wait = max(wait, app_hits[-rate] + 1.0 - now)
            hits: collections.deque[float] | None = None
            if conversation_key is not None:
                limits = tuple(limits)
                key = (conversation_key, ",".join(f"{n}/{s}" for n, s in limits))
                hits = self._conv_hits.setdefault(key, collections.deque())
                longest = max(s for _, s in limits)
                while hits and hits[0] <= now - longest:
                    hits.popleft()
                for n, secs in limits:
                    if len(hits) >= n:
                        nth = hits[-n]
                        if nth > now - secs:
                            wait = max(wait, nth + secs - now)
            if wait > 0:
                return max(wait, 0.001)
            app_hits.append(now)
            if hits is not None:
                hits.append(now)
            return None

    # ------------------------------------------------------------------ views
    def messages_by_user(self) -> dict[str, list[dict[str, Any]]]:
        """upn -> delivered, not deleted activities (the ``/_fake/messages`` view)."""
        with self.lock:
            out: dict[str, list[dict[str, Any]]] = {u.upn: [] for u in self._users.values()}
            for rec in self._activities.values():
                if not rec["deleted"]:
                    out.setdefault(rec["upn"], []).append(dict(rec))
            return out

    def snapshot_users(self) -> list[dict[str, Any]]:
        """Users as JSON (the ``/_fake/users`` view)."""
        with self.lock:
            return [
                {
                    "upn": u.upn,
                    "oid": u.oid,
                    "display_name": u.display_name,
                    "tenant_id": u.tenant_id,
                    "account_id": u.account_id,
                    "installed": u.oid in self._installations,
                    "blocked": u.oid in self._blocked,
                    "blocked_by_policy": u.oid in self._policy_blocked,
                }
                for u in self._users.values()
            ]


def preview(activity: Mapping[str, Any], limit: int = 80) -> str:
    """A short one-line text preview of an activity (text, else card summary)."""
    text = activity.get("text") or activity.get("summary")
    if not text:
        atts = activity.get("attachments") or []
        text = f"[{len(atts)} attachment(s): {', '.join(str(a.get('contentType')) for a in atts)}]"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
