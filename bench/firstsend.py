"""Row 4b, the first send after a cold start, in the configuration infra/ deploys: a user-assigned
managed identity (ManagedIdentityClientId: the federated credential of the app registration) and
identity-based storage (AzureWebJobsStorage__tableServiceUri + __credential=managedidentity).

1. A fresh interpreter (started by exec) imports function_app, indexes its functions and makes one
   real send through the HTTP function ``notify`` against the fake and Azurite; it reports the modules
   that were loaded, in load order. The app token comes from MSAL (MSAL's client credentials flow, as the product uses),
   here with the managed identity's token as the federated credential. Azurite takes no token over
   plain http, so this process reaches it by connection string (through the app's own Table transport,
   shared.tablehttp, as in the deployment); identity-based storage adds the storage token from the
   managed identity (``shared.azurecore.ManagedIdentityCredential``, MSAL), which the probe then
   really fetches from the fake's identity endpoint, so that what it loads is counted.
2. Fresh interpreters, interleaved: one imports exactly those modules (the cost a first send pays for
   imports), one imports ``botbuilder.core`` alone. Time is measured inside the child; memory is the
   child's own high-water mark (``VmHWM`` of /proc/self/status: per address space, so a forked child
   does not inherit its parent's peak the way ``ru_maxrss`` does).

Bytecode: pip compiles every installed package (botbuilder included) when it installs it, and the
deployment ships the app's own modules compiled too (azure.yaml's prepackage hook runs
scripts/compile_bytecode.py; the Function App's package is read-only, so nothing compiled at a cold
start is kept). So the app's modules are compiled first exactly so, whatever PYTHONDONTWRITEBYTECODE says.
A third interpreter, interleaved with the other two, imports the same modules from a copy of the app
without bytecode (a deployment that does not ship it), for information.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.report import Line
from bench.world import ROOT, World, machine_env

HEAVY = ("botbuilder", "botframework", "msrest", "requests", "msal", "azure.identity", "aiohttp", "pydantic")

_SEND_PROBE = r"""
import asyncio, json, os, sys
before = set(sys.modules)
from tests.functions import OutputMessages, user_function
import azure.functions as func
notify = user_function("notify")
body = json.dumps({"recipient": sys.argv[1], "text": "first"}).encode()
request = func.HttpRequest("POST", "http://localhost:7071/api/notify",
                           headers={"content-type": "application/json"}, params={}, route_params={}, body=body)
async def main():
    response = await notify(request, OutputMessages())
    from shared.bootstrap import get_services, reset_services
    from shared.azurecore import ManagedIdentityCredential
    # What identity-based storage adds (shared.bootstrap.table_service), see the docstring.
    credential = ManagedIdentityCredential(get_services().http, client_id=os.environ["ManagedIdentityClientId"])
    await credential.get_token_info("https://storage.azure.com/.default")
    await reset_services()
    return response.status_code
status = asyncio.run(main())
loaded = [m for m in sys.modules if m not in before and not m.startswith("tests")]
print(json.dumps({"status": status, "modules": loaded}))
"""

_IMPORT_PROBE = r"""
import importlib, json, sys, time, warnings
warnings.simplefilter("ignore")
modules = json.load(open(sys.argv[1])) if sys.argv[1] != "-" else ["botbuilder.core"]
t0 = time.perf_counter()
failed = 0
for name in modules:
    if name in sys.modules:
        continue
    try:
        importlib.import_module(name)
    except Exception:
        failed += 1
