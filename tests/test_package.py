"""advfine is an installable package: its files ship with it, an installed copy outside the repository finds
everything it reads, and the workflow and benchmarks import it instead of editing sys.path."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

from advfine.pipeline import vocab
from advfine.pipeline.config import SCHEMA_PATH
from advfine.pipeline.fingerprint import code_fingerprint

from conftest import REPO

PACKAGE = REPO / "src" / "advfine"
SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)\b|sys\.path\s*\+?=[^=]")


def test_no_sys_path_edits_in_the_package_the_workflow_or_the_benchmarks():
    files = [REPO / "Snakefile", *PACKAGE.rglob("*.py"), *(REPO / "workflow").rglob("*.py"),
             *(REPO / "workflow").rglob("*.smk"), *(REPO / "benchmarks").rglob("*.py")]
    edits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert edits == []


def test_every_file_of_the_package_that_is_not_python_is_package_data():
    """setuptools installs only modules and declared package data: anything else would be missing from an
    installed copy (as the config schema once was)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["advfine"]
    data = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*")
                  if path.is_file() and path.suffix not in (".py", ".pyc"))
    assert data == sorted(declared) and "pipeline/config.schema.yaml" in data


def test_the_workflow_schema_is_the_package_schema():
    """workflow/schemas/ (where Snakemake workflows keep their schema) links to the one the package reads."""
    link = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert link.is_symlink() and link.resolve() == SCHEMA_PATH.resolve() == (PACKAGE / "pipeline" / "config.schema.yaml")


def test_the_citation_names_this_version():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["title"] == "advfine"
    assert citation["version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert citation["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")


# Run by the installed copy, from a folder outside the repository: the package and its data, the schema's
# validation of the default config, the code fingerprints (of the copy's own files), and no git commit
# claimed for a copy that belongs to no checkout.
INSTALLED_CHECK = """
import json, sys
from pathlib import Path
import yaml
import advfine
from advfine.pipeline import vocab
from advfine.pipeline.config import load_schema, validate_config
from advfine.pipeline.fingerprint import code_fingerprint
from advfine.pipeline.provenance import git_commit
load_schema()
validate_config(yaml.safe_load(Path(sys.argv[1]).read_text()))
print(json.dumps({"file": advfine.__file__, "commit": git_commit(),
                  "fingerprints": {stage: code_fingerprint(stage) for stage in vocab.STAGES}}))
"""


def test_an_installed_copy_outside_the_repository_finds_everything_it_needs(tmp_path):
    """pip installs the package (no dependencies: the environment's) into a folder of its own; a Python with
    only that folder and the environment's packages on its path imports it from there, and it works. The
    workflow, run on that copy, plans the default experiment."""
    source, target, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    # what a source distribution holds (pip builds in the source tree: a copy keeps the checkout clean)
    shutil.copytree(PACKAGE, source / "src" / "advfine", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "advfine" / "pipeline" / "config.schema.yaml").is_file()

    elsewhere.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    check = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, str(REPO / "config.yaml")], cwd=elsewhere,
                           capture_output=True, text=True, timeout=300, env=env)
    assert check.returncode == 0, check.stderr[-3000:]
    installed = json.loads(check.stdout.splitlines()[-1])
    assert installed["file"] == str(target / "advfine" / "__init__.py")
    assert installed["commit"] == "unknown"
    assert installed["fingerprints"] == {stage: code_fingerprint(stage) for stage in vocab.STAGES}  # same code

    shutil.copy(REPO / "config.yaml", elsewhere / "config.yaml")
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "all", "-n",
                              "--cores", "1"], cwd=elsewhere, capture_output=True, text=True, timeout=600, env=env)
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    assert re.search(r"^total\s+\d+$", dry_run.stdout, flags=re.M), dry_run.stdout[-2000:]
