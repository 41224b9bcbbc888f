"""Build the Teams app package: dist/appPackage.zip = manifest.json + color.png + outline.png.

The ids are filled into appPackage/manifest.json's ``${{TEAMS_APP_ID}}`` and ``${{MICROSOFT_APP_ID}}``
placeholders. Each id is taken from, in order:

1. the command line (``--teams-app-id``, ``--app-id``);
2. the environment (``TEAMS_APP_ID``, ``MICROSOFT_APP_ID``: the names of the azd outputs, so the
   azd postprovision hook and ``azd env get-values`` exports work as is);
3. ``local.settings.json`` (``Values.TeamsAppId``, ``Values.MicrosoftAppId``).

The publisher's pages fill ``${{WEBSITE_URL}}``, ``${{PRIVACY_URL}}`` and ``${{TERMS_OF_USE_URL}}``
(the manifest's developer.websiteUrl, privacyUrl, termsOfUseUrl: Teams shows them to every user who
opens the app's details), from ``--website-url``/``--privacy-url``/``--terms-url`` or the environment
(``WEBSITE_URL``, ``PRIVACY_URL``, ``TERMS_OF_USE_URL``; ``azd env set PRIVACY_URL ...`` reaches the
postprovision hook). They must be https URLs of your organisation: placeholders (example.com and the
other reserved example/test names, localhost) are refused, so no package ships with them.

Usage: ``python scripts/build_app_package.py [--teams-app-id ID] [--app-id ID] [--website-url URL]
[--privacy-url URL] [--terms-url URL] [--out dist/appPackage.zip]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGE_DIR = ROOT / "appPackage"
ICONS = ("color.png", "outline.png")
DEFAULT_OUT = ROOT / "dist" / "appPackage.zip"
# Fixed timestamp so the same inputs give a byte-identical zip.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """A problem the user has to fix; the message says how."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


def _problems_error(problems: Sequence[str]) -> PackageError:
    return PackageError("Cannot build the app package:\n  - " + "\n  - ".join(problems), problems)


# (placeholder, command-line flag, environment variable, local.settings.json key, meaning)
IDS = (
    ("TEAMS_APP_ID", "--teams-app-id", "TEAMS_APP_ID", "TeamsAppId", "the Teams app manifest id"),
    ("MICROSOFT_APP_ID", "--app-id", "MICROSOFT_APP_ID", "MicrosoftAppId", "the bot's Entra app (client) id"),
)


# (placeholder, command-line flag, environment variable, meaning)
URLS = (
    ("WEBSITE_URL", "--website-url", "WEBSITE_URL", "the publisher's website URL (developer.websiteUrl)"),
    ("PRIVACY_URL", "--privacy-url", "PRIVACY_URL", "the privacy statement URL (developer.privacyUrl)"),
    ("TERMS_OF_USE_URL", "--terms-url", "TERMS_OF_USE_URL", "the terms of use URL (developer.termsOfUseUrl)"),
)
# Names reserved for documentation and testing (RFC 2606, RFC 6761): never a real publisher's page.
PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net", "localhost")
PLACEHOLDER_TLDS = ("example", "test", "invalid", "localhost")


def _url_problem(value: str) -> str | None:
    """Why ``value`` cannot be a published page of the app's publisher, or None if it can."""
    try:
        parts = urllib.parse.urlsplit(value)
        host = (parts.hostname or "").rstrip(".").lower()
    except ValueError:
        return "is not a URL"
    if parts.scheme != "https" or not host:
        return "must be an https:// URL"
    if any(host == d or host.endswith("." + d) for d in PLACEHOLDER_DOMAINS) or host.rsplit(".", 1)[-1] in (
        PLACEHOLDER_TLDS
    ):
        return f"is a placeholder ({host} is reserved for examples); use your organisation's real page"
    if len(value) > 2048:
        return "is longer than 2048 characters"
    return None


def resolve_urls(flags: Mapping[str, str | None], env: Mapping[str, str]) -> dict[str, str]:
    """Pick each publisher URL from flags, then environment; refuse missing ones and placeholders."""
    resolved: dict[str, str] = {}
    problems: list[str] = []
    for placeholder, flag, env_name, meaning in URLS:
        candidates = ((flags.get(placeholder), flag), (env.get(env_name), f"environment variable {env_name}"))
        value, source = next(((v.strip(), s) for v, s in candidates if v and v.strip()), (None, None))
        if value is None:
            problems.append(
                f"{meaning} is missing: pass {flag} or set {env_name} (with azd: azd env set {env_name} URL)"
            )
            continue
        problem = _url_problem(value)
        if problem is not None:
            problems.append(f"{meaning} from {source} {problem}: {value!r}")
            continue
        resolved[placeholder] = value
    if problems:
        raise _problems_error(problems)
    return resolved