elapsed = time.perf_counter() - t0
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "hwm_kb": hwm, "failed": failed}))
"""

_BARE_PROBE = r"""
import json
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"hwm_kb": hwm}))
"""


def _run(
    code: str, *args: str, env: dict[str, str] | None = None, root: str = ROOT, world: bool = False
) -> dict[str, object]:
    """``code`` in a fresh interpreter; with ``world``, in this process's environment (the fake's
    settings and CA), otherwise in the machine's own (import timings: see ``machine_env``)."""
    base = dict(os.environ) if world else machine_env()
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=root,
        env={**base, "PYTHONPATH": root, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench probe failed: {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def infra_env(world: World) -> dict[str, str]:
    """The deployed credential: no secret, the managed identity's token as the federated assertion."""
    info = world.fake.info
    return {
        "MicrosoftAppPassword": "",
        "ManagedIdentityClientId": str(info["managed_identity_client_id"]),
        "IDENTITY_ENDPOINT": f"{info['base_url']}/msi/token",
        "IDENTITY_HEADER": str(info["identity_header"]),
    }


def first_send(world: World, *, quick: bool) -> list[Line]:
    runs = 1 if quick else 11
    world.fresh_table_prefix()
    recipient = world.new_users("first", 1, installed=True)[0]
    world.fake.clear_log()
    probe = _run(_SEND_PROBE, recipient, env=infra_env(world), world=True)
    calls = [e["route"] for e in world.fake.log() if e["route"].startswith(("graph.", "connector."))]
    modules = [str(m) for m in probe["modules"]]  # type: ignore[attr-defined]
    heavy = sorted({h for h in HEAVY for m in modules if m == h or m.startswith(h + ".")})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(modules, handle)
        path = handle.name
    source = tempfile.mkdtemp(prefix="bench-nobytecode-")
    try:
        subprocess.run([sys.executable, os.path.join("scripts", "compile_bytecode.py")], cwd=ROOT, check=True)
        # The app without its bytecode, read from source at every import (nothing written).
        shutil.copy(os.path.join(ROOT, "function_app.py"), source)
        shutil.copytree(
            os.path.join(ROOT, "shared"), os.path.join(source, "shared"), ignore=shutil.ignore_patterns("__pycache__")
        )
        from_source = {"PYTHONDONTWRITEBYTECODE": "1"}
        ours: list[dict[str, object]] = []
        botbuilder: list[dict[str, object]] = []
        uncompiled: list[dict[str, object]] = []
        for i in range(runs):  # interleaved, rotating which goes first
            trio = [
                lambda: ours.append(_run(_IMPORT_PROBE, path)),
                lambda: botbuilder.append(_run(_IMPORT_PROBE, "-")),
                lambda: uncompiled.append(_run(_IMPORT_PROBE, path, env=from_source, root=source)),
            ]
            for run in trio[i % 3 :] + trio[: i % 3]:
                run()
        bare = statistics.median(float(_run(_BARE_PROBE)["hwm_kb"]) for _ in range(1 if quick else 3)) / 1024  # type: ignore[arg-type]
    finally:
        os.unlink(path)
        shutil.rmtree(source, ignore_errors=True)

    def stats(samples: list[dict[str, object]], key: str, scale: float) -> tuple[float, float, float]:
        values = [float(s[key]) * scale for s in samples]  # type: ignore[arg-type]
        return statistics.median(values), min(values), max(values)

    u_t, u_tlo, u_thi = stats(uncompiled, "seconds", 1e3)
    o_t, o_tlo, o_thi = stats(ours, "seconds", 1e3)
    b_t, b_tlo, b_thi = stats(botbuilder, "seconds", 1e3)
    o_m, o_mlo, o_mhi = stats(ours, "hwm_kb", 1 / 1024)
    b_m, b_mlo, b_mhi = stats(botbuilder, "hwm_kb", 1 / 1024)
    t_ratio, m_ratio = o_t / b_t, o_m / b_m
    failed = int(ours[-1]["failed"])  # type: ignore[call-overload]
    sent = probe["status"] == 200 and calls == ["graph.installed_apps", "graph.chat", "connector.send"]
    return [
        Line(
            "4b",
            "first send (infra config: managed identity, identity-based storage): status and upstream calls",
            f"HTTP {probe['status']}, {len(calls)} ({', '.join(calls)})",
            "200, 3 calls",
            sent,
        ),
        Line(
            "4b",
            f"modules the first send loads ({len(modules)}): import time, peak RSS",
            f"{o_t:.0f} ms ({o_tlo:.0f}-{o_thi:.0f}), {o_m:.1f} MB ({o_mlo:.1f}-{o_mhi:.1f})"
            + (f"; {failed} not importable alone" if failed else ""),
            "",
        ),
        Line(
            "4b",
            "import botbuilder.core alone: time, peak RSS",
            f"{b_t:.0f} ms ({b_tlo:.0f}-{b_thi:.0f}), {b_m:.1f} MB ({b_mlo:.1f}-{b_mhi:.1f})",
            f"bare python {bare:.1f} MB",
        ),
        Line("4b", "first send's modules / botbuilder.core: time", f"{t_ratio:.2f}x", "<= 0.8x", t_ratio <= 0.8),
        Line(
            "4b",
            "the same modules without the app's bytecode (not shipped): import time, / botbuilder.core",
            f"{u_t:.0f} ms ({u_tlo:.0f}-{u_thi:.0f}), {u_t / b_t:.2f}x"
            + (f"; {int(uncompiled[-1]['failed'])} not importable" if uncompiled[-1]["failed"] else ""),  # type: ignore[call-overload]
            "info",
        ),
        Line("4b", "first send's modules / botbuilder.core: peak RSS", f"{m_ratio:.2f}x", "<= 1.0x", m_ratio <= 1.0),
        Line(
            "4b",
            "heavy packages the first send loads",
            ", ".join(heavy) or "none",
            "no botbuilder/msrest/azure.identity/aiohttp (msal, requests: by design)",
            not {"botbuilder", "botframework", "msrest", "azure.identity", "aiohttp"} & set(heavy),
        ),
    ]
