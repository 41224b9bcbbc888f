"""Row 4, cold start: import function_app and index its functions in a fresh process, vs a process
that imports botbuilder.core alone. Time is measured inside the child (import + index, interpreter
start-up excluded); memory is the child's peak RSS (VmHWM of /proc/self/status, per address space: ru_maxrss would carry
the forking parent's peak into the child), with a bare interpreter for scale."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench.report import Line
from bench.world import ROOT, machine_env

_PROBE = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
mode = sys.argv[1]
if mode == "app":
    from function_app import app
    names = [f.get_function_name() for f in app.get_functions()]
elif mode == "botbuilder":
    import botbuilder.core
    names = []
else:
    names = []
elapsed = time.perf_counter() - t0
heavy = sorted(m for m in ("botbuilder.core", "botframework.connector", "msal", "msrest", "aiohttp",
                           "azure.data.tables", "azure.identity", "httpx", "requests", "pydantic", "msgspec")
               if m in sys.modules)
# VmHWM: this process's own peak (ru_maxrss would start from the forking parent's peak).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "rss_kb": hwm,
                  "functions": names, "heavy": heavy}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        cwd=ROOT,
        env={**machine_env(), "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_mode(mode: str, runs: int) -> tuple[float, float, float, float, dict[str, object]]:
    if runs > 1:
        _probe(mode)  # the first run may compile .pyc files: not a cold start of a deployed app
    samples = [_probe(mode) for _ in range(runs)]
    secs = [float(s["seconds"]) for s in samples]  # type: ignore[arg-type]
    rss = [float(s["rss_kb"]) / 1024 for s in samples]  # type: ignore[arg-type]
    return statistics.median(secs), min(secs), max(secs), statistics.median(rss), samples[-1]


def cold_start(*, quick: bool) -> list[Line]:
    runs = 1 if quick else 7
    app_s, app_lo, app_hi, app_rss, app_info = measure_mode("app", runs)
    bb_s, bb_lo, bb_hi, bb_rss, _ = measure_mode("botbuilder", runs)
    _, _, _, bare_rss, _ = measure_mode("bare", runs)
    t_ratio, m_ratio = app_s / bb_s, app_rss / bb_rss
    m_ratio_net = (app_rss - bare_rss) / (bb_rss - bare_rss)
    functions = ", ".join(app_info["functions"]) or "none yet"  # type: ignore[arg-type]
    heavy = ", ".join(app_info["heavy"]) or "none"  # type: ignore[arg-type]
    return [
        Line(
            "4",
            f"import function_app + get_functions() [{functions}]",
            f"{app_s * 1e3:.0f} ms ({app_lo * 1e3:.0f}-{app_hi * 1e3:.0f}), peak RSS {app_rss:.1f} MB",
            "",
        ),
        Line(
            "4",
            "import botbuilder.core alone",
            f"{bb_s * 1e3:.0f} ms ({bb_lo * 1e3:.0f}-{bb_hi * 1e3:.0f}), peak RSS {bb_rss:.1f} MB",
            "",
        ),
        Line("4", "function_app / botbuilder.core: time", f"{t_ratio:.2f}x", "<= 0.5x", t_ratio <= 0.5),
        Line(
            "4",
            "function_app / botbuilder.core: peak RSS (net of bare interpreter)",
            f"{m_ratio:.2f}x ({m_ratio_net:.2f}x net; bare python {bare_rss:.1f} MB)",
            "<= 0.5x",
            m_ratio <= 0.5,
        ),
        Line("4", "heavy modules loaded by importing function_app", heavy, "info"),
    ]
