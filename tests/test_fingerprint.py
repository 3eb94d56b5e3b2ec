"""The cache follows the code: each rule's param ``code`` (advfine.pipeline.fingerprint) changes when the package
code its job runs changes, and not when a comment or docstring does."""
import ast
import importlib.util
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from advfine.pipeline import vocab
from advfine.pipeline.fingerprint import code_fingerprint, stage_modules

from conftest import REPO, tiny_config
from test_workflow import snakemake


def copy_of_the_code(root):
    """The package, src/advfine, under ``root``."""
    shutil.copytree(REPO / "src" / "advfine", root / "src" / "advfine", ignore=shutil.ignore_patterns("__pycache__"))


def fingerprints(root) -> dict:
    """Every stage's fingerprint of the code under ``root``, by the copy's own fingerprint module, loaded
    afresh (as a new Snakemake process would)."""
    module = load_fingerprint_module(root)
    return {stage: module.code_fingerprint(stage) for stage in vocab.STAGES}


def edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


TRAINING = ("train_base", "qat", "finetune")


def test_a_comment_or_docstring_edit_keeps_every_fingerprint(tmp_path):
    copy_of_the_code(tmp_path)
    before = fingerprints(tmp_path)
    assert before == {stage: code_fingerprint(stage) for stage in vocab.STAGES}  # the copy hashes like the repo
    train = tmp_path / "src" / "advfine" / "core" / "train.py"
    edit(train, '"""', '"""An edited docstring. ')
    edit(train, "\ndef ", "\n# a new comment\n\n\ndef ")
    train.write_text(train.read_text() + "\n# a trailing comment\n")
    assert fingerprints(tmp_path) == before


def test_a_code_edit_changes_the_fingerprint_of_exactly_the_stages_that_import_it(tmp_path):
    copy_of_the_code(tmp_path)
    before = fingerprints(tmp_path)
    train = tmp_path / "src" / "advfine" / "core" / "train.py"
    train.write_text(train.read_text() + "\nEXTRA_STATEMENT = 1\n")
    after = fingerprints(tmp_path)
    changed = {stage for stage in vocab.STAGES if after[stage] != before[stage]}
    assert changed == {stage for stage in vocab.STAGES if "advfine.core.train" in stage_modules(stage)}
    assert set(TRAINING) <= changed and not {"prepare_data", "aggregate", "plot"} & changed
    render = tmp_path / "src" / "advfine" / "report" / "render.py"
    render.write_text(render.read_text() + "\nEXTRA_STATEMENT = 1\n")
    assert {stage for stage in vocab.STAGES if fingerprints(tmp_path)[stage] != after[stage]} == {"aggregate"}


def load_fingerprint_module(root):
    spec = importlib.util.spec_from_file_location("fingerprint_copy", root / "src" / "advfine" / "pipeline" / "fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stage_module_its_deferred_imports_and_the_package_inits_count(tmp_path):
    copy_of_the_code(tmp_path)
    before = fingerprints(tmp_path)
    # a module of the package that plot does not import yet, imported inside a function
    other = sorted(p.stem for p in (REPO / "src" / "advfine" / "core").glob("*.py")
                   if f"advfine.core.{p.stem}" not in stage_modules("plot") and p.stem != "__init__")[0]
    plot = tmp_path / "src" / "advfine" / "stages" / "plot.py"
    plot.write_text(plot.read_text() + f"\n\ndef unused():\n    from ..core import {other}\n")
    after = fingerprints(tmp_path)
    assert {stage for stage in vocab.STAGES if after[stage] != before[stage]} == {"plot"}
    assert f"advfine.core.{other}" in load_fingerprint_module(tmp_path).stage_modules("plot")
    edit(tmp_path / "src" / "advfine" / "stages" / "__init__.py", '"""\n', '"""\nPACKAGE_CONSTANT = 1\n')
    assert all(fingerprints(tmp_path)[stage] != after[stage] for stage in vocab.STAGES)  # all import advfine.stages


@pytest.mark.parametrize("stage", vocab.STAGES)
def test_a_stage_script_imports_only_modules_its_fingerprint_covers(stage):
    """The fingerprint walks from the job's entry points (advfine.pipeline.job, advfine.stages.<stage>), not
    from the script, which is no part of the package: a script importing more would run code the cache
    ignores."""
    tree = ast.parse((REPO / "workflow" / "scripts" / f"{stage}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    advfine_modules = {name for name in imported if name.split(".")[0] == "advfine"}
    assert {"advfine.pipeline.job", "advfine.stages"} <= advfine_modules
    assert advfine_modules <= stage_modules(stage), advfine_modules - stage_modules(stage)


@pytest.mark.slow
@pytest.mark.parametrize("stage", vocab.STAGES)
def test_the_fingerprint_covers_every_advfine_module_a_job_imports(stage):
    """What the ast walk finds is at least what a job's imports load (a fresh interpreter's sys.modules)."""
    code = (f"import sys\nimport advfine.pipeline.job\nfrom advfine.stages import {stage}\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'advfine')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = set(result.stdout.split())
    assert "advfine.pipeline.job" in loaded and loaded <= stage_modules(stage), loaded - stage_modules(stage)


def planned_rules(result) -> dict:
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M)}


@pytest.mark.slow
def test_editing_the_package_reruns_the_stages_that_run_it(tmp_path):
    """A copy of the repository runs the tiny workflow (f_st only, no compression); a code change in a
    module train_base imports plans train_base and everything downstream (Snakemake tracks only the
    script file), a comment or docstring edit plans nothing, and `snakemake --touch` accepts a change."""
    repo, work = tmp_path / "repo", tmp_path / "work"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv", "results", "logs", ".snakemake",
                                                              "data", "docs", "__pycache__", ".pytest_cache"))
    work.mkdir()
    sweep = {"sweep.base_models": ["st"], "sweep.prune_sparsities": [], "sweep.ptq_bits": [],
             "sweep.finetune": ["none"], "sweep.dense_finetune": []}
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(**sweep)))
    run = snakemake(work, "all", snakefile=repo / "Snakefile")
    assert run.returncode == 0, run.stderr[-3000:]

    train = repo / "src" / "advfine" / "core" / "train.py"
    original = train.read_text()
    train.write_text(original + "\nEXTRA_STATEMENT = 1\n")
    planned = snakemake(work, "all", "-n", snakefile=repo / "Snakefile")
    assert planned.returncode == 0, planned.stderr[-3000:]
    # deployment times every model, so a retrained one is timed again
    assert planned_rules(planned) == {"train_base": 1, "evaluate": 1, "deployment": 1, "aggregate": 1, "plot": 1,
                                      "all": 1, "total": 6}
    assert re.search(r"rule train_base:\n(?:\s+\w+: .*\n)*?\s+reason: Params have changed", planned.stdout)

    train.write_text('"""An edited docstring."""\n# a comment\n' + original.partition('"""')[2].partition('"""')[2])
    unchanged = snakemake(work, "all", "-n", snakefile=repo / "Snakefile")
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr, unchanged.stdout[-3000:]

    train.write_text(original + "\nEXTRA_STATEMENT = 1\n")
    assert snakemake(work, "all", "--touch", snakefile=repo / "Snakefile").returncode == 0
    accepted = snakemake(work, "all", "-n", snakefile=repo / "Snakefile")
    assert "Nothing to be done" in accepted.stdout + accepted.stderr, accepted.stdout[-3000:]
