# The experiment config, wildcard constraints, input functions and target lists. Every name (stages,
# compression labels, tables, figures) comes from advfine.pipeline.vocab, the package's vocabulary; every node's
# identity and paths from advfine.pipeline.nodes.Node.
import os
import re

from snakemake.settings.types import DeploymentMethod

# The workflow and its jobs run the installed advfine package (`make install` installs this checkout's).
try:
    from advfine.pipeline import vocab
except ModuleNotFoundError as err:
    if err.name != "advfine":
        raise
    raise ModuleNotFoundError(
        "the advfine package is not installed in this Python environment: run `make install`, "
        "or `pip install -e .` in the repository"
    ) from None

# Under --software-deployment-method conda the jobs run in envs/advfine.yaml's environment, which holds
# the dependencies but not this workflow's package (a conda env file cannot name a local path): the jobs
# import it from the package that this Snakemake process runs.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    os.environ.update(
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(vocab.__file__)))
    )

from advfine.pipeline import nodes
from advfine.pipeline.nodes import Node
from advfine.pipeline.config import (
    ConfigError,
    check_device,
    resolve_config,
    stage_config,
    write_resolved_config,
)

# Every rule's param `code` (advfine.pipeline.fingerprint) hashes the package code its job runs: a code change reruns
# the stage (`snakemake -n` says "Params have changed"), a comment or docstring edit does not.
from advfine.pipeline.fingerprint import code_fingerprint

# The config of this run (advfine.pipeline.config.resolve_config): the --configfile files, each a complete
# experiment or an overlay after the base it names (`extends:`), else config.yaml of the working
# directory; then the --config overrides; validated, with the schema's defaults. It replaces what
# Snakemake merged, so a key no file sets comes from the schema, never from another experiment. Jobs
# that parse the workflow again (cluster jobs) get the same files and overrides, so the same config.
try:
    resolved = resolve_config(
        workflow.overwrite_configfiles,
        workflow.config_settings.config,
        workflow.basedir,
    )
except ConfigError as err:
    raise ValueError(str(err)) from None
config.clear()
config.update(resolved)


# Jobs that run on this machine use its devices: refuse a `device` it lacks before the first job. On a
# cluster each job checks its node's devices when it starts (advfine.core.runtime.resolve_device).
onstart:
    if workflow.local_exec:
        check_device(config["device"])


# A cluster group job's request is computed with the run's --resources as limits (profiles/slurm: one
# GPU, so its members run one after another), but Snakemake does not pass --resources to the Snakemake
# processes that run the group inside its job: without them they would plan the members anew, ask srun
# for a GPU per member at once and fail. The main process hands the limits on through the environment
# (sbatch and srun pass it on), and those processes take them. The executor is not known yet when this
# file is read; a local run spawns no such process, so the variable is set there too, unused.
GROUP_LIMITS = "ADVFINE_GROUP_RESOURCES"
if workflow.is_main_process:
    os.environ[GROUP_LIMITS] = ",".join(
        f"{name}={res.value}"
        for name, res in workflow.global_resources.items()
        if not name.startswith("_") and isinstance(res.value, int)
    )
else:
    for limit in filter(None, os.environ.get(GROUP_LIMITS, "").split(",")):
        name, _, value = limit.partition("=")
        workflow.register_resource(name, int(value))


EXPERIMENT = config["experiment"]
DATASET = config["data"]["name"]
SWEEP = config["sweep"]
DATA = nodes.DATA
RESULTS = f"results/{EXPERIMENT}"
RESOLVED = f"{RESULTS}/{vocab.RESOLVED_CONFIG}"


wildcard_constraints:
    **vocab.WILDCARDS,


def rule_resources(rule_name):
    """Snakemake resources of ``rule_name`` from config key ``resources``: its group (compute or light),
    then the rule's own overrides under ``resources.rules``; no GPU for the stages that run on the CPU;
    a SLURM node of its own (sbatch --exclusive, unless resources.rules sets slurm_extra) for the stages
    that time models.
    """
    res = config["resources"]
    group = "compute" if rule_name in vocab.COMPUTE_STAGES else "light"
    resources = res[group] | res["rules"].get(rule_name, {})
    if rule_name in vocab.EXCLUSIVE_STAGES:
        resources = {"slurm_extra": "--exclusive"} | resources
    return resources | {"gpu": 0} if rule_name in vocab.CPU_STAGES else resources


