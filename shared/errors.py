"""The library's error tree: every failure a caller, an operator or a trigger can see.

Each error carries a stable snake_case ``code`` (used in HTTP bodies, log lines and failure records),
a human ``message`` that never contains a secret or token, and a ``target`` naming the field,
setting or permission at fault. Foreign exceptions (httpx, azure-core, msal) are translated into
this tree once, at the boundary where they occur, with ``raise ... from err``.
"""

from __future__ import annotations


class NotifyError(Exception):
    """Base of every error the library raises on purpose."""

    code: str = "notify_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.target = target

    def to_body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}


class InvalidRequestError(NotifyError):
    """The caller's fault: bad input, unknown user, a user who blocked the bot."""

    code = "invalid_request"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        target: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, target=target)
        if http_status is not None:
            self.http_status = http_status


class RecipientError(InvalidRequestError):
    """The recipient cannot be messaged (unknown, blocked the bot, app blocked by the tenant admin)."""

    code = "recipient_not_found"
    http_status = 404


class ConfigurationError(NotifyError):
    """Our own configuration is wrong: names the setting or permission to fix."""

    code = "configuration_error"
    http_status = 500


class TransientError(NotifyError):
    """Upstream trouble that a later retry may clear (429, 5xx, timeouts)."""

    code = "upstream_unavailable"
    http_status = 503

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        target: str | None = None,
        retry_after: float = 5.0,
    ) -> None:
        super().__init__(message, code=code, target=target)
        self.retry_after = retry_after


class UpstreamError(NotifyError):
    """Upstream rejected a request for a reason that retrying will not fix (a 500 ServiceError, a 400
    on our own payload). Not the caller's fault, not transient: kept for an operator."""

    code = "upstream_error"
    http_status = 502


class WritesBlockedError(RecipientError):
    """403 ``MessageWritesBlocked``: Teams gives this one body both when the user blocked the bot and
    when the user uninstalled the app (Teams docs, "Handle bot errors"). Reported as
    ``recipient_blocked_bot`` unless the pipeline, having checked the installation, finds the app gone:
    it then installs and sends once."""

    code = "recipient_blocked_bot"
    http_status = 403


class WrongRegionError(UpstreamError):
    """The connector says the service URL points at the wrong region (400 BadArgument "Incoming
    request was redirected to the wrong geo", or "User is from different region"): a regional URL
    gone stale after the tenant moved. The pipeline retries once on the global ServiceUrl."""

    code = "service_url_wrong_region"
    http_status = 502


class StaleConversationError(NotifyError):
    """Internal signal: the cached conversation is gone (404 ConversationNotFound, bot not in roster).

    The pipeline catches it, evicts the cache entry and resolves again once; it never reaches a caller
    unless the fresh resolution is rejected the same way.
    """

    code = "conversation_not_found"
    http_status = 502


class RequestInProgressError(TransientError):
    """Another attempt with the same idempotency key is still sending: ask again shortly (HTTP 409),
    or let Service Bus redeliver."""

    code = "request_in_progress"
    http_status = 409


class AuthenticationError(InvalidRequestError):
    """An inbound request without a valid credential (the bot's messaging endpoint: a Bot Framework
    channel token). The message says what is wrong in general terms, never echoing the credential."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(InvalidRequestError):
    """An authenticated caller without the right to do this (the API's app role not assigned)."""

    code = "missing_role"
    http_status = 403
