"""The operator's command line against the fake tenant and Azurite: doctor tells each misconfiguration
apart with the line that names its fix, send/cache work end to end, nothing secret is printed."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.cli import main
from tests.azurite import ACCOUNT, KEY, ROOT
from tests.conftest import CLIENT_SECRET, World

INSTALL = "TeamsAppInstallation.ReadWriteSelfForUser.All"
CATALOG = "AppCatalog.Read.All"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_settings(world: World, path: Path, **changes: str | None) -> Path:
    values: dict[str, str] = dict(world.env, SSL_CERT_FILE=world.server.ca_pem_path)
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
    return path


class Cli:
    """Runs ``main(argv)`` in-process with a settings file, capturing what it prints."""

    def __init__(self, settings: Path) -> None:
        self.settings = settings
        self.output = ""

    def __call__(self, *argv: str) -> int:
        stream = io.StringIO()
        code = main(["--settings", str(self.settings), *argv], stdout=stream)
        self.output = stream.getvalue()
        assert CLIENT_SECRET not in self.output and "eyJ" not in self.output, "a secret or token was printed"
        return code

    def json(self, *argv: str) -> tuple[int, Any]:
        code = self("--json", *argv)
        return code, json.loads(self.output)

    def line(self, title: str) -> str:
        [found] = [line for line in self.output.splitlines() if line.startswith("[") and title in line[:30]]
        return found


@pytest.fixture
def cli(world: World, tmp_path: Path) -> Cli:
    return Cli(write_settings(world, tmp_path / "local.settings.json"))


# --- doctor ---------------------------------------------------------------------------------------


def test_doctor_passes_on_a_good_setup_and_resolves_a_recipient_without_sending(world: World, cli: Cli) -> None:
    assert cli("doctor", "--recipient", "alice@contoso.com") == 0
    lines = [line for line in cli.output.splitlines() if line.startswith("[")]
    assert [line[:6] for line in lines] == ["[OK  ]"] * 7
    assert "alice@contoso.com resolved" in cli.line("recipient") and "nothing sent" in cli.line("recipient")
    assert world.tenant.is_installed(world.user("alice"))
    assert world.tenant.messages_for(world.user("alice")) == []


def _missing_setting(world: World, tmp_path: Path) -> Path:
    return write_settings(world, tmp_path / "s.json", TeamsAppId=None)


def _bad_secret(world: World, tmp_path: Path) -> Path:
    return write_settings(world, tmp_path / "s.json", MicrosoftAppPassword="not-the-secret")


def _wrong_tenant(world: World, tmp_path: Path) -> Path:
    return write_settings(world, tmp_path / "s.json", MicrosoftAppTenantId="0d9c3f0e-1111-4222-8333-944455556666")


def _disabled_app(world: World, tmp_path: Path) -> Path:
    world.tenant.app_disabled = True
    return write_settings(world, tmp_path / "s.json")


def _no_install_permission(world: World, tmp_path: Path) -> Path:
    world.tenant.consented_roles.discard(INSTALL)
    return write_settings(world, tmp_path / "s.json")


def _no_catalog_permission(world: World, tmp_path: Path) -> Path:
    world.tenant.consented_roles.discard(CATALOG)
    return write_settings(world, tmp_path / "s.json")


def _not_in_catalog(world: World, tmp_path: Path) -> Path:
    world.tenant.remove_from_catalog()
    return write_settings(world, tmp_path / "s.json")


def _store_down(world: World, tmp_path: Path) -> Path:
    port = closed_port()
    down = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    return write_settings(world, tmp_path / "s.json", AzureWebJobsStorage=down)


@pytest.mark.parametrize(
    ("misconfigure", "failing", "code", "fix", "statuses"),
    [
        (
            _missing_setting,
            "settings",
            "configuration_error",
            "TeamsAppId is missing",
            {"settings": "fail", "graph_token": "skip", "bot_token": "skip", "store": "skip"},
        ),
        (
            _bad_secret,
            "Graph token",
            "invalid_client_credential",
            "fix MicrosoftAppPassword",
            {"graph_token": "fail", "permissions": "skip", "catalog": "skip", "bot_token": "fail", "store": "ok"},
        ),
        (
            _wrong_tenant,
            "Graph token",
            "tenant_not_found",
            "check MicrosoftAppTenantId",
            {"graph_token": "fail", "bot_token": "fail", "store": "ok"},
        ),
        (
            _disabled_app,
            "Graph token",
            "app_disabled",
            "an administrator must enable it",
            {"graph_token": "fail", "bot_token": "fail"},
        ),
        (
            _no_install_permission,
            "Graph permissions",
            "missing_permission",
            f"missing application permission {INSTALL}:",
            {"graph_token": "ok", "permissions": "fail", "catalog": "ok", "bot_token": "ok"},
        ),
        (
            _no_catalog_permission,
            "Graph permissions",
            "missing_permission",
            f"missing application permission {CATALOG}:",
            {"permissions": "fail", "catalog": "skip", "bot_token": "ok"},
        ),
        (
            _not_in_catalog,
            "Teams app in catalog",
            "app_not_in_catalog",
            "upload the app package",
            {"permissions": "ok", "catalog": "fail", "bot_token": "ok", "store": "ok"},
        ),
        (
            _store_down,
            "Table Storage",
            "storage_unavailable",
            "Check AzureWebJobsStorage",
            {"graph_token": "ok", "catalog": "ok", "store": "fail"},
        ),
    ],
    ids=[
        "missing-setting",
        "bad-secret",
        "wrong-tenant",
        "disabled-app",
        "no-install-permission",
        "no-catalog-permission",
        "not-in-catalog",
        "store-down",
    ],
)
def test_doctor_names_each_misconfiguration_and_fails(
    world: World,
    tmp_path: Path,
    misconfigure: Callable[[World, Path], Path],
    failing: str,
    code: str,
    fix: str,
    statuses: dict[str, str],
) -> None:
    cli = Cli(misconfigure(world, tmp_path))

    assert cli("doctor", "--recipient", "alice@contoso.com") == 1
    line = cli.line(failing)
    assert line.startswith("[FAIL]") and f"{code}: " in line and fix in line
    assert "[SKIP] recipient" in cli.output  # a recipient is not tried on a broken setup

    assert cli.json("doctor")[0] == 1
    checks = {c["check"]: c for c in json.loads(cli.output)["checks"]}
    assert {name: checks[name]["status"] for name in statuses} == statuses
    assert not world.tenant.messages_for(world.user("alice"))


def test_doctor_prints_the_admin_consent_url_for_a_missing_permission(world: World, cli: Cli) -> None:
    world.tenant.consented_roles.clear()
    assert cli("doctor") == 1
    url = f"{world.server.base_url}/{world.tenant.tenant_id}/adminconsent?client_id={world.tenant.app_id}"
    assert f"{INSTALL} and {CATALOG}" in cli.line("Graph permissions") and url in cli.line("Graph permissions")


def test_doctor_accepts_a_broader_permission_than_the_minimum(world: World, cli: Cli) -> None:
    world.tenant.consented_roles.discard(INSTALL)
    world.tenant.consented_roles.add("TeamsAppInstallation.ReadWriteForUser.All")
    assert cli("doctor") == 0


def test_doctor_names_an_unknown_recipient(cli: Cli) -> None:
    assert cli("doctor", "--recipient", "nobody@contoso.com") == 1
    assert cli.line("recipient").startswith("[FAIL]") and "recipient_not_found" in cli.line("recipient")


# --- send and cache -------------------------------------------------------------------------------


def test_send_text_prints_the_activity_id_of_the_delivered_message(world: World, cli: Cli) -> None:
    assert cli("send", "--to", "alice@contoso.com", "--text", "Build **42** passed") == 0
    [delivered] = world.tenant.messages_for(world.user("alice"))
    assert f"activity id:   {delivered['id']}" in cli.output
    assert "resolved and cached just now" in cli.output
    assert delivered["activity"]["text"] == "Build **42** passed"


def test_send_card_with_summary_to_an_object_id_as_json(world: World, cli: Cli, tmp_path: Path) -> None:
    card = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approve?"}]}
    (tmp_path / "card.json").write_text(json.dumps(card), encoding="utf-8")
    bob = world.user("bob")

    code, body = cli.json("send", "--to", bob.oid, "--card", str(tmp_path / "card.json"), "--summary", "Approval")

    assert code == 0 and body["status"] == "sent" and body["resolved"] is True
    [delivered] = world.tenant.messages_for(bob)
    assert body["activityId"] == delivered["id"]
    assert delivered["activity"]["attachments"][0]["content"] == card
    assert delivered["activity"]["summary"] == "Approval"


def test_send_failure_prints_the_error_code_and_exits_1(cli: Cli) -> None:
    code, body = cli.json("send", "--to", "nobody@contoso.com", "--text", "hi")
    assert code == 1 and body["error"]["code"] == "recipient_not_found"


@pytest.mark.parametrize(
    "argv",
    [["send", "--to", "alice@contoso.com"], ["send", "--to", "alice@contoso.com", "--card", "/no/such/card.json"]],
    ids=["no-text-or-card", "missing-card-file"],
)
def test_send_usage_errors_exit_2_and_send_nothing(world: World, cli: Cli, argv: list[str]) -> None:
    assert cli(*argv) == 2
    assert world.tenant.calls() == 0


def test_cache_show_and_evict_one_recipient(world: World, cli: Cli) -> None:
    alice = world.user("alice")
    assert cli("cache", "show", "alice@contoso.com") == 1
    assert "Nothing cached for alice@contoso.com" in cli.output

    assert cli("send", "--to", "alice@contoso.com", "--text", "one") == 0
    code, shown = cli.json("cache", "show", alice.oid)  # any alias finds the entry
    # A cold send memoises the installation's chat id (the 1:1 conversation id); the ChannelAccount
    # and the UPN come with Teams' install activity on /api/messages.
    chat_id = world.tenant.chat_id_for(alice)
    assert code == 0 and shown["conversationId"] == chat_id and shown["objectId"] == alice.oid
    assert shown["accountId"] is None
    assert cli("cache", "show", "ALICE@contoso.com") == 0 and chat_id in cli.output

    assert cli("cache", "evict", "alice@contoso.com") == 0 and "Evicted alice@contoso.com" in cli.output
    assert cli("cache", "show", alice.oid) == 1  # every alias is gone

    code, sent = cli.json("send", "--to", "alice@contoso.com", "--text", "two")
    assert code == 0 and sent["resolved"] is True


def test_the_module_runs_as_a_command(world: World, cli: Cli) -> None:
    env = {k: v for k, v in os.environ.items() if k not in world.env and k != "SSL_CERT_FILE"}
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "--settings", str(cli.settings), "--json", "send"]
        + ["--to", "bob@contoso.com", "--text", "from a shell"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    [delivered] = world.tenant.messages_for(world.user("bob"))
    assert json.loads(run.stdout)["activityId"] == delivered["id"]
    assert CLIENT_SECRET not in run.stdout + run.stderr


def test_without_a_settings_file_the_environment_is_used(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./local.settings.json here
    stream = io.StringIO()
    assert main(["doctor"], stdout=stream) == 0
    assert "Checking the settings from the environment" in stream.getvalue()


def test_an_unreadable_settings_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert main(["--settings", str(tmp_path / "broken.json"), "doctor"], stdout=io.StringIO()) == 2
    assert main(["--settings", str(tmp_path / "absent.json"), "doctor"], stdout=io.StringIO()) == 2


# --- failures ---------------------------------------------------------------------------------------


def keep_failures(*messages: tuple[str, dict[str, Any]]) -> None:
    """Deliver Service Bus messages to the queue trigger (which keeps the permanent failures)."""
    import asyncio
    import datetime

    from azure.functions.servicebus import ServiceBusMessage

    from shared.bootstrap import reset_services
    from tests.functions import OutputMessages, user_function

    async def deliver() -> None:
        try:
            for message_id, body in messages:
                await user_function("notify_queue")(
                    ServiceBusMessage(
                        body=json.dumps(body).encode(),
                        message_id=message_id,
                        delivery_count=1,
                        enqueued_time_utc=datetime.datetime(2026, 1, 5, 9, 30, tzinfo=datetime.UTC),
                        content_type="application/json",
                        application_properties={},
                        user_properties={},
                    ),
                    OutputMessages(),
                )
        finally:
            await reset_services()

    asyncio.run(deliver())


def test_failures_list_show_replay_all_after_the_fix(world: World, cli: Cli) -> None:
    alice = world.user("alice")
    world.tenant.install_app(alice)
    world.tenant.block_bot(alice)
    assert cli("failures", "list") == 0 and "No kept failures." in cli.output
    keep_failures(
        ("m-carol", {"recipient": "carol@contoso.com", "text": "Welcome aboard"}),
        ("m-alice", {"recipient": "alice@contoso.com", "text": "Invoice 1001 approved"}),
    )

    assert cli("failures", "list") == 0
    assert "2 kept failure(s)" in cli.output
    rows = {line.split()[0]: line.split() for line in cli.output.splitlines()[2:]}
    assert rows["m-carol"][1:3] == ["recipient_not_found", "carol@contoso.com"]
    assert rows["m-alice"][1:3] == ["recipient_blocked_bot", "alice@contoso.com"]

    assert cli("failures", "show", "m-alice") == 0
    assert "reason          recipient_blocked_bot: The recipient blocked the bot in Teams." in cli.output
    assert '"text": "Invoice 1001 approved"' in cli.output and "delivery count  1" in cli.output
    code, shown = cli.json("failures", "show", "m-carol")
    assert code == 0 and shown["body"] == {"recipient": "carol@contoso.com", "text": "Welcome aboard"}

    # Replaying before the cause is fixed fails again and keeps the record, with the replay counted.
    assert cli("failures", "replay", "m-carol") == 1
    assert "m-carol: still failing: recipient_not_found" in cli.output
    assert cli.json("failures", "show", "m-carol")[1]["replays"] == 1

    world.tenant.add_user("carol@contoso.com")
    world.tenant.unblock_bot(alice)
    assert cli("failures", "replay", "--all") == 0
    assert "[1/2] m-carol: sent (activity " in cli.output and "[2/2] m-alice: sent (activity " in cli.output
    assert "2 of 2 replayed." in cli.output

    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["Invoice 1001 approved"]
    assert [m["activity"]["text"] for m in world.tenant.messages_for("carol@contoso.com")] == ["Welcome aboard"]
    assert cli.json("failures", "list") == (0, {"failures": []})
    code, again = cli.json("failures", "replay", "m-alice")
    assert code == 1 and again["error"]["code"] == "failure_not_found"


def test_failures_replay_one_as_json_sends_once(world: World, cli: Cli) -> None:
    keep_failures(("m-dave", {"recipient": "dave@contoso.com", "text": "Your badge is ready"}))
    world.tenant.add_user("dave@contoso.com")

    code, body = cli.json("failures", "replay", "m-dave")

    assert code == 0 and body["failed"] == 0
    [result] = body["replayed"]
    [delivered] = world.tenant.messages_for("dave@contoso.com")
    assert result == {
        "messageId": "m-dave",
        "outcome": "sent",
        "activityId": delivered["id"],
        "conversationId": delivered["conversation_id"],
    }


def test_failures_drop_forgets_without_sending(world: World, cli: Cli) -> None:
    keep_failures(("m-erin", {"recipient": "erin@contoso.com", "text": "hi"}))
    world.tenant.add_user("erin@contoso.com")

    assert cli("failures", "drop", "m-erin") == 0 and "Dropped m-erin (not sent)." in cli.output
    assert cli("failures", "show", "m-erin") == 1 and "failure_not_found" in cli.output
    assert cli("failures", "drop", "m-erin") == 1
    assert world.tenant.messages_for("erin@contoso.com") == []


@pytest.mark.parametrize("argv", [["failures", "replay"], ["failures", "replay", "m-1", "--all"]])
def test_failures_replay_needs_one_id_or_all(cli: Cli, argv: list[str]) -> None:
    assert cli(*argv) == 2
