"""The design's dependency rules and the README's promises, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

# Each folder may import only the folders to its left (DESIGN.md, "Dependency direction").
ORDER = ["feature_repo", "training", "serving", "monitoring", "services"]
# Modules the serving path loads: none of them may import torch.
TORCH_FREE = ["feature_repo", "serving", "monitoring", "services/api.py", "services/dashboard.py",
              "services/serving_process.py",
              "training/bundle.py", "training/ranker_onnx.py", "training/ranker_features.py",
              "training/retrieval.py", "training/retrieval_index.py", "training/two_stage.py",
              "training/features.py", "training/offline_features.py", "training/dataset.py"]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def python_files(target: str) -> list[Path]:
    path = ROOT / target
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("folder", ORDER)
def test_folders_import_only_to_their_left(folder):
    forbidden = set(ORDER[ORDER.index(folder) + 1:])
    for path in python_files(folder):
        wrong = imported_roots(path) & forbidden
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_gpu_imports_only_training():
    for path in python_files("gpu"):
        wrong = imported_roots(path) & {"feature_repo", "serving", "monitoring", "services"}
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


@pytest.mark.parametrize("target", TORCH_FREE)
def test_serving_path_never_imports_torch(target):
    for path in python_files(target):
        assert "torch" not in imported_roots(path), f"{path.relative_to(ROOT)} imports torch"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci_command}\n```" in readme
