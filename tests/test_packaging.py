"""Packaging: the wheel carries conf/ (as zoo.conf), and importing the packages stays cheap and CUDA-free."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

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
