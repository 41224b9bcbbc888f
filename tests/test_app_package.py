"""The Teams app package: manifest fields, icons, and scripts/build_app_package.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGE = ROOT / "appPackage"
SCRIPT = ROOT / "scripts" / "build_app_package.py"

_spec = importlib.util.spec_from_file_location("build_app_package", SCRIPT)
assert _spec is not None and _spec.loader is not None
build_app_package = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_app_package)

TEAMS_ID = str(uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301"))
APP_ID = str(uuid.UUID("6ba7b810-9dad-41d1-80b4-00c04fd430c8"))
# The publisher's pages: real-looking https URLs (not a reserved example name).
URL_ENV = {
    "WEBSITE_URL": "https://contoso-notify.azurewebsites.net/",
    "PRIVACY_URL": "https://www.contoso.com/legal/privacy?app=notify&v=1",
    "TERMS_OF_USE_URL": "https://www.contoso.com/legal/terms",
}


def _manifest() -> dict:
    return json.loads((APP_PACKAGE / "manifest.json").read_text(encoding="utf-8"))


def test_manifest_required_fields() -> None:
    m = _manifest()
    for key in ("manifestVersion", "id", "version", "developer", "name", "description", "icons", "accentColor", "bots"):
        assert key in m, key
    version = re.search(r"/teams/v(\d+\.\d+)/MicrosoftTeams\.schema\.json$", m["$schema"])
    assert version and version.group(1) == m["manifestVersion"]
    assert tuple(int(x) for x in m["manifestVersion"].split(".")) >= (1, 19)
    assert re.fullmatch(r"\d+\.\d+\.\d+", m["version"])
    assert m["id"] == "${{TEAMS_APP_ID}}"
    assert m["developer"]["name"]
    # The publisher's pages are filled in by the build (never shipped as example.com placeholders).
    assert m["developer"]["websiteUrl"] == "${{WEBSITE_URL}}"
    assert m["developer"]["privacyUrl"] == "${{PRIVACY_URL}}"
    assert m["developer"]["termsOfUseUrl"] == "${{TERMS_OF_USE_URL}}"
    assert "example." not in (APP_PACKAGE / "manifest.json").read_text(encoding="utf-8")
    assert 0 < len(m["name"]["short"]) <= 30 and len(m["name"]["full"]) <= 100
    assert 0 < len(m["description"]["short"]) <= 80 and len(m["description"]["full"]) <= 4000
    assert m["icons"] == {"color": "color.png", "outline": "outline.png"}
    assert re.fullmatch(r"#[0-9A-Fa-f]{6}", m["accentColor"])


def test_manifest_bot() -> None:
    m = _manifest()
    assert len(m["bots"]) == 1
    bot = m["bots"][0]
    assert bot["botId"] == "${{MICROSOFT_APP_ID}}"
    assert bot["scopes"] == ["personal"]
    assert bot["supportsFiles"] is False
    assert bot["isNotificationOnly"] is False
    assert m["webApplicationInfo"] == {
        "id": "${{MICROSOFT_APP_ID}}",
        "resource": "api://botid-${{MICROSOFT_APP_ID}}",
    }
    assert isinstance(m["validDomains"], list)


def test_icons() -> None:
    with Image.open(APP_PACKAGE / "color.png") as color:
        assert color.format == "PNG" and color.size == (192, 192)
    with Image.open(APP_PACKAGE / "outline.png") as outline:
        assert outline.format == "PNG" and outline.size == (32, 32)
        rgba = outline.convert("RGBA")
        alphas = [a for *_, a in rgba.get_flattened_data()]
        assert min(alphas) == 0, "outline must have a transparent background"
        assert max(alphas) == 255, "outline must have an opaque glyph"
        # Visible pixels are white (the glyph); everything else is transparent.
        assert all((r, g, b) == (255, 255, 255) for r, g, b, a in rgba.get_flattened_data() if a > 0)


def _names_and_manifest(path: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist()), zf.read("manifest.json").decode("utf-8")


def test_build_from_flags(tmp_path: Path) -> None:
    out = tmp_path / "appPackage.zip"
    rc = build_app_package.main(
        ["--teams-app-id", TEAMS_ID, "--app-id", APP_ID, "--out", str(out), "--local-settings", str(tmp_path / "none")],
        env=URL_ENV,
    )
    assert rc == 0
    names, text = _names_and_manifest(out)
    assert names == ["color.png", "manifest.json", "outline.png"]
    assert "${{" not in text
    m = json.loads(text)
    assert m["id"] == TEAMS_ID
    assert m["bots"][0]["botId"] == APP_ID
    assert m["webApplicationInfo"] == {"id": APP_ID, "resource": f"api://botid-{APP_ID}"}
    assert m["developer"]["websiteUrl"] == URL_ENV["WEBSITE_URL"]
    assert m["developer"]["privacyUrl"] == URL_ENV["PRIVACY_URL"]
    assert m["developer"]["termsOfUseUrl"] == URL_ENV["TERMS_OF_USE_URL"]
    with zipfile.ZipFile(out) as zf:
        assert zf.read("color.png") == (APP_PACKAGE / "color.png").read_bytes()
        assert zf.read("outline.png") == (APP_PACKAGE / "outline.png").read_bytes()


def test_build_from_environment_and_flag_precedence(tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    other = str(uuid.uuid4())
    env = {"TEAMS_APP_ID": TEAMS_ID, "MICROSOFT_APP_ID": other, **URL_ENV}
    rc = build_app_package.main(
        ["--app-id", APP_ID, "--out", str(out), "--local-settings", str(tmp_path / "none")], env=env
    )
    assert rc == 0
    m = json.loads(_names_and_manifest(out)[1])
    assert m["id"] == TEAMS_ID
    assert m["bots"][0]["botId"] == APP_ID  # the flag wins over the environment


def test_build_from_local_settings(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"TeamsAppId": TEAMS_ID, "MicrosoftAppId": APP_ID}}))
    out = tmp_path / "p.zip"
    assert build_app_package.main(["--out", str(out), "--local-settings", str(settings)], env=URL_ENV) == 0
    m = json.loads(_names_and_manifest(out)[1])
    assert (m["id"], m["bots"][0]["botId"]) == (TEAMS_ID, APP_ID)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "Teams app manifest id is missing"),
        (["--teams-app-id", "not-a-guid"], {"MICROSOFT_APP_ID": APP_ID}, "is not a GUID: 'not-a-guid'"),
        ([], {"TEAMS_APP_ID": TEAMS_ID}, "bot's Entra app (client) id is missing"),
        ([], {"TEAMS_APP_ID": TEAMS_ID, "MICROSOFT_APP_ID": str(uuid.UUID(int=0))}, "all-zero placeholder"),
    ],
)
def test_build_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, env, expected) -> None:
    out = tmp_path / "p.zip"
    rc = build_app_package.main(
        [*args, "--out", str(out), "--local-settings", str(tmp_path / "none")], env={**URL_ENV, **env}
    )
    assert rc == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/teams-notify/privacy", "is a placeholder (example.com"),
        ("https://www.EXAMPLE.org/privacy", "is a placeholder (www.example.org"),
        ("https://docs.example.net./p", "is a placeholder (docs.example.net"),
        ("https://privacy.contoso.example/p", "is a placeholder (privacy.contoso.example"),
        ("https://localhost:8443/privacy", "is a placeholder (localhost"),
        ("https://intranet.test/privacy", "is a placeholder (intranet.test"),
        ("http://www.contoso.com/privacy", "must be an https:// URL"),
        ("www.contoso.com/privacy", "must be an https:// URL"),
        ("https://[::1/privacy", "is not a URL"),
    ],
)
def test_build_refuses_placeholder_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str], url, expected) -> None:
    out = tmp_path / "p.zip"
    env = {"TEAMS_APP_ID": TEAMS_ID, "MICROSOFT_APP_ID": APP_ID, **URL_ENV, "PRIVACY_URL": url}
    rc = build_app_package.main(["--out", str(out), "--local-settings", str(tmp_path / "none")], env=env)
    assert rc == 2
    err = capsys.readouterr().err
    assert f"the privacy statement URL (developer.privacyUrl) from environment variable PRIVACY_URL {expected}" in err
    assert "websiteUrl" not in err and "termsOfUseUrl" not in err  # only the bad one is reported
    assert not out.exists()


def test_build_reports_every_missing_value_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.zip"
    rc = build_app_package.main(["--out", str(out), "--local-settings", str(tmp_path / "none")], env={})
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("Cannot build the app package") == 1
    for needle in (
        "Teams app manifest id is missing",
        "bot's Entra app (client) id is missing",
        "website URL (developer.websiteUrl) is missing: pass --website-url or set WEBSITE_URL",
        "privacy statement URL (developer.privacyUrl) is missing: pass --privacy-url or set PRIVACY_URL",
        "terms of use URL (developer.termsOfUseUrl) is missing: pass --terms-url or set TERMS_OF_USE_URL",
    ):
        assert needle in err, needle
    assert not out.exists()


def test_url_flags_win_over_environment(tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    env = {"TEAMS_APP_ID": TEAMS_ID, "MICROSOFT_APP_ID": APP_ID, **URL_ENV, "TERMS_OF_USE_URL": "https://example.com/t"}
    flag = "https://www.contoso.com/legal/terms-of-use"
    rc = build_app_package.main(
        ["--terms-url", flag, "--out", str(out), "--local-settings", str(tmp_path / "none")], env=env
    )
    assert rc == 0
    assert json.loads(_names_and_manifest(out)[1])["developer"]["termsOfUseUrl"] == flag


def test_cli_runs_as_a_script(tmp_path: Path) -> None:
    out = tmp_path / "dist" / "appPackage.zip"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--teams-app-id", TEAMS_ID, "--app-id", APP_ID, "--out", str(out)],
        env={**os.environ, **URL_ENV},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert _names_and_manifest(out)[0] == ["color.png", "manifest.json", "outline.png"]
