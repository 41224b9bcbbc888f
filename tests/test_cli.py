"""The operator's command line against the fake tenant and Azurite: doctor tells each misconfiguration
apart with the line that names its fix, send/cache work end to end, nothing secret is printed."""

from __future__ import annotations

import io
import json
import os
import re
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


def test_send_text_prints_the_notification_and_activity_ids_of_the_delivered_message(world: World, cli: Cli) -> None:
    assert cli("send", "--to", "alice@contoso.com", "--text", "Build **42** passed") == 0
    [delivered] = world.tenant.messages_for(world.user("alice"))
    assert f"activity id:      {delivered['id']}" in cli.output
    assert re.search(r"^notification id:  \S+$", cli.output, re.M) and "idempotency key:  cli-" in cli.output
    assert delivered["activity"]["text"] == "Build **42** passed"


def test_send_card_with_summary_to_an_object_id_as_json(world: World, cli: Cli, tmp_path: Path) -> None:
    card = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approve?"}]}
    (tmp_path / "card.json").write_text(json.dumps(card), encoding="utf-8")
    bob = world.user("bob")

    code, body = cli.json("send", "--to", bob.oid, "--card", str(tmp_path / "card.json"), "--summary", "Approval")

    assert code == 0 and body["status"] == "sent" and body["notificationId"] and body["replayed"] is False
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
    # A cold send memoises the installation's chat id (the 1:1 conversation id) under the object id
    # and the UPN it was sent to; the ChannelAccount comes with Teams' install activity on /api/messages.
    chat_id = world.tenant.chat_id_for(alice)
    assert code == 0 and shown["conversationId"] == chat_id and shown["objectId"] == alice.oid
    assert shown["accountId"] is None and shown["upn"] == "alice@contoso.com"
    assert cli("cache", "show", "ALICE@contoso.com") == 0 and chat_id in cli.output

    assert cli("cache", "evict", "alice@contoso.com") == 0 and "Evicted alice@contoso.com" in cli.output
    assert cli("cache", "show", alice.oid) == 1  # every alias is gone

    resolutions = world.tenant.calls("graph.chat")
    code, sent = cli.json("send", "--to", "alice@contoso.com", "--text", "two")
    assert code == 0 and sent["status"] == "sent"
    assert world.tenant.calls("graph.chat") > resolutions  # evicted: resolved again


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
    assert (
        "reason          recipient_blocked_bot: The recipient blocked the bot in Teams (Teams answered 403 "
        "ConversationBlockedByUser: User blocked the conversation with the bot.)." in cli.output
    )
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


# --- the notification round trip, idempotency, progress and errors for people -----------------------


class Terminal(io.StringIO):
    """What the command writes to when a person runs it in a terminal."""

    def isatty(self) -> bool:
        return True


def run_on_terminal(cli: Cli, *argv: str) -> tuple[int, str]:
    stream = Terminal()
    code = main(["--settings", str(cli.settings), *argv], stdout=stream)
    return code, stream.getvalue()


def test_send_status_update_recall_round_trip(world: World, cli: Cli) -> None:
    alice = world.user("alice")
    code, sent = cli.json("send", "--to", "alice@contoso.com", "--text", "Build 42 running")
    assert code == 0
    notification = sent["notificationId"]

    code, status = cli.json("notification", "status", notification)
    assert code == 0 and status["finished"] is True and status["counts"]["sent"] == 1
    assert status["recipients"][0]["activityId"] == sent["activityId"]

    assert cli("notification", "update", notification, "--text", "Build 42 passed") == 0
    assert f"Notification {notification}: 1 updated." in cli.output
    [message] = world.tenant.messages_for(alice)
    assert message["activity"]["text"] == "Build 42 passed" and message["id"] == sent["activityId"]

    assert cli("notification", "recall", notification) == 0 and "1 recalled." in cli.output
    assert world.tenant.messages_for(alice) == []
    assert cli.json("notification", "status", notification)[1]["counts"]["recalled"] == 1


def test_send_with_the_same_idempotency_key_sends_once(world: World, cli: Cli) -> None:
    first = cli.json("send", "--to", "bob@contoso.com", "--text", "Invoice 7", "--idempotency-key", "inv-7")[1]
    assert cli("send", "--to", "bob@contoso.com", "--text", "Invoice 7", "--idempotency-key", "inv-7") == 0
    assert "Already sent to bob@contoso.com with this idempotency key: nothing sent again." in cli.output
    assert f"notification id:  {first['notificationId']}" in cli.output
    assert len(world.tenant.messages_for(world.user("bob"))) == 1


def test_a_wait_for_teams_rate_limit_is_shown_then_the_send_goes_through(world: World, cli: Cli) -> None:
    world.tenant.add_fault("connector.send", 429, count=1, retry_after=1)
    assert cli("send", "--to", "alice@contoso.com", "--text", "hi") == 0
    lines = cli.output.splitlines()
    assert lines[0] == "waiting 1 s for Teams' rate limit (HTTP 429), then trying again" and lines[1].startswith("Sent")
    # Scripts get the JSON document and nothing else.
    world.tenant.add_fault("connector.send", 429, count=1, retry_after=1)
    assert cli.json("send", "--to", "alice@contoso.com", "--text", "hi")[1]["status"] == "sent"


