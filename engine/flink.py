"""A local standalone Flink cluster with Beam's job server and a Python SDK worker pool, on loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

import config
from engine import install

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """The cluster could not start or answer; the message names the process and its log."""


@dataclasses.dataclass
class ClusterSpec:
    """Where the cluster keeps its state and logs, and the loopback ports it listens on.

    A port of 0 lets its process bind any free one; `up` reads back the port bound and records it in
    the cluster's state, so nothing else can take a port between its choice and its use.
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
PORT_FIELDS = ("rest_port", "rpc_port", "job_port", "artifact_port", "expansion_port", "worker_pool_port")
# Where each process that may be given port 0 logs the ports it bound (the job server logs to its own file).
_PORT_LOGS = {"jobmanager": "jobmanager.out", "job-server": "job-server.log", "worker-pool": "worker-pool.out"}
# Port field -> (process, the line of its log naming the port it bound), for ports given as 0.
_BOUND_PORT_LINES = {
    "rpc_port": ("jobmanager", re.compile(r"Actor system started at pekko\.tcp://flink@[^:]+:(\d+)")),
    "rest_port": ("jobmanager", re.compile(r"Rest endpoint listening at [^:]+:(\d+)")),
    "job_port": ("job-server", re.compile(r"JobService started on [^:]+:(\d+)")),
    "artifact_port": ("job-server", re.compile(r"ArtifactStagingService started on [^:]+:(\d+)")),
    "expansion_port": ("job-server", re.compile(r"ExpansionService started on [^:]+:(\d+)")),
    "worker_pool_port": ("worker-pool", re.compile(r"SDK worker pool listening on [^:]+:(\d+)")),
}


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
    logs = spec.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = install.ensure_flink(logs / "install.log")
    jars = install.ensure_job_server(logs / "install.log")
    if state:
        state["processes"] = [p for p in state["processes"] if p["name"] not in dead]
        names = dead
    else:
        for port in (getattr(spec, field) for field in PORT_FIELDS):
            if port and _port_open(port):
                raise ClusterError(f"port {HOST}:{port} is already in use; choose other ports, or 0 for any "
                                   "free one (petseg flink up --help)")
        state = {"spec": dataclasses.asdict(spec), "flink_home": str(home), "processes": []}
        names = list(_commands(spec, home, jars, spec.dir / "conf", logs))
    deadline = time.monotonic() + timeout
    try:
        # The JobManager and the worker pool first: the TaskManagers and the job server need their ports.
        first = [n for n in names if n in ("jobmanager", "worker-pool")]
        for batch in (first, [n for n in names if n not in first]):
            commands = _commands(spec, home, jars, _write_conf(spec, home), logs)
            for name in batch:
                command, env = commands[name]
                _start(state, spec, name, command, env, logs)
            spec = _read_bound_ports(spec, state, deadline)
        _wait_ready(spec, state, deadline - time.monotonic())
    except BaseException:
        _stop_all(state)
        (spec.dir / STATE_FILE).unlink(missing_ok=True)
        raise
    _say(stream, f"Flink {install.FLINK_VERSION} up: REST {spec.rest_url}, {spec.taskmanagers} TaskManagers, "
                 f"job server {spec.job_endpoint}, SDK worker pool {spec.worker_pool}; logs in {logs}")
    return state


def _commands(spec: ClusterSpec, home: pathlib.Path, jars: List[pathlib.Path], conf: pathlib.Path,
              logs: pathlib.Path) -> Dict[str, tuple]:
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
    commands["job-server"] = ([
        shutil.which("java") or "java", f"-Dlog.file={logs / 'job-server.log'}",
        f"-Dlog4j.configurationFile=file:{conf / 'log4j.properties'}",
        "-cp", classpath, install.JOB_SERVER_MAIN, f"--flink-master={HOST}:{spec.rest_port}",
        f"--flink-conf-dir={conf}", f"--job-host={HOST}", f"--job-port={spec.job_port}",
        f"--artifact-port={spec.artifact_port}", f"--expansion-port={spec.expansion_port}",
        f"--artifacts-dir={spec.dir / 'artifacts'}"], env)
    commands["worker-pool"] = ([sys.executable, "-m", "engine.worker_pool", f"--port={spec.worker_pool_port}",
                                f"--spares={spec.taskmanagers * spec.slots_per_taskmanager}"], _worker_env())
    return commands


def status(spec: ClusterSpec) -> Dict[str, object]:
    """What runs: each process with its pid, and the TaskManagers and jobs Flink's REST API reports."""
    state = read_state(spec.dir)
    if not state:
        return {"running": False, "processes": [], "state_dir": str(spec.dir)}
    spec = ClusterSpec(**state["spec"])
    procs = [dict(p, alive=_alive(p["pid"])) for p in state["processes"]]
    report: Dict[str, object] = {"running": all(p["alive"] for p in procs), "processes": procs,
                                 "state_dir": str(spec.dir), "rest": spec.rest_url,
                                 "job_endpoint": spec.job_endpoint, "worker_pool": spec.worker_pool}
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


