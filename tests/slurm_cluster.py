"""A real, throwaway single-node Slurm cluster (with a fake GPU) for tests.

    with SlurmCluster(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wait", ...], env=cluster.env, check=True)

Config, munge key, state, logs and pid files live in `workdir`; only the unix sockets
(munge's, and slurmd's spool where job steps put theirs) go to a short /tmp/slurmtest-*
dir, removed on exit, as socket paths are limited to 108 bytes. Nothing in /etc or /run is
touched, so an existing Slurm or munge setup is left alone: munged gets its own key and
socket, clients find the cluster through SLURM_CONF (in `.env`), daemons through `-f`, and
ports are picked free at start. All daemons run as root (slurmd must anyway), so a 0700
pytest tmp_path works. Install Slurm with tests/slurm/install_slurm.sh.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_SBIN_PATH = "/usr/sbin:/sbin:" + os.environ.get("PATH", "/usr/bin:/bin")
_NODE = "localhost"  # NodeName=localhost NodeHostname=localhost: independent of `hostname`
_FAKE_GPU_FILES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
_CLIENTS = ("sbatch", "srun", "salloc", "squeue", "sinfo", "scancel", "scontrol", "sacct", "sstat")


def _bin(name: str) -> str | None:
    return shutil.which(name, path=_SBIN_PATH)  # daemons are in /usr/sbin


def slurm_unavailable_reason() -> str | None:
    """None if a cluster can be started here, else why not (for pytest.skip)."""
    missing = [b for b in ("sbatch", "sinfo", "squeue", "scancel", "slurmctld", "slurmd", "munged")
               if _bin(b) is None]
    if missing:
        return (f"Slurm binaries not installed ({', '.join(missing)} missing; "
                "run tests/slurm/install_slurm.sh as root)")
    if os.geteuid() != 0:
        return "not root: slurmd must run as root"
    return None


def skip_or_fail_without_slurm() -> None:
    """pytest.skip with the reason when no cluster can be started here; pytest.fail instead when
    ADVFINE_REQUIRE_SLURM=1 (CI sets it: there the Slurm tests must run)."""
    import pytest

    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("ADVFINE_REQUIRE_SLURM") == "1":
        pytest.fail(f"ADVFINE_REQUIRE_SLURM=1 but Slurm cannot be started: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:  # a killed daemon is re-parented to PID 1 and may linger as a zombie: count it dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def _pid_in(pidfile: Path) -> int | None:
    """The pid written in ``pidfile``, or None while it is missing or still empty."""
    try:
        words = pidfile.read_text().split()
    except FileNotFoundError:
        return None
    return int(words[0]) if words and words[0].isdigit() else None


class SlurmCluster:
    def __init__(self, workdir: Path, cpus: int = 2, gpus: int = 1, timeout: float = 60.0):
        if gpus > len(_FAKE_GPU_FILES):
            raise ValueError(f"at most {len(_FAKE_GPU_FILES)} fake GPUs")
        self.workdir, self.cpus, self.gpus, self.timeout = Path(workdir).resolve(), cpus, gpus, timeout
        self.conf = self.workdir / "slurm.conf"
        self.logdir = self.workdir / "log"
        # bin/ wrappers re-set SLURM_CONF: snakemake-executor-plugin-slurm-jobstep (0.6.1)
        # drops every SLURM_* variable, SLURM_CONF included, before its nested `srun`
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=f"{self.workdir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.pids: dict[str, int] = {}  # daemon name -> pid, in start order
        self.sockdir: Path | None = None  # short dir for unix sockets, made on start

    # -- configuration ---------------------------------------------------------------
    def _write_config(self) -> None:
        w, s = self.workdir, self.sockdir
        for sub in ("state", "run", "log", "munge", "bin"):
            (w / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in filter(_bin, _CLIENTS):
            (w / "bin" / name).write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_bin(name)} "$@"\n')
            (w / "bin" / name).chmod(0o755)
        (s / "spool").mkdir()
        key = w / "munge" / "munge.key"  # fresh random key, private to this cluster
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(f"""\
ClusterName=testcluster
SlurmctldHost={_NODE}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={s}/munge.sock
StateSaveLocation={w}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd.pid
SlurmctldLogFile={self.logdir}/slurmctld.log
SlurmdLogFile={self.logdir}/slurmd.log
# no cgroups (containers), no accounting database
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
MailProg=/bin/true
# keep finished jobs visible to squeue for 5 min (the snakemake plugin polls squeue)
MinJobAge=300
KillWait=2
ReturnToService=2
# trust the CPUs/memory below rather than the probed hardware
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={_NODE} NodeHostname={_NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb}{gres} State=UNKNOWN
PartitionName=debug Nodes={_NODE} Default=YES MaxTime=INFINITE State=UP
""")
        # gres.conf is read from the directory of slurm.conf; device files are stand-ins
        files = "\n".join(f"NodeName={_NODE} Name=gpu File={f}" for f in _FAKE_GPU_FILES[:self.gpus])
        (w / "gres.conf").write_text(f"AutoDetect=off\n{files}\n")

    # -- daemons ---------------------------------------------------------------------
    def _start(self, name: str, args: list[str], pidfile: Path) -> None:
        """Run a self-daemonizing daemon, then take its pid from its pid file."""
        with open(self.logdir / f"{name}.stderr", "ab") as err:
            rc = subprocess.run([_bin(name), *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, timeout=30, start_new_session=True).returncode
        deadline = time.monotonic() + 10
        # the daemon creates its pid file before it writes the pid: wait for the number, not the file
        while not _pid_in(pidfile) and rc == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if rc != 0 or not _pid_in(pidfile):
            raise RuntimeError(f"{name} failed to start (exit {rc})\n{self.log_tails()}")
        self.pids[name] = _pid_in(pidfile)

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for f in sorted(self.logdir.glob("*")) + sorted((self.workdir / "munge").glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {f.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def _wait_idle(self) -> None:
        deadline, state = time.monotonic() + self.timeout, ""
        while time.monotonic() < deadline:
            dead = [n for n, p in self.pids.items() if not _alive(p)]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} died during startup\n{self.log_tails()}")
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env,
                               capture_output=True, text=True, timeout=30)
            state = r.stdout.strip() or r.stderr.strip()
            if r.returncode == 0 and state == "idle":  # "idle*" would mean not responding
                return
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {self.timeout:.0f} s (last: {state!r})\n"
                           f"{self.log_tails()}")

    def __enter__(self) -> "SlurmCluster":
        w = self.workdir
        self.sockdir = Path(tempfile.mkdtemp(prefix="slurmtest-", dir="/tmp"))
        self.sockdir.chmod(0o755)  # munged wants its socket dir searchable by all
        try:
            self._write_config()
            self._start("munged", [f"--socket={self.sockdir}/munge.sock",
                                   f"--key-file={w}/munge/munge.key", f"--pid-file={w}/munge/munged.pid",
                                   f"--log-file={w}/munge/munged.log", f"--seed-file={w}/munge/munged.seed"],
                        w / "munge" / "munged.pid")
            # -c: no state from an earlier cluster; -i: ignore unreadable state
            self._start("slurmctld", ["-c", "-i", "-f", str(self.conf)], w / "run" / "slurmctld.pid")
            self._start("slurmd", ["-N", _NODE, "-f", str(self.conf)], w / "run" / "slurmd.pid")
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Cancel jobs, stop the daemons by pid, then any leftover job step of this cluster."""
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            try:  # lets slurmd end the jobs' processes itself
                subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env,
                               capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass  # the daemons must be stopped regardless
        _terminate([self.pids[n] for n in ("slurmd", "slurmctld", "munged") if n in self.pids])
        _terminate(self._leftover_pids())
        self.pids.clear()
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None

    def _leftover_pids(self) -> list[int]:
        """slurmstepd and job processes carrying our SLURM_CONF (never this process)."""
        marker, found = f"SLURM_CONF={self.conf}".encode(), []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in (os.getpid(), os.getppid()):
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                pass
        return found
