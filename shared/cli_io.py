"""What every command of the operator's command line shares: where the settings come from, the
output (human lines or one JSON document), the usage error, and the services built for one command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.errors import NotifyError

DEFAULT_SETTINGS_FILE = "local.settings.json"
# Process-level variables a settings file may carry that are not app settings: applied to the
# environment while the command runs, as the function host applies every value.
_PROCESS_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class UsageError(Exception):
    """Wrong arguments or an unreadable input file (exit code 2)."""


@dataclass(frozen=True)
class SettingsSource:
    values: Mapping[str, str]
    description: str

    @classmethod
    def locate(cls, path: str | None) -> SettingsSource:
        if path is None and Path(DEFAULT_SETTINGS_FILE).is_file():
            path = DEFAULT_SETTINGS_FILE
        if path is None:
            return cls(dict(os.environ), "the environment")
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"cannot read settings file {path}: {err.strerror}") from err
        except ValueError as err:
            raise UsageError(f"settings file {path} is not valid JSON: {err}") from err
        values = document.get("Values") if isinstance(document, dict) else None
        if not isinstance(values, dict):
            raise UsageError(f'settings file {path} has no "Values" object')
        as_text = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items() if v is not None}
        return cls(as_text, path)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Apply the process-level variables of the settings file for the duration of a command."""
        saved = {name: os.environ.get(name) for name in _PROCESS_VARIABLES}
        for name in _PROCESS_VARIABLES:
            value = self.values.get(name)
            if value:
                os.environ[name] = value
        try:
            yield
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old


class Output:
    """Human lines or one JSON document per command."""

    def __init__(self, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self._stream = stream

    def line(self, text: str = "") -> None:
        if not self.as_json:
            self._stream.write(text + "\n")
            self._stream.flush()

    def document(self, payload: Any) -> None:
        if self.as_json:
            self._stream.write(json.dumps(payload, indent=2, default=str) + "\n")
            self._stream.flush()

    def error(self, err: NotifyError) -> int:
        if self.as_json:
            self.document(err.to_body())
        else:
            target = f" [{err.target}]" if err.target else ""
            self.line(f"error: {err.code}{target}: {err.message}")
        return 1


Handler = Callable[[argparse.Namespace, SettingsSource, Output], Coroutine[Any, Any, int]]


@contextlib.asynccontextmanager
async def services_for(source: SettingsSource) -> Any:
    from shared.bootstrap import build_services
    from shared.settings import load_settings

    services = build_services(load_settings(source.values))
    try:
        yield services
    finally:
        await services.aclose()


FIELD_LABELS = {
    "tenantId": "tenant",
    "accountId": "Teams account",
    "conversationId": "conversation",
    "serviceUrl": "service URL",
    "objectId": "object id",
    "upn": "UPN",
    "updatedAt": "cached at",
}


def print_fields(out: Output, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        out.line(f"  {FIELD_LABELS.get(name, name):<14} {value if value is not None else '-'}")