def exclusive_threads():
    """Threads for a job that must run alone. Locally every core Snakemake has (--cores), so its
    scheduler, which never runs jobs whose threads add up to more, starts nothing beside it. On a
    cluster, where the job asks for a node of its own, the threads it times with."""
    if workflow.local_exec and workflow._cores is not None:
        return workflow.cores
    return config["deployment"]["threads"]


def model_files(folder):
    """A checkpoint's files in ``folder`` (a path template of advfine.pipeline.nodes), by the names the scripts read."""
    return {"model": f"{folder}/{nodes.MODEL}", "metrics": f"{folder}/{nodes.METRICS}"}


def train_base_input(wildcards):
    """train_base reads the prepared data, and a user's pretrained checkpoint when one is set."""
    inputs = {"data": Node.from_wildcards(wildcards).data}
    if config["model"]["pretrained"]:
        inputs["pretrained"] = config["model"]["pretrained"]
    return inputs


def qat_input(wildcards):
    """QAT from the trained base model reads it; QAT from scratch needs only the data."""
    node = Node.from_wildcards(wildcards)
    inputs = {"data": node.data}
    if config["qat"]["init"] == "parent":
        inputs |= node.parent().model_files()
    return inputs


def finetune_input(wildcards):
    """The checkpoint a fine-tuning job starts from: the compressed model, or the base model."""
    return Node.from_wildcards(wildcards).parent().model_files()


def evaluate_input(wildcards):
    """The checkpoint an evaluation measures: the node's own."""
    return Node.from_wildcards(wildcards).model_files()


TABLE5_MODELS = vocab.table5_models(
    config["report"]["prune_sparsity"], config["report"]["ptq_bits"]
)


def is_table5_model(wildcards):
    """Whether the evaluated node is one of Table 5's models (its evaluation measures a robustness curve)."""
    node = Node.from_wildcards(wildcards)
    return (node.train, node.compression, node.finetune) in TABLE5_MODELS


def eval_targets():
    """Every eval.json of the sweep."""
    return [node.eval for node in nodes.sweep_nodes(config)]


def model_targets():
    """The checkpoint of every eval.json of the sweep, in eval_targets' order."""
    return [node.model for node in nodes.sweep_nodes(config)]


def sample_targets():
    """Every samples.csv of the sweep (beside its eval.json)."""
    return [node.samples for node in nodes.sweep_nodes(config)]


TABLES = vocab.table_names(DATASET)
FIGURES = vocab.plot_figure_names(with_qat=bool(SWEEP["qat_bits"]))


def table_targets():
    return [f"{RESULTS}/{vocab.ALL_METRICS}"] + [
        f"{RESULTS}/tables/{t}.{ext}" for t in TABLES for ext in vocab.TABLE_FORMATS
    ]


def figure_targets():
    names = FIGURES + ([vocab.FIGURE2] if config["figure2"]["enabled"] else [])
    return [
        f"{RESULTS}/figures/{f}.{ext}" for f in names for ext in vocab.FIGURE_FORMATS
    ]


def figure2_input(wildcards):
    """The models of Figure 2's three pairs (vocab.FIGURE2_MODELS), first seed, at the report's
    compression levels, and the prepared data."""
    models = nodes.figure2_nodes(config, wildcards.experiment)
    inputs = {"data": next(iter(models.values())).data}
    return inputs | {name: node.model for name, node in models.items()}


def caption(stem):
    """The report caption of a table or figure: workflow/report/<stem>.rst, with the table's number
    left out (CIFAR-10's Tables 4 and 6 are Fashion-MNIST's Tables 3 and 5)."""
    name = re.sub(r"^table\d+_", "table_", stem)
    return f"../report/{name}.rst"


def in_report(path, stem, category):
    """``path`` marked for ``snakemake --report``, with the caption of ``stem``."""
    return report(path, caption=caption(stem), category=category)


def table_outputs():
    """Every table file of the aggregate rule; the HTML versions go into the report (it shows HTML
    pages, and offers CSV files only as downloads)."""
    folder = "results/{experiment}/tables"
    shown = [in_report(f"{folder}/{t}.html", t, "Tables") for t in TABLES]
    formats = [ext for ext in vocab.TABLE_FORMATS if ext != "html"]
    return shown + [f"{folder}/{t}.{ext}" for t in TABLES for ext in formats]
