"""Compile the app's own modules (function_app.py, shared/) to bytecode before a deployment packages them.

pip compiles every package it installs, but nothing compiles the app's own modules, and the Function
App's package is read-only: without shipped bytecode, every cold start compiles them again from source
(about 60-70 ms on a 2-core machine, docs/PERFORMANCE.md, row 4b) and keeps nothing. (Where the folder
is writable, Python writing __pycache__ at a cold start can even restart the worker:
https://github.com/Azure/azure-functions-python-worker/issues/1665.)

``checked-hash`` bytecode is used while its source's hash matches, whatever modification times
packaging gives the files (timestamp bytecode is stale after a zip round trip); an edited source is
simply compiled again. Bytecode is per Python version: compiled by another version than the Function
App's runtime it would be ignored, so the script then compiles nothing and says so.

Run by azd before it packages the app (azure.yaml, ``hooks.prepackage``) and by ``python -m bench``
(row 4b). Usage: ``python scripts/compile_bytecode.py``
"""

from __future__ import annotations

import compileall
import py_compile
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The Function App's Python (infra/modules/functionapp.bicep, runtime.version; a test keeps them in step).
RUNTIME = (3, 11)
SOURCES = ("function_app.py", "shared")


def compile_app(root: Path = ROOT) -> bool:
    """Compile the app's modules in place (``__pycache__``; a timestamp .pyc there is replaced); False
    when a module does not compile."""
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    ok = True
    for name in SOURCES:
        path = root / name
        if path.is_dir():
            ok = compileall.compile_dir(path, quiet=1, force=True, invalidation_mode=mode) and ok
        else:
            ok = compileall.compile_file(path, quiet=1, force=True, invalidation_mode=mode) and ok
    return bool(ok)


def main(version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)) -> int:
    if version != RUNTIME:
        here, runtime = ".".join(map(str, version)), ".".join(map(str, RUNTIME))
        print(
            f"compile_bytecode: Python {here} here, the Function App runs {runtime}: no bytecode compiled "
            f"(the app still works; each cold start compiles its modules). Run it with Python {runtime}."
        )
        return 0
    return 0 if compile_app() else 1


if __name__ == "__main__":
    sys.exit(main())
