"""Results: one row per measured figure, printed as a table and written to bench/results/<date>.md."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from importlib import metadata

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PACKAGES = (
    "httpx",
    "msal",
    "azure-data-tables",
    "azure-functions",
    "botbuilder-core",
    "botframework-connector",
    "msrest",
    "requests",
    "aiohttp",
)


@dataclass(frozen=True)
class Line:
    row: str  # "1", "2", ... the benchmark number
    what: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: informational

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


def table(lines: list[Line]) -> str:
    header = ("#", "measurement", "result", "goal", "")
    rows = [header, *((ln.row, ln.what, ln.value, ln.goal, ln.verdict) for ln in lines)]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> list[str]:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (absent)")
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        "- Packages: " + ", ".join(versions),
    ]


def write_results(lines: list[Line], *, command: str, notes: list[str], quick: bool) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = os.path.join(RESULTS_DIR, f"{today}{'-quick' if quick else ''}.md")
    text = [
        f"# Benchmark results {today}",
        "",
        f"Command: `{command}`",
        "",
        *machine_info(),
        "",
        "CPU = client-process CPU time per send (`time.process_time`, fake tenant in another process),",
        "median over batches with (min-max); wall = wall time per send, secondary.",
        "",
        table(lines),
        "",
    ]
    if notes:
        text += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    # Keep anything a human wrote below the generated part (before/after records, analysis).
    marker = "<!-- manual -->"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
        if marker in old:
            text += [old[old.index(marker) :].rstrip(), ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(text))
    return path
