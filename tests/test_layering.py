"""The house's layers: the library sits below the apps, no app imports another app, `kernels` knows nothing of
`zoo`, and `import zoo` stays cheap (no Triton, lm-eval, transformers or matplotlib).

Apps are the command-line entry points: the console scripts of pyproject.toml, `python -m` modules
(`__main__.py`, `zoo.lm_eval`) and the `cli` modules. Everything else under `zoo/` is library. The graph is read
from the source (ast), function-level imports included, so a lazy import cannot hide a layering break."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for d in ("zoo", "kernels") for p in (ROOT / d).rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every first-party module `path` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from zoo.x import y` imports zoo.x, and zoo.x.y when that is a module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


def apps() -> set[str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    entry = {s.split(":")[0] for s in scripts}
    return entry | {m for m in MODULES if m.endswith((".cli", ".__main__"))} | {"zoo.lm_eval"}


def test_every_console_script_is_an_app_module():
    assert apps() <= set(MODULES), sorted(apps() - set(MODULES))


def test_library_never_imports_an_app():
    bad = [
        f"{m} imports {dep}" for m, p in MODULES.items() if m not in apps() for dep in imports_of(p) if dep in apps()
    ]
    assert not bad, bad


def test_no_app_imports_another_app():
    bad = [
        f"{m} imports {dep}" for m in apps() for dep in imports_of(MODULES[m]) if dep in apps() and not _is_shim(m, dep)
    ]
    assert not bad, bad


def _is_shim(module: str, dep: str) -> bool:
    """`zoo/<app>/__main__.py` and `zoo/lm_eval.py` only start the command they name."""
    return module.endswith(".__main__") or (module == "zoo.lm_eval" and dep == "zoo.evals.lm_eval.cli")


def test_kernels_import_nothing_from_zoo():
    bad = [f"{m} imports {dep}" for m, p in MODULES.items() if m.startswith("kernels") for dep in imports_of(p)]
    bad = [b for b in bad if " imports zoo" in b]
    assert not bad, bad


def import_profile(code: str) -> tuple[set[str], dict[str, int]]:
    """Modules loaded by `code` in a fresh interpreter, and each one's own import time in microseconds
    (`python -X importtime`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    own = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            own[m.group(4)] = int(m.group(1))
    return set(own), own


def test_import_zoo_stays_cheap():
    loaded, own = import_profile("import zoo")
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("triton", "lm_eval", "transformers", "matplotlib"))
    assert not heavy, heavy
    ours = sum(t for m, t in own.items() if m.split(".")[0] in ("zoo", "kernels"))
    print(f"import zoo: {ours / 1e3:.1f} ms in zoo/kernels modules, {sum(own.values()) / 1e3:.0f} ms in all")
    # our own modules (torch and the rest excluded) load in well under a second; a heavy eager import would not
    assert ours < 500_000, f"zoo's own modules take {ours / 1e3:.0f} ms to import"
