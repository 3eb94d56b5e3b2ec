"""The house rules: one name per stage end to end, a package in one-way layers (core, pipeline, report,
stages), no import cycle, imports at the top of modules (a deferred import says why), and a vocabulary the
Snakefile can import without torch."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

import pytest
import yaml

from advfine.pipeline import vocab
from advfine.pipeline.config import STAGE_SECTIONS, load_schema

from conftest import REPO

PACKAGE = REPO / "src" / "advfine"
MODULES = sorted(PACKAGE.rglob("*.py"))
# The package's layers, bottom up: each imports only from itself and the layers below it.
LAYERS = ("core", "pipeline", "report", "stages")


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path, text: str | None = None) -> list[tuple[str, ast.AST, bool]]:
    """(imported advfine module, node, at module level) for every import of the package in ``path`` (whose
    source is ``text`` when given)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text() if text is None else text)
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            if base.startswith("advfine"):
                # "from . import x" and "from .pkg import mod" may name modules themselves
                targets = [f"{base}.{alias.name}" for alias in node.names
                           if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                           or (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).is_dir()] or [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.startswith("advfine")]
        found += [(target, node, id(node) in top_level) for target in targets]
    return found


def layer_of(module: str) -> str | None:
    """``advfine.core.attacks.pgd`` -> "core"; the package's own __init__ belongs to no layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_layer():
    assert {module_name(p) for p in MODULES if layer_of(module_name(p)) not in LAYERS} == {"advfine"}


def test_the_layers_import_one_way():
    """The core (pure torch: attacks, models, compression, training, evaluation) imports nothing from the
    pipeline (config, vocabulary, nodes, records), the report or the stages; the pipeline nothing from the
    report or the stages; the report nothing from the stages. Deferred imports count too."""
    upward = []
    for path in MODULES:
        layer = layer_of(module_name(path))
        allowed = set(LAYERS[: LAYERS.index(layer) + 1]) if layer in LAYERS else set()
        upward += [f"{module_name(path)}:{node.lineno} imports {target}" for target, node, _ in package_imports(path)
                   if layer_of(target) is not None and layer_of(target) not in allowed]
    assert upward == []


def test_the_layering_test_sees_an_upward_import():
    """A core module importing the pipeline or the report is caught, however it spells the import."""
    probe = PACKAGE / "core" / "probe.py"
    for text in ("from advfine.pipeline.vocab import ATTACKS\n", "from ..pipeline import vocab\n",
                 "def f():\n    import advfine.report.render\n"):
        targets = [t for t, _, _ in package_imports(probe, text)]
        assert any(layer_of(t) in ("pipeline", "report") for t in targets), (text, targets)


def test_the_package_has_no_import_cycle():
    """Deferred (function-level) imports count too: a cycle hidden in a function is still a cycle."""
    graph = {module_name(p): {target for target, _, _ in package_imports(p) if target != module_name(p)}
             for p in MODULES}
    graph = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    # pure I/O below the models; checkpoints of whole models above models and compression
    assert order.index("advfine.core.files") < order.index("advfine.core.models") < order.index("advfine.core.quantize")
    assert order.index("advfine.core.quantize") < order.index("advfine.pipeline.checkpoints")
    assert order.index("advfine.core.prune") < order.index("advfine.stages.compress")


def test_every_module_imports_in_one_fresh_interpreter_in_dependency_order():
    names = [module_name(p) for p in MODULES]
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\n" % names
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]


def test_imports_are_at_the_top_unless_deferred_on_purpose():
    """An import inside a function must say why, in a comment starting with "deferred:" on the line
    before it (or the line before its block of imports)."""
    unexplained = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        # imports for type annotations only (under "if TYPE_CHECKING:") are module-level too
        top_level |= {id(inner) for node in tree.body if isinstance(node, ast.If)
                      and getattr(node.test, "id", None) == "TYPE_CHECKING" for inner in node.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level:
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    continue
                above = [line.strip() for line in lines[max(0, node.lineno - 4): node.lineno - 1]]
                same = lines[node.lineno - 1]
                if not any("deferred:" in line for line in above + [same]):
                    unexplained.append(f"{module_name(path)}:{node.lineno}: {same.strip()}")
    assert unexplained == []


def test_the_vocabulary_nodes_and_config_import_without_torch():
    """The Snakefile imports them at parse time, and every job parses the workflow."""
    code = ("import sys\nfrom advfine.pipeline import config, fingerprint, nodes, run_health, vocab\n"
            "[fingerprint.code_fingerprint(stage) for stage in vocab.STAGES]\n"
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("stage", vocab.STAGES)
def test_one_name_per_stage_from_rule_to_code(stage):
    """Rule <stage> lives in workflow/rules/<stage>.smk, reads config slice <stage>, logs to <stage>.log,
    runs workflow/scripts/<stage>.py, which calls advfine.stages.<stage>.run."""
    rule_file = REPO / "workflow" / "rules" / f"{stage}.smk"
    text = rule_file.read_text()
    assert re.findall(r"^rule (\w+):", text, flags=re.M) == [stage]
    assert f'stage_config(config, "{stage}")' in text
    assert f'code=code_fingerprint("{stage}")' in text  # the cache follows the code (advfine.pipeline.fingerprint)
    assert f'rule_resources("{stage}")' in text
    log = re.search(r"^    log:\n\s+(.+)$", text, flags=re.M).group(1)
    assert log.rstrip(",").strip("f\"'").endswith(f"/{stage}.log")
    assert f'"../scripts/{stage}.py"' in text
    script = (REPO / "workflow" / "scripts" / f"{stage}.py").read_text()
    assert f"from advfine.stages import {stage}\n" in script and f"{stage}.run(" in script
    module = __import__(f"advfine.stages.{stage}", fromlist=["run"])
    assert callable(module.run)
    assert stage in STAGE_SECTIONS
    rules_enum = load_schema()["properties"]["resources"]["properties"]["rules"]["propertyNames"]["enum"]
    assert stage in rules_enum


def test_the_workflow_holds_exactly_the_stages():
    rule_files = {p.stem for p in (REPO / "workflow" / "rules").glob("*.smk")}
    assert rule_files == set(vocab.STAGES) | {"common"}
    scripts = {p.stem for p in (REPO / "workflow" / "scripts").glob("*.py")}
    assert scripts == set(vocab.STAGES)
    modules = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "common"}
    assert modules == set(vocab.STAGES)
    snakefile = (REPO / "Snakefile").read_text()
    included = re.findall(r'^include: "workflow/rules/(\w+)\.smk"', snakefile, flags=re.M)
    assert included == ["common", *vocab.STAGES]


def test_every_figure_and_table_has_a_report_caption():
    captions = {p.stem for p in (REPO / "workflow" / "report").glob("*.rst")}
    stems = {re.sub(r"^table\d+_", "table_", t) for d in ("digits", "cifar10") for t in vocab.table_names(d)}
    figures = set(vocab.plot_figure_names(with_qat=True)) | {vocab.FIGURE2}
    assert stems | figures | {"all_metrics", "workflow"} == captions


def test_the_shipped_configs_use_the_stage_names():
    for path in [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]:
        cfg = yaml.safe_load(path.read_text())
        for section in ("qat", "figure2"):
            assert section not in cfg.get("compress", {}) and section not in cfg.get("report", {}), path


# Distributions the run time needs without importing them by name: nni's dependency analysis (pruning) imports
# torch.utils.tensorboard, which needs tensorboard, undeclared by nni; pandas' to_markdown (the tables) needs
# tabulate, an optional dependency of pandas; the Slurm profile (profiles/slurm) needs snakemake's executor plugin.
NEEDED_WITHOUT_IMPORT = {"tensorboard", "tabulate", "snakemake-executor-plugin-slurm"}
# Imported at run time where installed, optional (the import guarded, a missing one recorded): extra -> import names.
OPTIONAL_AT_RUN_TIME = {"energy": {"zeus"}}


def imported_top_level_names(paths) -> set[str]:
    """The top-level names of every absolute import in ``paths`` (deferred imports too)."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.partition(".")[0])
    return names


def test_every_distribution_imported_at_run_time_is_declared():
    """What the package and the workflow's scripts import (outside the standard library) is a declared runtime
    dependency of pyproject.toml (so of requirements.txt): a working ``pip install .``."""
    import tomllib
    from importlib.metadata import packages_distributions

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {canonical(re.split(r"[=<>!~;\[ ]", dep)[0])
                for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    names = imported_top_level_names(MODULES + sorted((REPO / "workflow" / "scripts").glob("*.py")))
    third_party = names - set(sys.stdlib_module_names) - {"advfine"}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, optional in OPTIONAL_AT_RUN_TIME.items():
        assert {canonical(re.split(r"[=<>!~;\[ ]", dep)[0]) for dep in extras[extra]} >= optional, extra
        third_party -= optional
    providers = packages_distributions()
    missing = {name: providers.get(name) for name in third_party
               if not providers.get(name) or not {canonical(d) for d in providers[name]} & declared}
    assert missing == {}, f"imported but not declared in pyproject.toml (import name: distributions): {missing}"
    assert {canonical(d) for d in NEEDED_WITHOUT_IMPORT} <= declared
    assert {"torchattacks", "scipy"} <= third_party  # the walk sees deferred imports and direct ones