def _read_local_settings(path: Path) -> Mapping[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path} is not valid JSON: {exc}") from exc
    values = data.get("Values", {}) if isinstance(data, dict) else {}
    return {k: v for k, v in values.items() if isinstance(v, str)}


def resolve_ids(
    flags: Mapping[str, str | None],
    env: Mapping[str, str],
    local_settings: Mapping[str, str],
) -> dict[str, str]:
    """Pick each id from flags, then environment, then local.settings.json; validate it is a GUID."""
    resolved: dict[str, str] = {}
    problems: list[str] = []
    for placeholder, flag, env_name, setting, meaning in IDS:
        candidates = (
            (flags.get(placeholder), f"{flag}"),
            (env.get(env_name), f"environment variable {env_name}"),
            (local_settings.get(setting), f"local.settings.json Values.{setting}"),
        )
        value, source = next(((v.strip(), s) for v, s in candidates if v and v.strip()), (None, None))
        if value is None:
            problems.append(
                f"{meaning} is missing: pass {flag}, set {env_name} (azd output; "
                f"run `azd env get-values`), or set Values.{setting} in local.settings.json"
            )
            continue
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            problems.append(f"{meaning} from {source} is not a GUID: {value!r}")
            continue
        if parsed.int == 0:
            problems.append(f"{meaning} from {source} is the all-zero placeholder GUID; use the real id")
            continue
        resolved[placeholder] = str(parsed)
    if problems:
        raise _problems_error(problems)
    return resolved


def render_manifest(template: str, ids: Mapping[str, str]) -> str:
    """Fill the ``${{NAME}}`` placeholders (ids and URLs); values go in JSON-escaped."""
    text = template
    for placeholder, value in ids.items():
        text = text.replace("${{" + placeholder + "}}", json.dumps(value)[1:-1])
    if "${{" in text:
        start = text.index("${{")
        raise PackageError(f"manifest.json has an unfilled placeholder: {text[start : start + 40]!r}")
    json.loads(text)  # still valid JSON
    return text


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def build(ids: Mapping[str, str], out: Path, source_dir: Path = APP_PACKAGE_DIR) -> Path:
    template = (source_dir / "manifest.json").read_text(encoding="utf-8")
    manifest = render_manifest(template, ids)
    for icon in ICONS:
        if not (source_dir / icon).is_file():
            raise PackageError(f"{source_dir / icon} is missing; run python scripts/make_icons.py")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(_entry("manifest.json"), manifest)
        for icon in ICONS:
            zf.writestr(_entry(icon), (source_dir / icon).read_bytes())
    return out


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Teams app package (dist/appPackage.zip).")
    parser.add_argument("--teams-app-id", help="Teams app manifest id (default: $TEAMS_APP_ID)")
    parser.add_argument("--app-id", help="bot's Entra app (client) id (default: $MICROSOFT_APP_ID)")
    parser.add_argument("--website-url", help="publisher's website, https (default: $WEBSITE_URL)")
    parser.add_argument("--privacy-url", help="privacy statement, https (default: $PRIVACY_URL)")
    parser.add_argument("--terms-url", help="terms of use, https (default: $TERMS_OF_USE_URL)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output zip (default: dist/appPackage.zip)")
    parser.add_argument(
        "--local-settings",
        type=Path,
        default=ROOT / "local.settings.json",
        help="fallback source of TeamsAppId/MicrosoftAppId (default: local.settings.json)",
    )
    args = parser.parse_args(argv)
    environ = os.environ if env is None else env
    try:
        problems: list[str] = []
        ids: dict[str, str] = {}
        urls: dict[str, str] = {}
        try:
            ids = resolve_ids(
                {"TEAMS_APP_ID": args.teams_app_id, "MICROSOFT_APP_ID": args.app_id},
                environ,
                _read_local_settings(args.local_settings),
            )
        except PackageError as exc:
            problems.extend(exc.problems)
        try:
            urls = resolve_urls(
                {"WEBSITE_URL": args.website_url, "PRIVACY_URL": args.privacy_url, "TERMS_OF_USE_URL": args.terms_url},
                environ,
            )
        except PackageError as exc:
            problems.extend(exc.problems)
        if problems:
            raise _problems_error(problems)
        out = build({**ids, **urls}, args.out)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (Teams app id {ids['TEAMS_APP_ID']}, bot app id {ids['MICROSOFT_APP_ID']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
