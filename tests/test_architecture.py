"""The package's layout is its architecture (docs/architecture.md): the import contracts in
pyproject.toml hold, imports inside functions say why, and no module hides a standard one."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import tldops_mta

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(tldops_mta.__file__).parent


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_contracts_name_every_package() -> None:
    # A new package outside the layers would escape them.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {n.strip() for layer in layers for n in layer.split("|")}
    present = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")}
    assert named == present


def _function_imports(path: Path) -> list[tuple[int, int]]:
    """(first line, last line) of each import statement inside a function."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(fn)
                      if isinstance(n, ast.Import | ast.ImportFrom)]
    return sorted(set(found))


def test_every_import_inside_a_function_says_why() -> None:
    # Such an import keeps a process from loading what it does not use (the SMTP process and
    # the worker's libraries) or breaks a cycle; the comment on it, or right above the block
    # of imports it belongs to, says which.
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        imports = _function_imports(path)
        starts = {a for a, _ in imports}
        for first, last in imports:
            block_start = first
            while block_start - 1 in {b for a, b in imports if a < block_start} or (
                    block_start - 1 in starts):
                block_start = min(a for a, b in imports if b == block_start - 1 or a == block_start - 1)
            block_end = last
            while block_end + 1 in starts:
                block_end = next(b for a, b in imports if a == block_end + 1)
            commented = any("#" in lines[i - 1] for i in range(block_start, block_end + 1))
            above = lines[block_start - 2].strip().startswith("#")
            if not (commented or above):
                silent.append(f"{path.relative_to(ROOT)}:{first}: {lines[first - 1].strip()}")
    assert not silent, "\n".join(silent)


def test_no_module_is_named_like_a_standard_one() -> None:
    clashes = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.stem in sys.stdlib_module_names]
    clashes += [str(p.relative_to(ROOT)) for p in PACKAGE.iterdir()
                if p.is_dir() and p.name in sys.stdlib_module_names]
    assert not clashes
