"""Refuses a repository whose tracked files would break a fresh clone.

Two kinds of tracked path only work on the machine that committed them:
- a file that .gitignore ignores (it was added by force or before the ignore rule; on a fresh clone it
  collides with what the tooling creates there, e.g. a tracked `.venv` symlink stops `python -m venv`);
- a symlink whose target is absolute or climbs out of the repository (it dangles on any other machine).

Run by the test command before anything is installed (standard library only) and by
tests/test_repo_hygiene.py. Exit 1 with one line per offending path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _git(root: Path, *args: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.split("\0") if line]


def tracked_ignored(root: Path) -> list[str]:
    """Tracked paths that .gitignore (or .git/info/exclude) ignores."""
    return _git(root, "ls-files", "-z", "--cached", "--ignored", "--exclude-standard")


def symlinks_leaving_repo(root: Path) -> list[tuple[str, str]]:
    """Tracked symlinks (mode 120000) whose target is absolute or resolves outside the repository."""
    found: list[tuple[str, str]] = []
    for entry in _git(root, "ls-files", "-z", "--stage"):
        meta, path = entry.split("\t", 1)
        if meta.split()[0] != "120000":
            continue
        blob = meta.split()[1]
        target = subprocess.run(
            ["git", "-C", str(root), "cat-file", "blob", blob], check=True, capture_output=True, text=True
        ).stdout
        if os.path.isabs(target):
            found.append((path, target))
            continue
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if resolved == ".." or resolved.startswith(".." + os.sep):
            found.append((path, target))
    return found


def problems(root: Path) -> list[str]:
    lines = [f"{path}: tracked but ignored by .gitignore (git rm --cached it)" for path in tracked_ignored(root)]
    lines += [
        f"{path}: tracked symlink points outside the repository ({target})"
        for path, target in symlinks_leaving_repo(root)
    ]
    return lines


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return 0  # an exported tree (zip, deployment package): nothing tracked to check
    found = problems(root)
    for line in found:
        print(f"check_tree: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
