"""The cluster recipes of README.md and docs/CLUSTER.md on a real two-node Ray cluster made on
this machine: a head with the dashboard (``ray start --head``) and a second raylet
(``ray start --address``), one CPU each, each with its own temp dir and ports, with Ray's token
authentication on (a token of their own). Both are stopped after the module by killing the
process groups this module started (never ``ray stop``, which stops every Ray on the machine).

* ``ray job submit``, run exactly as the README shows it (its ``-- python -m m2a_pipe`` entry
  point), gives a local run's outputs: every scores.h5 dataset equal, tracks.csv and
  events.jsonl byte for byte;
* a driver that joins with ``--address HOST:PORT --workers 2`` places one worker per node;
* a client without ``RAY_AUTH_MODE=token``, or with a wrong token, gets one error line that
  says what to set (the cluster's real AuthenticationError, no mock); a wrong port one line
  at once.

Needs ``ray[default]`` (the ``cluster`` extra); skipped with that reason without it. Slow:
``python -m pytest -m slow tests/test_cluster.py`` (CI runs it).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402

from m2a_pipe.pipeline.process import process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(PYTHON).parent / "ray") if (Path(PYTHON).parent / "ray").is_file() else (shutil.which("ray") or "ray")
ERROR_PREFIX = "m2a-pipe: error: "
COMMON = ["--short-side", "64"]  # the runs of this module: the tiny test weights, one torch thread a worker
OBJECT_STORE_BYTES = 150 * 1024 * 1024
START_TIMEOUT_S = 120


def missing_ray_default() -> str | None:
    """Why ``ray[default]`` is not usable here (None when it is)."""
    try:
        import aiohttp  # noqa: F401
        import requests  # noqa: F401
        import virtualenv  # noqa: F401
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError as err:
        return str(err)
    err = get_dashboard_dependency_error()
    return str(err) if err else None


if missing_ray_default():
    pytest.skip(f"ray[default] is not installed ({missing_ray_default()}): pip install -e '.[cluster]'",
                allow_module_level=True)


# -- the cluster -----------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_range(width: int, avoid: set[int]) -> int:
    """The first port of ``width`` consecutive free ports (for a raylet's worker ports)."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - width)
        ports = range(base, base + width)
        if avoid.intersection(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {width} consecutive free ports")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RAY_* variable, this Python's bin first on PATH
    (the environment a node is started from), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def group_alive(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def processes_under(root: Path) -> list[int]:
    """Pids of live processes whose command line names ``root`` (this cluster's temp dirs)."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                named = needle in (entry / "cmdline").read_bytes()
                if named and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Cluster:
    """A head (dashboard on) and a worker raylet, each from its own ``ray start`` in a new
    session: its process group holds every process of that node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(32))
        self.env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token))
        ports = free_ports(15)
        self.gcs_port, self.dashboard_port, client_port = ports[:3]
        node_ports = [ports[3:9], ports[9:15]]
        worker_base = free_range(200, set(ports))
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.groups: list[int] = []
        common = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(OBJECT_STORE_BYTES),
                  "--disable-usage-stats"]

        def node_args(i: int) -> list[str]:
            manager, objects, metrics, agent, agent_grpc, runtime_env = node_ports[i]
            return ["--node-manager-port", str(manager), "--object-manager-port", str(objects),
                    "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
                    "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
                    "--min-worker-port", str(worker_base + 100 * i),
                    "--max-worker-port", str(worker_base + 100 * i + 99)]

        self._start(["--head", "--temp-dir", str(root / "head"), "--port", str(self.gcs_port),
                     "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(client_port),
                     *node_args(0), *common])
        self._start(["--address", self.address, "--temp-dir", str(root / "worker"), *node_args(1), *common])
        self.node_ids = self._wait_for_nodes(2)

    def _start(self, args: list[str]) -> None:
        proc = subprocess.Popen([RAY, "start", *args], env=self.env, cwd=self.root, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups.append(proc.pid)
        out = proc.communicate(timeout=START_TIMEOUT_S)[0]
        assert proc.returncode == 0, f"ray start {' '.join(args[:2])} failed:\n{out[-3000:]}"

    def _wait_for_nodes(self, n: int) -> list[str]:
        script = ("import ray, sys, time\n"
                  "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
                  "deadline = time.time() + 60\n"
                  "while len([x for x in ray.nodes() if x['Alive']]) < int(sys.argv[2]) and time.time() < deadline:\n"
                  "    time.sleep(0.2)\n"
                  "print(' '.join(x['NodeID'] for x in ray.nodes() if x['Alive']))\n")
        out = run([PYTHON, "-c", script, self.address, str(n)], self.env, timeout=90)
        assert out.returncode == 0, out.stdout
        ids = out.stdout.split()
        assert len(ids) == n, out.stdout
        return ids

    def actors(self) -> list[dict]:
        """Every InferenceWorker actor the cluster has known (name, node_id, state), through the
        State API of the dashboard."""
        script = ("import json, sys\n"
                  "from ray.util.state import list_actors\n"
                  "actors = list_actors(address=sys.argv[1], filters=[('class_name', '=', 'InferenceWorker')],\n"
                  "                     detail=True, limit=1000, raise_on_missing_output=False)\n"
                  "print(json.dumps([dict(name=a.name, node_id=a.node_id, state=a.state) for a in actors]))\n")
        out = run([PYTHON, "-c", script, self.dashboard], self.env, timeout=60)
        assert out.returncode == 0, out.stdout
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """SIGTERM to each node's process group, SIGKILL to what is left after 5 s (the GCS server
        ignores SIGTERM), then to any process still naming this cluster's temp dirs."""
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(group_alive(g) for g in self.groups):
            time.sleep(0.2)
        for pgid in self.groups:
            if group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in processes_under(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    # a short root: Ray's socket paths (root/head/session_.../sockets/...) must stay under 108 bytes
    root = Path(tempfile.mkdtemp(prefix="m2a-cl-", dir="/tmp"))
    made = None
    try:
        made = Cluster(root)
        yield made
    finally:
        if made is not None:
            made.stop()
        else:  # a start that failed half-way
            for pid in processes_under(root):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # a SIGKILLed process leaves /proc a moment later
        while processes_under(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_under(root), "processes of the test cluster survived"
        shutil.rmtree(root, ignore_errors=True)


# -- inputs and the local reference ----------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two tiny clips (the 'shared storage' of this one-machine cluster)."""
    root = tmp_path_factory.mktemp("clips")
    vf.make_video(root / "a.mp4", n=16, size=(96, 64), fps=10)
    vf.make_video(root / "b.mp4", n=10, size=(80, 48), fps=10)
    return root


@pytest.fixture(scope="module")
def local_out(clips, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = process(clips, out, weights=weights, short_side=64, threads=1, quiet=True)
    assert summary.exit_code == 0
    return out


def readme_job_command() -> list[str]:
    """The ``ray job submit`` line of the README's "Running on Ray" section, as words."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running on Ray"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    lines = [line.split(" #")[0].strip() for line in block.splitlines() if line.strip().startswith("ray job submit")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def workers_per_node(actors: list[dict]) -> dict[str, list[str]]:
    """Node ids of each run's inference workers (names m2a-pipe-worker-<run>-<i>)."""
    runs: dict[str, list[str]] = {}
    for actor in actors:
        match = re.fullmatch(r"m2a-pipe-worker-([0-9a-f]+)-\d+", actor["name"] or "")
        if match:
            runs.setdefault(match.group(1), []).append(actor["node_id"])
    return runs


# -- the tests -------------------------------------------------------------------------------


def test_job_submitted_as_the_readme_shows_gives_the_local_outputs(cluster, clips, local_out, weights, tmp_path):
    words = readme_job_command()
    assert words[:5] == ["ray", "job", "submit", "--address", "http://HEAD:8265"], words
    assert words[words.index("--") + 1:words.index("--") + 5] == ["python", "-m", "m2a_pipe", "process"], words
    paths = [w for w in words if w.startswith("/mnt/")]
    assert len(paths) == 2 and words[words.index(paths[1]) - 1] == "-o", words
    out = tmp_path / "out"
    mapping = {"http://HEAD:8265": cluster.dashboard, paths[0]: str(clips), paths[1]: str(out)}
    args = [RAY if w == "ray" and i == 0 else mapping.get(w, w) for i, w in enumerate(words)]
    args += ["-w", weights, *COMMON, "--workers", "2", "-q"]
    before = {a["name"] for a in cluster.actors()}
    result = run(args, cluster.env, timeout=400)
    assert result.returncode == 0 and "succeeded" in result.stdout, result.stdout[-4000:]
    assert "2 inputs: 2 complete" in result.stdout, result.stdout[-4000:]
    assert vf.assert_same_outputs(out, local_out) == 2
    assert not list(out.rglob(".*partial*")) and not (out / "failures.jsonl").exists()
    new = [a for a in cluster.actors() if a["name"] not in before]
    assert [sorted(nodes) for nodes in workers_per_node(new).values()] == [sorted(cluster.node_ids)], new


def test_driver_joining_with_address_places_one_worker_per_node(cluster, clips, local_out, weights, tmp_path):
    out = tmp_path / "out"
    before = {a["name"] for a in cluster.actors()}
    result = run([PYTHON, "-m", "m2a_pipe", "process", str(clips), "-o", str(out), "-w", weights, *COMMON, "-q",
                  "--ray", "--address", cluster.address, "--workers", "2"], cluster.env)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "ray: 2 worker(s) (0 GPU, 1 CPU each)" in result.stdout, result.stdout
    assert vf.assert_same_outputs(out, local_out) == 2
    new = [a for a in cluster.actors() if a["name"] not in before]
    runs = workers_per_node(new)
    assert len(runs) == 1 and sorted(next(iter(runs.values()))) == sorted(cluster.node_ids), new


def error_line(output: str) -> str:
    """The one line m2a-pipe printed (Ray's own C++ retry warnings on stderr aside)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.strip().splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1 and output.strip().splitlines()[-1] == lines[0], output
    return lines[0]


@pytest.mark.parametrize("auth", ["no-auth-mode", "wrong-token"])
def test_joining_without_the_token_is_one_line_naming_what_to_set(cluster, clips, weights, tmp_path, auth):
    # RAY_gcs_server_port_wait_time_s: Ray's connection retries, 20 x 1 s by default, cut to 2
    env = clean_env(RAY_gcs_server_port_wait_time_s="2")
    if auth == "wrong-token":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    result = run([PYTHON, "-m", "m2a_pipe", "process", str(clips), "-o", str(tmp_path / "out"), "-w", weights, "-q",
                  "--ray", "--address", cluster.address], env, timeout=180)
    assert result.returncode == 1, result.stdout
    line = error_line(result.stdout)
    assert f"Ray ({cluster.address})" in line, line
    if auth == "no-auth-mode":
        assert "requires token authentication: set RAY_AUTH_MODE=token" in line, line
    else:
        assert "refused the authentication token from $RAY_AUTH_TOKEN" in line, line
    for where in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
        assert where in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_wrong_port_is_one_line_at_once(cluster, clips, weights, tmp_path):
    port = free_ports(1)[0]
    started = time.monotonic()
    result = run([PYTHON, "-m", "m2a_pipe", "process", str(clips), "-o", str(tmp_path / "out"), "-w", weights, "-q",
                  "--ray", "--address", f"127.0.0.1:{port}"], cluster.env, timeout=120)
    assert result.returncode == 1, result.stdout
    line = error_line(result.stdout)
    assert f"Ray (127.0.0.1:{port}): nothing answers there" in line and "GCS address" in line, line
    assert time.monotonic() - started < 60
    line = error_line(run([PYTHON, "-m", "m2a_pipe", "process", str(clips), "-o", str(tmp_path / "out"), "-w", weights,
                           "-q", "--ray", "--address", cluster.dashboard], cluster.env, timeout=120).stdout)
    assert "dashboard (Jobs API) address" in line, line
