"""A local standalone Flink cluster with Beam's job server and a Python SDK worker pool, on loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from inotify_simple import INotify, flags

import config
from engine import install

HOST = "127.0.0.1"
PORT_FIELDS = ("rest_port", "rpc_port", "job_port", "artifact_port", "expansion_port", "worker_pool_port")


class ClusterError(RuntimeError):
    """The cluster could not start or answer; the message names the process and its log."""


@dataclasses.dataclass
class ClusterSpec:
    """Where the cluster keeps its state and logs, and the loopback ports it listens on.

    Each process listens on exactly the port it is given, so `status`, `petseg run`'s `beam.*` settings
    and the user know every address without asking the cluster.
    """

    state_dir: str = ""
    rest_port: int = 8081
    rpc_port: int = 6123
    job_port: int = 8099
    artifact_port: int = 8098
    expansion_port: int = 8097
    worker_pool_port: int = 50000
    taskmanagers: int = 2
    slots_per_taskmanager: int = 1
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "2048m"
    # Flink restarts a failed job this often (e.g. after a TaskManager died) before it fails it.
    restart_attempts: int = 2

    def __post_init__(self):
        ports = {field: getattr(self, field) for field in PORT_FIELDS}
        for field, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(
                    f"{field} {port} is not a port from 1 to 65535: each process of the cluster "
                    "listens on exactly the port it is given"
                )
        shared = [f for f, port in ports.items() if list(ports.values()).count(port) > 1]
        if shared:
            raise ValueError(f"{' and '.join(shared)} are the same port: each process needs its own")

    @property
    def dir(self) -> pathlib.Path:
        return pathlib.Path(self.state_dir or install.tools_dir() / "flink-cluster").resolve()

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def job_endpoint(self) -> str:
        return f"{HOST}:{self.job_port}"

    @property
    def worker_pool(self) -> str:
        return f"{HOST}:{self.worker_pool_port}"


STATE_FILE = "cluster.json"


def up(spec: ClusterSpec, stream=sys.stderr, timeout: float = 300) -> Dict[str, object]:
    """Starts whatever of the cluster is not running: all of it, or only the processes that died.

    A running cluster is left as it is; a dead TaskManager is started again, as a supervisor would,
    so a job that lost it can be restarted by Flink.
    """
    state = read_state(spec.dir)
    if state:
        spec = ClusterSpec(**state["spec"])
        dead = [p["name"] for p in state["processes"] if not _alive(p["pid"])]
        if not dead:
            _say(stream, f"Flink cluster already running ({spec.dir})")
            return state
        _say(stream, f"restarting {', '.join(dead)}")
    else:
        busy = [f"{HOST}:{getattr(spec, field)}" for field in PORT_FIELDS if _port_open(getattr(spec, field))]
        if busy:
            raise ClusterError(
                f"{', '.join(busy)} already in use: stop what listens there, or choose other "
                "ports (petseg flink up --help)"
            )
    logs = spec.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = install.ensure_flink(logs / "install.log")
    jars = install.ensure_job_server(logs / "install.log")
    commands = _commands(spec, home, jars, _write_conf(spec, home), logs)
    if state:
        state["processes"] = [p for p in state["processes"] if p["name"] not in dead]
        names = dead
    else:
        state = {"spec": dataclasses.asdict(spec), "flink_home": str(home), "processes": []}
        names = list(commands)
    deadline = time.monotonic() + timeout
    try:
        with _Wakeups(logs) as wakeups:
            # The JobManager first: a TaskManager that finds its RPC port closed tries again only after
            # cluster.registration.error-delay (10 s). The worker pool with it, for a head start.
            first = [n for n in names if n in ("jobmanager", "worker-pool")]
            for batch, everything in ((first, False), ([n for n in names if n not in first], True)):
                for name in batch:
                    command, env = commands[name]
                    _start(state, spec, name, command, env, logs)
                _wait_ready(spec, state, wakeups, everything, deadline, timeout)
    except BaseException:
        _stop_all(state)
        (spec.dir / STATE_FILE).unlink(missing_ok=True)
        raise
    _say(
        stream,
        f"Flink {install.FLINK_VERSION} up: REST {spec.rest_url}, {spec.taskmanagers} TaskManagers, "
        f"job server {spec.job_endpoint}, SDK worker pool {spec.worker_pool}; logs in {logs}",
    )
    return state


def _commands(
    spec: ClusterSpec, home: pathlib.Path, jars: List[pathlib.Path], conf: pathlib.Path, logs: pathlib.Path
) -> Dict[str, tuple]:
    """Each process of the cluster by name: its command line and environment, in start order."""
    env = dict(os.environ, FLINK_CONF_DIR=str(conf), FLINK_LOG_DIR=str(logs))
    env.pop("FLINK_HOME", None)
    # Beam's runner on the Flink processes' own classpath (Flink's scripts append HADOOP_CLASSPATH), loaded
    # parent-first (config.yaml): Beam keeps a job's SDK workers for beam.environment_cache_millis only
    # when its classes come from Flink's own class loader. Loaded from the job's jars instead, it stops
    # a TaskManager's worker whenever none of its tasks runs a Python stage, and the next stage waits
    # for a new worker to import TensorFlow: 3 to 4 times per job, over a minute each on 2 busy cores.
    # Flink's own jars (flink-dist) and logging stay first.
    runner = [str(j) for j in jars if not j.name.startswith(("flink-", "slf4j-"))]
    flink_env = dict(env, HADOOP_CLASSPATH=os.pathsep.join(runner))
    commands = {"jobmanager": ([str(home / "bin" / "jobmanager.sh"), "start-foreground"], flink_env)}
    for i in range(spec.taskmanagers):
        commands[f"taskmanager-{i + 1}"] = ([str(home / "bin" / "taskmanager.sh"), "start-foreground"], flink_env)
    classpath = os.pathsep.join([str(j) for j in jars] + [str(p) for p in (home / "lib").glob("log4j-*.jar")])
    commands["job-server"] = (
        [
            shutil.which("java") or "java",
            f"-Dlog.file={logs / 'job-server.log'}",
            f"-Dlog4j.configurationFile=file:{conf / 'log4j.properties'}",
            "-cp",
            classpath,
            install.JOB_SERVER_MAIN,
            f"--flink-master={HOST}:{spec.rest_port}",
            f"--flink-conf-dir={conf}",
            f"--job-host={HOST}",
            f"--job-port={spec.job_port}",
            f"--artifact-port={spec.artifact_port}",
            f"--expansion-port={spec.expansion_port}",
            f"--artifacts-dir={spec.dir / 'artifacts'}",
        ],
        env,
    )
    commands["worker-pool"] = (
        [
            sys.executable,
            "-m",
            "engine.worker_pool",
            f"--port={spec.worker_pool_port}",
            f"--spares={spec.taskmanagers * spec.slots_per_taskmanager}",
        ],
        _worker_env(),
    )
    return commands


def status(spec: ClusterSpec) -> Dict[str, object]:
    """What runs: each process with its pid, and the TaskManagers and jobs Flink's REST API reports."""
    state = read_state(spec.dir)
    if not state:
        return {"running": False, "processes": [], "state_dir": str(spec.dir)}
    spec = ClusterSpec(**state["spec"])
    procs = [dict(p, alive=_alive(p["pid"])) for p in state["processes"]]
    report: Dict[str, object] = {
        "running": all(p["alive"] for p in procs),
        "processes": procs,
        "state_dir": str(spec.dir),
        "rest": spec.rest_url,
        "job_endpoint": spec.job_endpoint,
        "worker_pool": spec.worker_pool,
    }
    try:
        report["overview"] = rest_get(spec.rest_url, "/overview")
        report["jobs"] = rest_get(spec.rest_url, "/jobs/overview")["jobs"]
    except ClusterError as exc:
        report["rest_error"] = str(exc)
    report["job_server_listening"] = _port_open(spec.job_port)
    report["worker_pool_listening"] = _port_open(spec.worker_pool_port)
    return report


