"""The deployment ships the app's own modules as bytecode that stays valid in the package
(scripts/compile_bytecode.py, run by azure.yaml's prepackage hook): a cold start then loads them
instead of compiling them again (bench row 4b)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.compile_bytecode import RUNTIME, SOURCES, compile_app, main

ROOT = Path(__file__).resolve().parent.parent


def _copy_of_the_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "function_app.py", app)
    shutil.copytree(ROOT / "shared", app / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    return app


def _loaded_from(app: Path, module: str) -> str:
    """Where a fresh interpreter (that writes no bytecode) takes ``module``'s code from (``python -v``)."""
    run = subprocess.run(
        [sys.executable, "-v", "-c", f"import {module}"],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    package, _, name = module.rpartition(".")
    where = re.escape(package.replace(".", "/") + "/" if package else "")
    found = rf"# code object from '?{re.escape(str(app))}/{where}(__pycache__/)?{re.escape(name)}\."
    [line] = [ln for ln in run.stderr.splitlines() if re.match(found, ln)]
    return line


def test_the_shipped_bytecode_is_used_whatever_times_the_package_gives_the_files(tmp_path: Path) -> None:
    app = _copy_of_the_app(tmp_path)
    assert "__pycache__" not in _loaded_from(app, "shared.request_models")  # nothing compiled: from source

    assert compile_app(app)
    for source in [app / "function_app.py", *(app / "shared").rglob("*.py")]:
        os.utime(source, (1_000_000_000, 1_000_000_000))  # as a zip round trip may leave them

    assert "__pycache__" in _loaded_from(app, "shared.request_models")
    assert "__pycache__" in _loaded_from(app, "function_app")


def test_an_edited_module_is_compiled_again_not_taken_from_stale_bytecode(tmp_path: Path) -> None:
    app = _copy_of_the_app(tmp_path)
    assert compile_app(app)
    errors = app / "shared" / "errors.py"
    errors.write_text(errors.read_text(encoding="utf-8") + "\nEDITED = True\n", encoding="utf-8")

    assert "__pycache__" not in _loaded_from(app, "shared.errors")
    run = subprocess.run(
        [sys.executable, "-c", "import shared.errors as e; print(e.EDITED)"],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "True"


def test_another_python_than_the_function_apps_compiles_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main((RUNTIME[0], RUNTIME[1] + 1)) == 0
    assert "no bytecode compiled" in capsys.readouterr().out


def test_the_runtime_is_the_function_apps() -> None:
    bicep = (ROOT / "infra" / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    [version] = re.findall(r"name: 'python'\s+version: '([0-9.]+)'", bicep)
    assert version == ".".join(map(str, RUNTIME))


def test_azd_compiles_before_packaging_and_the_package_keeps_the_bytecode() -> None:
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    hook = re.search(r"^    hooks:\n      (?:#.*\n      )*prepackage:\n((?:        .*\n)+)", azure_yaml, re.MULTILINE)
    assert hook, "azure.yaml: service api needs a prepackage hook"
    assert re.search(r"posix:\n\s+shell: sh\n\s+run: python3 scripts/compile_bytecode.py\n", hook.group(1))
    assert re.search(r"windows:\n\s+shell: pwsh\n\s+run: python scripts/compile_bytecode.py\n", hook.group(1))
    ignored = (ROOT / ".funcignore").read_text(encoding="utf-8").split()
    assert "__pycache__" not in ignored and "*.pyc" not in ignored
    assert set(SOURCES) == {"function_app.py", "shared"} and not set(SOURCES) & set(ignored)
