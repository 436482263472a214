"""The architecture stays visible: import-linter contracts of pyproject.toml hold, and the
README's test command is the one CI runs."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # the venv's scripts sit beside its python, which need not be on PATH
    exe = shutil.which("lint-imports") or shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed")
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kernels_import_only_numpy_numba_stdlib():
    # llvmlite is numba's code generator (numba intrinsics are written in its IR)
    allowed = {"numpy", "numba", "llvmlite", "kernels", "__future__"} | set(sys.stdlib_module_names)
    for path in (ROOT / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks = [i for i, line in enumerate(readme) if line.startswith("```bash")]
    assert len(blocks) >= 2 and blocks[1] < 12, "README must open with the two commands"
    test_cmd = readme[blocks[1] + 1]
    assert "pytest" in test_cmd
    script = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in script
    out = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/```$/p' README.md | sed -n '/^```bash/,/^```/p' | sed '1d;$d'"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == test_cmd
