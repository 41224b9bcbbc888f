"""Build the Teams app package: dist/appPackage.zip = manifest.json + color.png + outline.png.

The ids are filled into appPackage/manifest.json's ``${{TEAMS_APP_ID}}`` and ``${{MICROSOFT_APP_ID}}``
placeholders. Each id is taken from, in order:

1. the command line (``--teams-app-id``, ``--app-id``);
2. the environment (``TEAMS_APP_ID``, ``MICROSOFT_APP_ID``: the names of the azd outputs, so the
   azd postprovision hook and ``azd env get-values`` exports work as is);
3. ``local.settings.json`` (``Values.TeamsAppId``, ``Values.MicrosoftAppId``).

Usage: ``python scripts/build_app_package.py [--teams-app-id ID] [--app-id ID] [--out dist/appPackage.zip]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


# (placeholder, command-line flag, environment variable, local.settings.json key, meaning)
IDS = (
    ("TEAMS_APP_ID", "--teams-app-id", "TEAMS_APP_ID", "TeamsAppId", "the Teams app manifest id"),
    ("MICROSOFT_APP_ID", "--app-id", "MICROSOFT_APP_ID", "MicrosoftAppId", "the bot's Entra app (client) id"),
)


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
        raise PackageError("Cannot build the app package:\n  - " + "\n  - ".join(problems))
    return resolved


def render_manifest(template: str, ids: Mapping[str, str]) -> str:
    text = template
    for placeholder, value in ids.items():
        text = text.replace("${{" + placeholder + "}}", value)
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output zip (default: dist/appPackage.zip)")
    parser.add_argument(
        "--local-settings",
        type=Path,
        default=ROOT / "local.settings.json",
        help="fallback source of TeamsAppId/MicrosoftAppId (default: local.settings.json)",
    )
    args = parser.parse_args(argv)
    try:
        ids = resolve_ids(
            {"TEAMS_APP_ID": args.teams_app_id, "MICROSOFT_APP_ID": args.app_id},
            os.environ if env is None else env,
            _read_local_settings(args.local_settings),
        )
        out = build(ids, args.out)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (Teams app id {ids['TEAMS_APP_ID']}, bot app id {ids['MICROSOFT_APP_ID']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
