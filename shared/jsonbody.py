"""Reading an untrusted body as strict JSON: its media type, its size and nesting limits, and the parse.

Whatever ``loads_strict`` returns can be re-serialised, stored and sent as JSON without an error. It
reads every body from outside: the HTTP API's requests (through ``json_object``), Service Bus messages,
the Bot Connector's activities and signed notification ids.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidRequestError

# Teams is the judge of a message's size: its limit is about 100 KB measured as UTF-16 (text, card,
# mentions; base64 images excluded), and over it the connector answers 413 MessageSizeTooBig, which
# becomes message_too_large. Refused here, before any upstream call, is only what Teams would
# certainly refuse: a message whose content alone (UTF-8 JSON) is over the 262,144 bytes the
# connector accepts as a request body (Teams docs, "Format your bot messages": message size).
MAX_BODY_BYTES = 262_144
# A raw body may spell every character as a 6-byte \uXXXX escape: parsed up to that much.
MAX_RAW_BODY_BYTES = 6 * MAX_BODY_BYTES
# Fan-out (docs/API.md, "Sending to many recipients"): up to MAX_RECIPIENTS per request.
MAX_RECIPIENTS = 10_000
# A request naming 10,000 recipients is larger than one message: the raw body may be this large,
# the message itself (text, card, summary) still at most MAX_BODY_BYTES.
MAX_REQUEST_BYTES = MAX_RAW_BODY_BYTES + MAX_RECIPIENTS * 330
# JSON nested deeper than this is refused (413 json_too_deep) before anything walks it recursively
# (json, msgspec, Table Storage and Teams all have limits of their own, some of them crashes). A
# real Adaptive Card nests well under half of it (one card level is an object and an array).
MAX_JSON_DEPTH = 64


def json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object an HTTP or queued request carries, or ``InvalidRequestError`` (415 with another
    media type, 413 over the size limits, 400 when empty or not an object)."""
    if content_type is not None and content_type.strip():
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise InvalidRequestError(
                "The body must be JSON: send Content-Type: application/json.",
                code="unsupported_media_type",
                target="Content-Type",
                http_status=415,
            )
    if len(body) > MAX_REQUEST_BYTES or (len(body) > MAX_RAW_BODY_BYTES and b'"recipients"' not in body):
        raise too_large(len(body))
    if not body.strip():
        raise InvalidRequestError(
            "The request body is empty: send a JSON object.", code="invalid_request", target="body"
        )
    payload = loads_strict(body)
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_request", target="body")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def loads_strict(body: bytes | str, target: str = "body") -> Any:
    """Parse untrusted JSON strictly, or raise ``InvalidRequestError``: UTF-8 only, no NaN/Infinity, no
    number beyond a float or Python's 4,300-digit integer limit, no lone surrogate in a string
    (400 ``invalid_json``), nesting at most ``MAX_JSON_DEPTH`` (413 ``json_too_deep``). Whatever it
    returns can be re-serialised, stored and sent as JSON without an error."""
    if _nesting_exceeds(body, MAX_JSON_DEPTH):
        raise InvalidRequestError(
            f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.",
            code="json_too_deep",
            target=target,
            http_status=413,
        )
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        position = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InvalidRequestError(
            f"The request {target} is not valid UTF-8 JSON{position}.", code="invalid_json", target=target
        ) from None
    except (ValueError, RecursionError) as err:
        # int() past its digit limit, NaN/Infinity, a float out of range.
        reason = str(err) if "JSON" in str(err) or "too large" in str(err) else "a number is too large"
        raise InvalidRequestError(
            f"The request {target} is not valid JSON: {reason}.", code="invalid_json", target=target
        ) from None
    if _has_lone_surrogate(payload):
        raise InvalidRequestError(
            f"The request {target} is not valid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff).",
            code="invalid_json",
            target=target,
        )
    return payload


def _nesting_exceeds(body: bytes | str, limit: int) -> bool:
    """True when brackets nest deeper than ``limit`` outside strings (a cheap scan before parsing,
    which would recurse once per level)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def too_large(size: int) -> InvalidRequestError:
    """413 ``message_too_large``: over what Teams accepts (MAX_BODY_BYTES)."""
    return InvalidRequestError(
        f"The message is {size} bytes; Teams refuses any message over {MAX_BODY_BYTES} bytes (its limit is "
        "about 100 KB of text and card measured as UTF-16).",
        code="message_too_large",
        target="body",
        http_status=413,
    )