def taskmanager_pids(state_dir: pathlib.Path) -> List[int]:
    state = read_state(state_dir) or {"processes": []}
    return [p["pid"] for p in state["processes"] if p["name"].startswith("taskmanager")]


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
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml",
                 "logback-console.xml"):
        if (home / "conf" / name).exists():
            shutil.copy(home / "conf" / name, conf / name)
    java_opts = _java_opts(home)
    tmp = spec.dir / "tmp"
    tmp.mkdir(exist_ok=True)
    # Flink 1.19 reads conf/config.yaml as standard YAML; JSON is YAML.
    config = {
        "env.java.opts.all": java_opts,
        "jobmanager.bind-host": HOST, "jobmanager.rpc.address": HOST, "jobmanager.rpc.port": spec.rpc_port,
        "jobmanager.memory.process.size": spec.jobmanager_memory,
        "taskmanager.bind-host": HOST, "taskmanager.host": HOST,
        "taskmanager.numberOfTaskSlots": spec.slots_per_taskmanager,
        "taskmanager.memory.process.size": spec.taskmanager_memory,
        # TFX's Beam graphs run as 200+ DataSet tasks whose gates want ~512 network buffers at
        # once; Flink's default network share (10 %) fails them with "Insufficient number of network buffers".
        "taskmanager.memory.network.min": "512mb", "taskmanager.memory.network.max": "512mb",
        "taskmanager.memory.managed.fraction": 0.2,
        "rest.address": HOST, "rest.bind-address": HOST, "rest.port": spec.rest_port,
        "parallelism.default": spec.taskmanagers * spec.slots_per_taskmanager,
        "io.tmp.dirs": str(tmp), "blob.storage.directory": str(tmp),
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": spec.restart_attempts,
        "restart-strategy.fixed-delay.delay": "2 s",
        # A killed TaskManager is noticed within seconds all the same: heartbeats to it fail at once, and
        # two failed ones (heartbeat.rpc-failure-threshold) mark it lost. The timeout is for a live one
        # that is slow to answer, as a TaskManager on a loaded small machine is for many seconds.
        "heartbeat.timeout": 120000, "heartbeat.interval": 3000,
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


def _start(state: Dict[str, object], spec: ClusterSpec, name: str, command: List[str], env: Dict[str, str],
           logs: pathlib.Path) -> None:
    log = logs / f"{name}.out"
    entry: Dict[str, object] = {"name": name, "log": str(log)}
    if name in _PORT_LOGS:
        # This start's own lines begin here: a restart appends to the same log.
        port_log = logs / _PORT_LOGS[name]
        entry.update(port_log=str(port_log), port_log_offset=port_log.stat().st_size if port_log.exists() else 0)
    with open(log, "ab") as out:
        # Own session: `down` stops the process group, including the SDK workers a pool spawns.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(install.PROJECT_DIR), start_new_session=True)
    state["processes"].append(dict(entry, pid=proc.pid))
    (spec.dir / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")


def _read_bound_ports(spec: ClusterSpec, state: Dict[str, object], deadline: float) -> ClusterSpec:
    """`spec` with each port given as 0 replaced by the one its started process bound; recorded in the state."""
    started = {p["name"]: p for p in state["processes"]}
    found = {}
    for field, (name, line) in _BOUND_PORT_LINES.items():
        if getattr(spec, field) or name not in started:
            continue
        proc = started[name]
        while True:
            try:
                with open(proc["port_log"], "rb") as log:
                    log.seek(proc["port_log_offset"])
                    match = line.search(log.read().decode(errors="replace"))
            except FileNotFoundError:  # not opened yet
                match = None
            if match:
                found[field] = int(match.group(1))
                break
            if not _alive(proc["pid"]):
                raise ClusterError(f"{name} exited during start-up; see {proc['log']}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {name} to name its {field.replace('_', ' ')}; "
                                   f"see {proc['log']}")
            time.sleep(0.5)
    if not found:
        return spec
    spec = dataclasses.replace(spec, **found)
    state["spec"] = dataclasses.asdict(spec)
    (spec.dir / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    return spec


def _wait_ready(spec: ClusterSpec, state: Dict[str, object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = "Flink REST"
    while time.monotonic() < deadline:
        for proc in state["processes"]:
            if not _alive(proc["pid"]):
                raise ClusterError(f"{proc['name']} exited during start-up; see {proc['log']}")
        try:
            overview = rest_get(spec.rest_url, "/overview", timeout=2)
            waiting = f"{spec.taskmanagers} TaskManagers (registered: {overview['taskmanagers']})"
            if overview["taskmanagers"] >= spec.taskmanagers:
                waiting = f"the job server on {spec.job_endpoint}"
                if _port_open(spec.job_port):
                    waiting = f"the SDK worker pool on {spec.worker_pool}"
                    if _port_open(spec.worker_pool_port):
                        return
        except ClusterError:
            pass
        time.sleep(1)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {waiting}; logs in {spec.dir / 'logs'}")


def _stop_all(state: Dict[str, object], grace: float = 20) -> List[int]:
    pids = [p["pid"] for p in state["processes"]]
    for pid in reversed(pids):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in pids):
        time.sleep(0.3)
    for pid in pids:
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in pids):
        time.sleep(0.2)
    return pids


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group `pgid`."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


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
