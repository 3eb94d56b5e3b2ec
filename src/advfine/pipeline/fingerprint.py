"""The fingerprint of the package code a stage runs, so the cache follows the code.

Snakemake reruns a job when its ``script:`` file changes, not when a module the script imports does.
Each rule therefore gets a param ``code``: a hash of every advfine module its job imports, found by walking
with ``ast`` the imports of the job's entry points, ``advfine.pipeline.job`` and ``advfine.stages.<stage>``
(transitively, deferred imports too, and the packages' ``__init__`` modules, which an import runs); a stage
script imports no advfine module beyond these (tests/test_fingerprint.py). The files hashed are this
package's, wherever it is installed: the code that runs. A module's code is hashed in a normalized form, its
``ast.unparse`` without docstrings: an edit of a comment, a docstring or the layout reruns nothing (days of
training stay valid), any change of code reruns the stage and, through its outputs, everything downstream.
A new Python version may unparse some code differently and so rerun
stages once. Pure Python (no torch): the Snakefile calls it at parse time.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the advfine package


def code_fingerprint(stage: str) -> str:
    """A short hash of the advfine code the job of rule ``stage`` runs (see the module docstring)."""
    digest = hashlib.sha256()
    for module in sorted(stage_modules(stage)):
        digest.update(f"{module}\n{_read_module(_module_path(module), module)[1]}\n".encode())
    return digest.hexdigest()[:16]


def stage_modules(stage: str) -> set[str]:
    """The advfine modules the job of rule ``stage`` imports: its entry points, and what they import."""
    found: set[str] = set()
    pending = sorted(_with_packages("advfine.pipeline.job") | _with_packages(f"advfine.stages.{stage}"))
    while pending:
        module = pending.pop()
        if module not in found:
            found.add(module)
            pending += _read_module(_module_path(module), module)[0]
    return found


def _module_path(module: str) -> Path:
    """``advfine.stages.train_base`` -> <package>/stages/train_base.py (a package: its __init__.py)."""
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(name: str) -> bool:
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


@lru_cache(maxsize=None)
def _read_module(path: Path, module: str) -> tuple[tuple[str, ...], str]:
    """The advfine modules that the file ``path`` (module ``module``; "" for a script) imports, with the
    packages above each (importing a module runs their __init__), and its code without comments,
    docstrings and layout."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # "from advfine.stages import train_base" imports the module advfine.stages.train_base
            names += [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # the docstring
    modules = set()
    for name in names:
        if name.split(".")[0] == "advfine":
            modules |= _with_packages(name)
    return tuple(sorted(modules)), ast.unparse(tree)


def _with_packages(module: str) -> set[str]:
    """``advfine.stages.qat`` and the packages above it (importing a module runs their __init__)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
