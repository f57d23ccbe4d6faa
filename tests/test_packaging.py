"""Packaging: the wheel carries conf/ (as zoo.conf), and importing the packages stays cheap and CUDA-free."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_finds_its_configs_without_the_source_tree(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("hybrid_zoo-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "zoo" / "conf" / "config.yaml").exists()
    assert (site / "zoo" / "conf" / "model" / "hybrid_gla.yaml").exists()
    code = (
        "import zoo; from zoo.config import compose, conf_dir; "
        f"assert str(conf_dir()).startswith({str(site)!r}), conf_dir(); "
        "m = zoo.build_model(compose(['model=hybrid_gla', 'model.d_model=64', 'model.head_dim=16']).model); "
        "print(m.layer_mixers)"
    )
    proc = run_python(code, cwd=tmp_path, pythonpath=str(site))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "attn" in proc.stdout


def test_import_is_cheap_and_cuda_free(tmp_path):
    code = (
        "import sys, zoo, kernels; "
        "bad = [m for m in ('triton', 'flash_attn', 'lm_eval', 'hydra', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad; "
        "import torch; assert not torch.cuda.is_initialized()"
    )
    proc = run_python(code, cwd=tmp_path, pythonpath=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]


# import name -> distribution, where the two differ and the distribution may not be installed here
DISTRIBUTION_OF = {
    "hydra": "hydra-core",
    "hydra_plugins": "hydra-submitit-launcher",
    "yaml": "pyyaml",
    "lm_eval": "lm-eval",
    "flash_attn": "flash-attn",
    "fla": "fla-core",
    "llama_cpp": "llama-cpp-python",  # not installed in CI: it compiles llama.cpp
}


def third_party_imports(folders) -> dict[str, dict[str, set[str]]]:
    """`{top-level module: {"module" | "lazy": files}}` for the third-party imports of `folders` (ast): "module"
    for imports at the top of a file (importing the file needs them), "lazy" for imports inside a function."""
    found: dict[str, dict[str, set[str]]] = {}
    first_party = {"zoo", "kernels", "conf", "__future__"}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    root = name.split(".")[0]
                    if root not in sys.stdlib_module_names and root not in first_party:
                        kind = "module" if id(node) in top else "lazy"
                        found.setdefault(root, {}).setdefault(kind, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> tuple[set[str], set[str]]:
    """Normalised distribution names of the runtime dependencies and of all extras."""

    def names(specs):
        return {re.split(r"[<>=;\[ ]", s, maxsplit=1)[0].strip().lower().replace("_", "-") for s in specs}

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def distribution(module: str) -> str:
    installed = importlib.metadata.packages_distributions().get(module)
    name = installed[0] if installed else DISTRIBUTION_OF.get(module, module)
    return name.lower().replace("_", "-")


def test_every_third_party_import_is_declared():
    """An import at the top of a library file needs a runtime dependency (importing the module needs it); a lazy
    import, or any import of scripts/, needs at least the extra of its feature. A fresh `pip install -e .` (CI
    builds one) then never meets an undeclared import."""
    core, extras = declared()
    missing = []
    for module, where in sorted(third_party_imports(["zoo", "kernels", "scripts"]).items()):
        dist = distribution(module)
        library_top = {f for f in where.get("module", ()) if not f.startswith("scripts/")}
        if library_top and dist not in core:
            missing.append(
                f"{module} ({dist}) is imported at module level by {sorted(library_top)} but is not a dependency"
            )
        elif dist not in core | extras:
            missing.append(
                f"{module} ({dist}) is imported by {sorted(set().union(*where.values()))} but declared nowhere"
            )
    assert not missing, "\n".join(missing)
