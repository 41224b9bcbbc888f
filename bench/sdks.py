"""Row 8: the warm send's CPU beside the Python SDKs a user would pick today, in one interleaved run.

Contenders, all against the same fake, each sending the same activity to existing 1:1 conversations:

- raw httpx POST with a fixed token, in this process (as row 2) and in a worker process of its own
  (the same harness as the SDKs: the fair floor for them);
- ours: the HTTP function ``notify`` (as row 2), in this process;
- botbuilder's ``BotFrameworkAdapter.continue_conversation`` + ``send_activity`` (as row 3a), in this process;
- the Teams SDK (``microsoft-teams-apps``, ``App.send``) and the Agents SDK
  (``microsoft-agents-hosting-core`` with its aiohttp ``CloudAdapter``: ``continue_conversation`` +
  ``send_activity``), each in its own venv (.bench-venvs/, built once from bench/requirements-*-sdk.txt
  with pip, rebuilt when that file changes) and its own process (bench/sdk_worker.py).

Batches rotate over the contenders (A B C ..., B C ... A, ...); each batch's CPU is the process time of
the process that sent it. Before every batch the fake's log is cleared and after it the fake must have
seen exactly one connector send per message and nothing else but token requests (counted: amortised).
A contender that cannot be built, started or driven against the fake gets a row that says so.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.contenders import AdapterSender, FloorSender, FunctionSender, activity_dict
from bench.measure import Stat
from bench.report import Line
from bench.world import ROOT, World
from shared.bootstrap import reset_services

VENVS = os.path.join(ROOT, ".bench-venvs")
WORKER = os.path.join(ROOT, "bench", "sdk_worker.py")
# Worker mode -> (label, requirements file under bench/; None: this interpreter's venv).
SDKS: dict[str, tuple[str, str | None]] = {
    "httpx": ("raw httpx POST, fixed token, own process", None),
    "teams": ("Teams SDK App.send, own venv/process", "requirements-teams-sdk.txt"),
    "agents": (
        "Agents SDK CloudAdapter continue_conversation+send_activity, own venv/process",
        "requirements-agents-sdk.txt",
    ),
}
AUTH_NOTE = (
    "Row 8: both SDKs get their bot token from the fake's login endpoint with MSAL client credentials (the fake"
    " tenant's app id and secret), called as their own client-secret paths call it (asyncio.to_thread(acquire_token"
    "_for_client), MSAL's cache). Neither SDK can point its own MSAL app at a non-Microsoft authority (MSAL asks"
    " login.microsoftonline.com about an unknown host unless instance_discovery=False, which neither passes"
    " through), so the MSAL app is built with that switch and handed over: Teams SDK through its documented"
    " `token` option (a token callable), Agents SDK through ConnectionManager(provider_factory=MsalAuth subclass"
    " whose client application is built with the switch)."
)
TOKEN_ROUTES = frozenset({"token", "openid", "instance_discovery", "msi"})


class Unavailable(Exception):
    """A contender that could not be built or driven (the row says so)."""


def ensure_venv(name: str, requirements: str) -> str:
    """The python of .bench-venvs/NAME with bench/REQUIREMENTS installed (built once; rebuilt when
    the requirements file changes). pip from the package registry only."""
    path = os.path.join(ROOT, "bench", requirements)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    venv = os.path.join(VENVS, name)
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".requirements-sha256")
    if os.path.exists(python) and os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as fh:
            if fh.read().strip() == digest:
                return python
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", venv],
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", path],
    ]
    for step in steps:
        try:
            run = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"venv not built ({' '.join(step[1:4])}): {error}") from error
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"venv not built ({' '.join(step[1:4])} exited {run.returncode}): {tail[0][:200]}")
    with open(stamp, "w", encoding="utf-8") as fh:
        fh.write(digest + "\n")
    return python


class Worker:
    """bench/sdk_worker.py MODE in its own process; ``batch(n)`` returns its (cpu, wall) totals."""

    def __init__(self, mode: str, python: str, world: dict[str, Any]) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [python, WORKER, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        self.version = str(self._ask(json.dumps(world), "ready"))

    def _ask(self, line: str, key: str) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self._proc.stdout.readline()
        if not answer:
            self._stderr.seek(0)
            tail = self._stderr.read().strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"worker exited {self._proc.wait()}: {tail[0][:300]}")
        value = json.loads(answer)
        if "error" in value:
            raise Unavailable(str(value["error"]))
        return value[key] if key != "*" else value

    def batch(self, n: int) -> tuple[float, float]:
        value = self._ask(json.dumps({"n": n}), "*")
        return float(value["cpu"]), float(value["wall"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("\n")
                self._proc.stdin.flush()
                self._proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()


@dataclass
class Contender:
    label: str
    batch: Callable[[int], Awaitable[tuple[float, float]]]
    cpus: list[float] = field(default_factory=list)  # per send, one per timed batch
    walls: list[float] = field(default_factory=list)
    sends: int = 0
    tokens: int = 0
    failure: str | None = None


def in_process(send: Callable[[int], Awaitable[object]]) -> Callable[[int], Awaitable[tuple[float, float]]]:
    counter = 0

    async def batch(n: int) -> tuple[float, float]:
        nonlocal counter
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await send(counter)
            counter += 1
        return time.process_time() - cpu0, time.perf_counter() - wall0

    return batch


def in_worker(worker: Worker) -> Callable[[int], Awaitable[tuple[float, float]]]:
    async def batch(n: int) -> tuple[float, float]:
        return worker.batch(n)

    return batch


async def _run(world: World, contenders: list[Contender], *, n: int, repeats: int) -> None:
    """Warm-up batch each, then ``repeats`` rotations; the fake's requests checked after every batch."""

    async def one(c: Contender, timed: bool) -> None:
        world.fake.clear_log()
        try:
            cpu, wall = await c.batch(n)
        except Exception as error:  # noqa: BLE001 - a contender that fails is reported, not fatal
            c.failure = f"failed mid-run: {type(error).__name__}: {str(error)[:300]}"
            return
        log = [e["route"] for e in world.fake.log()]
        upstream = [r for r in log if r not in TOKEN_ROUTES]
        c.tokens += len(log) - len(upstream)
        c.sends += n
        if upstream != ["connector.send"] * n:
            c.failure = f"fake saw {len(upstream)} upstream requests for {n} sends: {dict(Counter(upstream))}"
        elif timed:
            c.cpus.append(cpu / n)
            c.walls.append(wall / n)

    for c in contenders:
        await one(c, timed=False)
    for r in range(repeats):
        for c in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            if c.failure is None:
                await one(c, timed=True)