def down(spec: ClusterSpec, stream=sys.stderr) -> List[int]:
    """Stops every process `up` started (their whole process groups); returns the pids stopped."""
    state = read_state(spec.dir)
    if not state:
        _say(stream, "no Flink cluster is running here")
        return []
    pids = _stop_all(state)
    (spec.dir / STATE_FILE).unlink(missing_ok=True)
    _say(stream, f"Flink cluster stopped ({len(pids)} processes)")
    return pids


def read_state(state_dir: pathlib.Path) -> Optional[Dict[str, object]]:
    path = pathlib.Path(state_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def rest_get(rest_url: str, path: str, timeout: float = 5) -> Dict[str, object]:
    try:
        with urllib.request.urlopen(rest_url + path, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ClusterError(f"Flink REST {rest_url}{path}: {exc}") from exc


def _worker_env() -> Dict[str, str]:
    """The SDK workers the pool spawns run `python` from PATH: ours first, with Keras 2 for TFT/TFMA."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")])
    env[config.KERAS_SWITCH] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(install.PROJECT_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def _write_conf(spec: ClusterSpec, home: pathlib.Path) -> pathlib.Path:
    conf = spec.dir / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    for name in (
        "log4j.properties",
        "log4j-console.properties",
        "log4j-cli.properties",
        "logback.xml",
        "logback-console.xml",
    ):
        if (home / "conf" / name).exists():
            shutil.copy(home / "conf" / name, conf / name)
    java_opts = _java_opts(home)
    tmp = spec.dir / "tmp"
    tmp.mkdir(exist_ok=True)
    # Flink 1.19 reads conf/config.yaml as standard YAML; JSON is YAML.
    config = {
        "env.java.opts.all": java_opts,
        "jobmanager.bind-host": HOST,
        "jobmanager.rpc.address": HOST,
        "jobmanager.rpc.port": spec.rpc_port,
        "jobmanager.memory.process.size": spec.jobmanager_memory,
        "taskmanager.bind-host": HOST,
        "taskmanager.host": HOST,
        "taskmanager.numberOfTaskSlots": spec.slots_per_taskmanager,
        "taskmanager.memory.process.size": spec.taskmanager_memory,
        # TFX's Beam graphs run as 200+ DataSet tasks whose gates want ~512 network buffers at
        # once; Flink's default network share (10 %) fails them with "Insufficient number of network buffers".
        "taskmanager.memory.network.min": "512mb",
        "taskmanager.memory.network.max": "512mb",
        "taskmanager.memory.managed.fraction": 0.2,
        "rest.address": HOST,
        "rest.bind-address": HOST,
        "rest.port": spec.rest_port,
        "parallelism.default": spec.taskmanagers * spec.slots_per_taskmanager,
        "io.tmp.dirs": str(tmp),
        "blob.storage.directory": str(tmp),
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": spec.restart_attempts,
        "restart-strategy.fixed-delay.delay": "2 s",
        # A killed TaskManager is noticed within seconds all the same: heartbeats to it fail at once, and
        # two failed ones (heartbeat.rpc-failure-threshold) mark it lost. The timeout is for a live one
        # that is slow to answer, as a TaskManager on a loaded small machine is for many seconds.
        "heartbeat.timeout": 120000,
        "heartbeat.interval": 3000,
        # One restart of the whole job per failure: per-region failover counts each of the regions a
        # lost TaskManager held as an attempt and fails the job at once.
        "jobmanager.execution.failover-strategy": "full",
        # Beam's classes from the classpath above, not from each job's copy of the same jars (see _commands).
        "classloader.resolve-order": "parent-first",
    }
    (conf / "config.yaml").write_text(json.dumps(config, indent=1) + "\n")
    return conf


def _java_opts(home: pathlib.Path) -> str:
    """The module openings Flink's own config.yaml gives Java 17."""
    for line in (home / "conf" / "config.yaml").read_text().splitlines():
        if line.strip().startswith("all: --add-"):
            return line.split("all:", 1)[1].strip()
    return ""


def _start(
    state: Dict[str, object], spec: ClusterSpec, name: str, command: List[str], env: Dict[str, str], logs: pathlib.Path
) -> None:
    log = logs / f"{name}.out"
    with open(log, "ab") as out:
        # Own session: `down` stops the process group, including the SDK workers a pool spawns.
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(install.PROJECT_DIR),
            start_new_session=True,
        )
    state["processes"].append({"name": name, "log": str(log), "pid": proc.pid})
    (spec.dir / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")


def _wait_ready(
    spec: ClusterSpec, state: Dict[str, object], wakeups: "_Wakeups", everything: bool, deadline: float, timeout: float
) -> None:
    """Returns once Flink's REST API answers (and, with `everything`, the whole cluster does); raises
    when a process dies first or at `deadline`. Asks again only after a process wrote a log or died."""
    for proc in state["processes"]:
        wakeups.watch(proc["pid"])
    while True:
        for proc in state["processes"]:
            if not _alive(proc["pid"]):
                raise ClusterError(f"{proc['name']} exited during start-up; see {proc['log']}")
        missing = _missing(spec, everything)
        if missing is None:
            return
        if not wakeups.wait(deadline - time.monotonic()):
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {missing}; logs in {spec.dir / 'logs'}")


def _missing(spec: ClusterSpec, everything: bool) -> Optional[str]:
    """What does not answer yet, or None. Asked of the services: Flink tells of a TaskManager's
    registration only in its logs (no API) or over REST, and nothing tells when a port starts listening."""
    try:
        overview = rest_get(spec.rest_url, "/overview", timeout=2)
    except ClusterError:
        return "Flink REST"
    if not everything:
        return None
    if overview["taskmanagers"] < spec.taskmanagers:
        return f"{spec.taskmanagers} TaskManagers (registered: {overview['taskmanagers']})"
    if not _port_open(spec.job_port):
        return f"the job server on {spec.job_endpoint}"
    if not _port_open(spec.worker_pool_port):
        return f"the SDK worker pool on {spec.worker_pool}"
    return None


class _Wakeups:
    """The moments the cluster's readiness can change: a process writes to a file in `logs` (inotify;
    what it writes is not read) or a process ends (pidfd). Each of them logs after it starts listening
    or registers, so asking again then misses nothing, and nothing is asked on a timer."""

    def __init__(self, logs: pathlib.Path):
        self._pidfds: Dict[int, int] = {}
        self._inotify = INotify(nonblocking=True)
        try:
            self._inotify.add_watch(logs, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
        except OSError:
            self._inotify.close()
            raise

    def watch(self, pid: int) -> None:
        if pid not in self._pidfds:
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:  # ended already: the caller finds it dead
                pass

    def wait(self, timeout: float) -> bool:
        """Blocks until a log is written or a process ends; False if neither happened within `timeout` s."""
        if timeout <= 0:
            return False
        readable, _, _ = select.select([self._inotify, *self._pidfds.values()], [], [], timeout)
        while self._inotify.read(timeout=0):  # every write so far: one question answers them all
            pass
        return bool(readable)

    def __enter__(self) -> "_Wakeups":
        return self

    def __exit__(self, *exc) -> None:
        self._inotify.close()
        for fd in self._pidfds.values():
            os.close(fd)


def _stop_all(state: Dict[str, object], grace: float = 20) -> List[int]:
    pids = [p["pid"] for p in state["processes"]]
    for pid in reversed(pids):
        _signal_group(pid, signal.SIGTERM)
    if not _groups_ended(pids, grace):
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        _groups_ended(pids, 10)
    return pids


def _groups_ended(pgids: List[int], timeout: float) -> bool:
    """Waits until every process of the groups `pgids` has ended, woken by each end (pidfd); False at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        running = _running(pgids)
        try:
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                return not running
            select.select(list(running.values()), [], [], remaining)
        finally:
            for pidfd in running.values():
                os.close(pidfd)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Any process of the group `pgid` not ended yet."""
    running = _running([pgid])
    for pidfd in running.values():
        os.close(pidfd)
    return bool(running)


def _running(pgids: List[int]) -> Dict[int, int]:
    """pid -> pidfd of each process of the groups `pgids` not ended yet. Ended means every thread: a process
    whose main thread is a zombie may still be closing its sockets, and its pidfd turns readable only then."""
    running = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            pgid = int(stat.read_text().rsplit(")", 1)[1].split()[2])
        except OSError:
            continue
        if pgid not in pgids:
            continue
        pid = int(stat.parent.name)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        if select.select([pidfd], [], [], 0)[0]:
            os.close(pidfd)
            _reap(pid)
        else:
            running[pid] = pidfd
    return running


def _alive(pid: int) -> bool:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] == "Z":
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _say(stream, line: str) -> None:
    print(f"[petseg] {line}", file=stream, flush=True)