def test_a_rate_limit_longer_than_we_wait_says_how_long_and_when_to_retry(world: World, cli: Cli) -> None:
    world.tenant.add_fault("connector.send", 429, count=2, retry_after=600)
    assert cli("send", "--to", "alice@contoso.com", "--text", "hi", "--idempotency-key", "k-429") == 1
    assert "Teams (its Bot Connector service, which delivers the bot's messages) is rate-limiting" in cli.output
    wait = r"It asked to wait 600 s: try again after (\d\d):(\d\d):\d\d UTC with --idempotency-key k-429"
    match = re.search(wait, cli.output)
    assert match, cli.output
    code, body = cli.json("send", "--to", "alice@contoso.com", "--text", "hi", "--idempotency-key", "k-429")
    assert code == 1 and body["error"]["code"] == "upstream_unavailable" and body["retryAfter"] == 600
    assert world.tenant.messages_for(world.user("alice")) == []


def test_an_unconfirmed_send_says_what_to_check_and_a_retry_with_its_key_sends_no_second_copy(
    world: World, cli: Cli
) -> None:
    world.tenant.add_fault("connector.send", 504, count=1)
    assert cli("send", "--to", "alice@contoso.com", "--text", "Pay invoice 1001", "--idempotency-key", "pay-1001") == 1
    assert "error: delivery_unconfirmed" in cli.output
    assert "Check the recipient's chat in Teams" in cli.output
    assert "repeat the same command with --idempotency-key pay-1001" in cli.output
    assert "cannot send a second copy" in cli.output

    assert cli("send", "--to", "alice@contoso.com", "--text", "Pay invoice 1001", "--idempotency-key", "pay-1001") == 1
    assert "error: request_in_progress" in cli.output
    assert world.tenant.calls("connector.send") == 1


def test_global_options_work_after_the_command(world: World, cli: Cli) -> None:
    stream = io.StringIO()
    assert main(["doctor", "--settings", str(cli.settings), "--json"], stdout=stream) == 0
    assert json.loads(stream.getvalue())["ok"] is True
    stream = io.StringIO()
    assert main(["--json", "cache", "show", "alice@contoso.com", "--settings", str(cli.settings)], stdout=stream) == 1
    assert json.loads(stream.getvalue())["cached"] is False


def _every_command(parser: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    found = [path] if path else []
    for action in parser._actions:  # argparse has no public walk of the sub-commands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _every_command(sub, (*path, name))
    return found


def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import build_parser

    commands = _every_command(build_parser())
    assert ("notification", "status") in commands and len(commands) >= 13
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert re.search(r"^examples?:\n  python -m shared\.cli .*" + re.escape(command[-1]), text, re.M), command


def test_doctor_flags_the_example_files_placeholders(world: World, tmp_path: Path) -> None:
    example = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps(example), encoding="utf-8")
    cli = Cli(path)
    assert cli("doctor") == 1
    line = cli.line("settings")
    assert line.startswith("[FAIL]") and "placeholder_setting: " in line
    placeholders = (
        "MicrosoftAppId",
        "MicrosoftAppPassword",
        "MicrosoftAppTenantId",
        "TeamsAppId",
        "ServiceBusConnection",
    )
    for name in placeholders:
        assert name in line, name
    assert "[SKIP] Graph token" in cli.output


def _group_notification(world: World, count: int) -> tuple[str, list[Any]]:
    """A notification to ``count`` recipients sent through POST /api/notify (up to 20 are sent at once)."""
    import asyncio

    import azure.functions as func

    from shared.bootstrap import reset_services
    from tests.functions import OutputMessages, user_function

    users = [world.tenant.add_user(f"member{i}@contoso.com") for i in range(count)]

    async def post() -> func.HttpResponse:
        try:
            request = func.HttpRequest(
                "POST",
                "https://app.example/api/notify",
                headers={"Content-Type": "application/json"},
                params={},
                route_params={},
                body=json.dumps({"recipients": [u.upn for u in users], "text": "Standup in 5"}).encode(),
            )
            response: func.HttpResponse = await user_function("notify")(request, OutputMessages())
            return response
        finally:
            await reset_services()

    response = asyncio.run(post())
    assert response.status_code == 200
    return json.loads(response.get_body())["notificationId"], users


