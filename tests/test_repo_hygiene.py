"""A fresh clone must work: no tracked file that .gitignore ignores, no tracked symlink out of the repo.

The guard (scripts/check_tree.py) also runs first in the test command; these tests pin that it finds
both kinds on a real git repository and that this repository has neither.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.azurite import ROOT

CHECK = ROOT / "scripts" / "check_tree.py"


def _run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text(".venv\nnode_modules\n")
    (tmp_path / "app.py").write_text("print('hi')\n")
    _git(tmp_path, "add", ".gitignore", "app.py")
    return tmp_path


def test_this_repository_is_clean() -> None:
    result = _run_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_a_clean_repository_passes(repo: Path) -> None:
    assert _run_check(repo).returncode == 0


def test_a_tracked_ignored_file_fails_naming_it(repo: Path) -> None:
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "x.js").write_text("")
    _git(repo, "add", "-f", "node_modules/x.js")
    result = _run_check(repo)
    assert result.returncode == 1
    assert "node_modules/x.js: tracked but ignored" in result.stderr


@pytest.mark.parametrize("target", ["/work/venv", "../outside"])
def test_a_tracked_symlink_out_of_the_repo_fails_naming_it(repo: Path, target: str) -> None:
    os.symlink(target, repo / "link")
    _git(repo, "add", "link")
    result = _run_check(repo)
    assert result.returncode == 1
    assert f"link: tracked symlink points outside the repository ({target})" in result.stderr


def test_a_symlink_inside_the_repo_passes(repo: Path) -> None:
    os.symlink("app.py", repo / "alias.py")
    _git(repo, "add", "alias.py")
    assert _run_check(repo).returncode == 0
