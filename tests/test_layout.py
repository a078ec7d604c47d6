"""The house rules a reader relies on, checked on the source: jobs import no jobs, roles and jobs keep their
functions short, library modules stay readable in one sitting, and weight serialisation exists once."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from conftest import ROOT

MAX_FUNCTION_LINES = 60  # jobs/ and actors/
MAX_MODULE_LINES = 600  # rlhf_cluster/


def _py(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines_in_jobs_and_actors():
    long = [
        f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
        for folder in ("jobs", "actors")
        for p in _py(folder)
        for name, line, n in _functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_library_modules_at_most_600_lines():
    big = [
        f"{p.relative_to(ROOT)} ({n})"
        for p in _py("rlhf_cluster")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, "library modules over 600 lines: " + ", ".join(big)


def test_no_job_imports_another_job():
    found = []
    for p in _py("jobs"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            found += [f"{p.relative_to(ROOT)}: imports {n}" for n in names if n == "jobs" or n.startswith("jobs.")]
    assert not found, "\n".join(found)


def test_library_imports_no_job_and_no_actor():
    found = []
    for p in _py("rlhf_cluster"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("jobs", "actors"):
                found.append(f"{p.relative_to(ROOT)}: imports {node.module}")
    assert not found, "\n".join(found)


def test_weights_are_serialised_in_one_place():
    out = subprocess.run(
        ["git", "grep", "-n", "torch.save(", "--", "rlhf_cluster", "actors", "jobs", "deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["rlhf_cluster/vllm_extension.py"], out