def test_a_broadcast_update_shows_progress_lines_then_a_summary(world: World, cli: Cli) -> None:
    notification, users = _group_notification(world, 3)
    assert cli("notification", "update", notification, "--text", "Standup moved to 10:00") == 0
    progress = [line for line in cli.output.splitlines() if line.startswith("[")]
    assert [line[:5] for line in progress] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all(line.endswith(": updated") for line in progress)
    assert cli.output.splitlines()[-1] == f"Notification {notification}: 3 updated."
    assert all(world.tenant.messages_for(u)[0]["activity"]["text"] == "Standup moved to 10:00" for u in users)

    # On a terminal: a progress bar instead of the lines; with --json nothing but the document.
    code, shown = run_on_terminal(cli, "notification", "recall", notification)
    assert code == 0 and "recalling" in shown and "3/3" in shown and "[1/3]" not in shown
    assert shown.rstrip().splitlines()[-1] == f"Notification {notification}: 3 recalled."
    code, body = cli.json("notification", "recall", notification)
    assert code == 0 and [r["outcome"] for r in body["results"]] == ["recalled"] * 3


def test_status_watch_follows_a_fan_out_to_the_end(world: World, cli: Cli) -> None:
    import asyncio

    from shared.bootstrap import reset_services
    from tests.test_fanout import post, run_queue

    users = [world.tenant.add_user(f"crew{i}@contoso.com") for i in range(25)]

    async def start() -> tuple[str, list[bytes]]:
        try:
            response, messages = await post({"recipients": [u.upn for u in users], "text": "Fire drill at 3"})
            assert response.status_code == 202
            return str(json.loads(response.get_body())["notificationId"]), messages
        finally:
            await reset_services()

    notification, messages = asyncio.run(start())
    env = {k: v for k, v in os.environ.items() if k not in world.env and k != "SSL_CERT_FILE"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "--settings", str(cli.settings), "notification", "status"]
        + [notification, "--watch", "--interval", "0.2", "--top", "5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = watch.stdout.readline() if watch.stdout else ""
        assert first.startswith("0/25 settled: 0 sent, 0 failed, 25 pending"), first

        async def deliver() -> None:
            try:
                await run_queue(messages)
            finally:
                await reset_services()

        asyncio.run(deliver())
        rest, errors = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 0, errors
    lines = rest.splitlines()
    assert "25/25 settled: 25 sent, 0 failed, 0 pending, 0 recalled" in lines
    assert f"Notification {notification}: finished; 25 recipient(s): 25 sent" in rest
    assert sum(len(world.tenant.messages_for(u)) for u in users) == 25


def test_operators_sign_in_with_their_own_identity_where_shared_keys_are_off(world: World, tmp_path: Path) -> None:
    """Only the account URI configured (infra disables shared keys): the command line signs in with
    DefaultAzureCredential (here its environment credential; az login or VS Code on a workstation)
    and reaches Table Storage with a bearer token. Azurite in OAuth mode accepts only such tokens."""
    from tests.azurite import Azurite

    certificate = world.server.ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "azurite-cert.pem", tmp_path / "azurite-key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_path))
    certificate.private_key_pem.write_to_path(str(key_path))
    storage = Azurite(tls=(str(cert_path), str(key_path))).start()
    try:
        settings = write_settings(
            world,
            tmp_path / "operator.settings.json",
            AzureWebJobsStorage=None,
            AzureWebJobsStorage__tableServiceUri=storage.table_service_uri,
        )
        # The operator's sign-in, as `az login` or the AZURE_* variables provide it.
        env = {k: v for k, v in os.environ.items() if k not in world.env and k != "SSL_CERT_FILE"}
        env |= {
            "AZURE_TENANT_ID": world.tenant.tenant_id,
            "AZURE_CLIENT_ID": world.tenant.app_id,
            "AZURE_CLIENT_SECRET": CLIENT_SECRET,
            "AZURE_AUTHORITY_HOST": world.server.base_url,
        }

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "shared.cli", "--settings", str(settings), *argv]
            return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)

        doctor = run("doctor", "--json")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        checks = {c["check"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}
        assert checks["store"] == "ok"
        tokens = world.tenant.calls("token")
        listed = run("failures", "list")
        assert listed.returncode == 0 and "No kept failures." in listed.stdout, listed.stderr
        # Listing needs storage alone: its one token request is the operator's sign-in for Table Storage.
        assert world.tenant.calls("token") == tokens + 1
        sent = run("send", "--to", "alice@contoso.com", "--text", "signed in as the operator", "--json")
        assert sent.returncode == 0 and json.loads(sent.stdout)["status"] == "sent", sent.stderr
        assert len(world.tenant.messages_for(world.user("alice"))) == 1
        assert CLIENT_SECRET not in doctor.stdout + doctor.stderr + sent.stdout + sent.stderr
    finally:
        storage.stop()


def test_a_broadcast_throttled_by_teams_shows_one_wait_line_not_one_per_recipient(world: World, cli: Cli) -> None:
    notification, users = _group_notification(world, 4)
    world.tenant.add_fault("connector.update", 429, count=4, retry_after=1)
    assert cli("notification", "update", notification, "--text", "Standup moved") == 0
    waits = [line for line in cli.output.splitlines() if line.startswith("waiting ")]
    assert waits == ["waiting 1 s for Teams' rate limit (HTTP 429), then trying again"], cli.output
    assert cli.output.splitlines()[-1] == f"Notification {notification}: 4 updated."
    assert all(world.tenant.messages_for(u)[0]["activity"]["text"] == "Standup moved" for u in users)