async def _sdk_rows_async(
    world: World, venvs: dict[str, str | Unavailable], n: int, repeats: int, conversations: int
) -> list[Line]:
    from bench.rows import warm_recipients

    await reset_services()
    world.fresh_table_prefix()
    recipients = await warm_recipients(world, conversations)
    ids = [r.conversation_id for r in recipients]
    payload = {
        "base_url": world.fake.base_url,
        "tenant_id": world.tenant_id,
        "app_id": world.app_id,
        "secret": world.secret,
        "service_url": world.service_url,
        "conversations": ids,
        "activity": activity_dict(),
    }
    floor = FloorSender(world, ids)
    ours = FunctionSender([r.upn for r in recipients])
    adapter = AdapterSender(world, [(r.conversation_id, r.account_id) for r in recipients])
    contenders = [
        Contender("raw httpx POST, fixed token, in this process (row 2's floor)", in_process(floor.send)),
        Contender(f"ours, {ours.via}", in_process(ours.send)),
        Contender("botbuilder adapter continue_conversation+send_activity (row 3a)", in_process(adapter.send)),
    ]
    unavailable: list[Line] = []
    workers: list[Worker] = []
    try:
        for mode, python in venvs.items():
            label = SDKS[mode][0]
            try:
                if isinstance(python, Unavailable):
                    raise python
                worker = Worker(mode, python, payload)
            except Unavailable as error:
                unavailable.append(Line("8", label, f"NOT MEASURED: {error}", "1 connector send per send", None))
                continue
            workers.append(worker)
            contenders.append(Contender(f"{worker.version}: {label}", in_worker(worker)))
        await _run(world, contenders, n=n, repeats=repeats)
    finally:
        for worker in workers:
            worker.close()
        await floor.aclose()
        await reset_services()
    return _lines(contenders) + unavailable


def _lines(contenders: list[Contender]) -> list[Line]:
    lines = []
    measured: dict[str, Stat] = {}
    for c in contenders:
        if c.failure is not None:
            lines.append(Line("8", c.label, f"NOT MEASURED: {c.failure}", "1 connector send per send", False))
            continue
        cpu, wall = Stat.of(c.cpus), Stat.of(c.walls)
        measured[c.label] = cpu
        value = (
            f"CPU {cpu.us()}, wall {wall.ms()}; fake: 1 send per send, {c.tokens} token requests over {c.sends} sends"
        )
        lines.append(Line("8", c.label, value, "1 connector send per send", True))
    ours = next((s for label, s in measured.items() if label.startswith("ours")), None)
    floor = next((s for label, s in measured.items() if label.startswith("httpx")), None)
    for label, stat in measured.items():
        if label.startswith(("ours", "raw httpx", "httpx")):
            continue
        name = label.split(":")[0].split(" continue_conversation")[0]
        ratios = []
        if ours is not None:
            ratios.append(f"{stat.median / ours.median:.2f}x ours")
        if floor is not None:
            ratios.append(f"{stat.median / floor.median:.2f}x raw httpx (own process)")
        lines.append(Line("8", f"{name} / ours, / raw httpx (CPU medians)", ", ".join(ratios), "info"))
    if ours is not None and floor is not None:
        lines.append(
            Line("8", "ours / raw httpx in its own process (CPU medians)", f"{ours.median / floor.median:.2f}x", "info")
        )
    return lines


def build_venvs(modes: list[str]) -> dict[str, str | Unavailable]:
    """Each contender's python (or why there is none). Run before bench.world points this process's
    environment at the fake (its CA bundle variables would make pip distrust the package registry)."""
    venvs: dict[str, str | Unavailable] = {}
    for mode in modes:
        requirements = SDKS[mode][1]
        try:
            venvs[mode] = sys.executable if requirements is None else ensure_venv(mode, requirements)
        except Unavailable as error:
            venvs[mode] = error
    return venvs


def sdk_rows(
    world: World, venvs: dict[str, str | Unavailable], *, n: int, repeats: int, conversations: int
) -> list[Line]:
    return asyncio.run(_sdk_rows_async(world, venvs, n, repeats, conversations))
