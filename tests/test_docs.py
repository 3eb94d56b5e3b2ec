"""Every command the README and docs/ show runs as written: a dry run for Snakemake (the real runs are long),
`make -n` for make targets, the real thing for cheap scripts, `--help` for long benchmarks. A doc command
this file does not know how to run fails the test, so a new one cannot slip in untested."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
GENERATED = {REPO / "docs" / "benchmarks.md"}  # written by benchmarks/run_all.py: it quotes its own commands
FENCE = re.compile(r"^[ \t]*```(?:bash|sh|console)\n(.*?)^[ \t]*```", re.S | re.M)  # in a list item too
INLINE = re.compile(r"`((?:\.venv/bin/)?snakemake [^`]+|make [a-z-]+|(?:\.venv/bin/python )?benchmarks/[^`\s]+ [^`]+)`")
# Scripts cheap enough to run for real on committed files; the others are benchmarks of minutes to hours,
# run on tiny settings by tests/test_benchmarks.py, and checked here for their arguments' parser.
RUN_FOR_REAL = {"benchmarks/reproduction_summary.py", "benchmarks/slurm_groups.py"}


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every shell line in a bash block and every inline command of the docs."""
    found = []
    for path in DOCS:
        if path in GENERATED:
            continue
        text = path.read_text()
        for block in FENCE.findall(text):
            for line in block.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    found.append((path.relative_to(REPO).as_posix(), line))
        for command in INLINE.findall(text.replace("\n", " ")):
            found.append((path.relative_to(REPO).as_posix(), " ".join(command.split())))
    return sorted(set(found))


def snakemake_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run(argv, cwd=REPO, timeout=300, env=None):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def check(command: str, request) -> None:
    words = shlex.split(command)
    env = dict(os.environ)
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before a command: its environment
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    tool, args = words[0], words[1:]
    if tool in ("snakemake", ".venv/bin/snakemake"):
        if "--report" in args:  # needs a finished run: the tiny one, as written otherwise
            finished_run = request.getfixturevalue("finished_run")
            result = run(snakemake_argv(["-s", str(REPO / "Snakefile"), "--directory", str(finished_run), *args]),
                         cwd=finished_run, timeout=600, env=env)
        elif "--lint" in args or "--unlock" in args:
            result = run(snakemake_argv(args), env=env)
        else:
            result = run(snakemake_argv([*args, "-n"]), env=env)
    elif tool == "make":
        result = run(["make", "-n", *args], env=env)
    else:
        if tool in ("python", ".venv/bin/python"):
            tool, args = args[0], args[1:]
        script = REPO / tool
        assert script.exists(), f"{command}: {tool} does not exist"
        if any(a.startswith("<") for a in args):  # a placeholder the reader fills in
            result = run(["bash", "-n", str(script)] if script.suffix == ".sh" else [sys.executable, str(script), "--help"],
                         env=env)
        elif tool in RUN_FOR_REAL:
            result = run([sys.executable, str(script), *args], env=env)
        else:
            for arg in args:  # paths a reader already has (results/ is what a run makes)
                if "/" in arg and not arg.startswith(("-", "results/")):
                    assert (REPO / arg).exists(), f"{command}: {arg} does not exist"
            result = run([sys.executable, str(script), *args, "--help"], env=env)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_the_docs_show_commands():
    commands = [c for _, c in doc_commands()]
    assert "make run" in commands and "make test" in commands
    assert any("resolved_config" in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("where,command", doc_commands())
def test_every_command_in_the_docs_runs_as_written(where, command, request):
    check(command, request)


def commented_commands() -> list[tuple[str, str]]:
    """Snakemake commands in the comments of the Snakefile, the rules, the configs and the profiles."""
    files = [REPO / "Snakefile", *REPO.glob("workflow/**/*.smk"), *REPO.glob("configs/**/*.yaml"),
             *REPO.glob("profiles/**/*.yaml"), REPO / "config.yaml"]
    found = []
    for path in files:
        for line in path.read_text().splitlines():
            match = re.match(r"^\s*#\s+((?:\.venv/bin/)?snakemake .*?)(?:\s+#.*)?$", line)
            if match:
                found.append((path.relative_to(REPO).as_posix(), match.group(1).replace("\\", "").strip()))
    return found


def test_the_target_comes_before_options_that_take_several_values():
    """`--resources`, `--configfile` and `--config` take several values, so a target after them is read as one
    more value (`snakemake --cores 4 --resources gpu=1 all_tables` crashes)."""
    targets = ("all", "all_tables", "all_figures", "resolved_config")
    for where, command in doc_commands() + commented_commands():
        words = shlex.split(command.replace("[", "").replace("]", ""))
        if words[0] not in ("snakemake", ".venv/bin/snakemake"):
            continue
        for i, word in enumerate(words):
            if word in ("--resources", "--configfile", "--config"):
                after = [w for w in words[i + 1:] if not w.startswith("-")]
                assert not set(after) & set(targets), f"{where}: {command}"
