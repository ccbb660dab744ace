"""Fixtures of the compat suite: a real 3-node Conifer cluster over TLS (started with
scripts/local-cluster.sh) and official Pinecone SDK clients.

Index hosts come in the mode CONIFER_COMPAT_HOSTS names: `ports` (the default) gives each
index its own port and each node its own loopback IP, so hosts are `127.0.0.i:<port>` and
need no DNS; `names` reports `<index>-<tag>.<domain>` hosts, which the suite points at
127.0.0.1 through /etc/hosts entries it adds and removes."""

import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTS = Path(os.environ.get("CONIFER_HOSTS_FILE", "/etc/hosts"))
MARK = "# conifer-compat"
HNSW_MIN_RECORDS = 5000
# Ports the suite listens on come from below the kernel's ephemeral range, which outgoing
# connections take their local ports from: a port in it can be held by any client socket
# at the moment a node binds it.
PORTS_FROM = 20000


def _ephemeral_low():
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_base(span):
    """A random first port of `span` ports, all below the ephemeral range."""
    return random.randrange(PORTS_FROM, _ephemeral_low() - span, 400)


def _hosts_add(name):
    text = HOSTS.read_text()
    line = f"127.0.0.1 {name} {MARK}\n"
    if line not in text:
        with HOSTS.open("a") as f:
            f.write(line)


def _hosts_clean():
    lines = HOSTS.read_text().splitlines(keepends=True)
    kept = [l for l in lines if MARK not in l]
    if len(kept) != len(lines):
        HOSTS.write_text("".join(kept))


MODE = os.environ.get("CONIFER_COMPAT_HOSTS", "ports")


@pytest.fixture(scope="session")
def cluster():
    if MODE not in ("ports", "names"):
        pytest.fail(f"CONIFER_COMPAT_HOSTS is {MODE!r}; expected 'ports' or 'names'")
    if MODE == "names" and not os.access(HOSTS, os.W_OK):
        pytest.fail(f"{HOSTS} is not writable: the compat suite maps index hosts to 127.0.0.1 there")
    base = int(os.environ.get("CONIFER_COMPAT_BASE_PORT", _port_base(400)))
    d = tempfile.mkdtemp(prefix="conifer-compat-")
    # Namespaces of 5,000+ records move to HNSW: the suite's 10,000-record index exercises
    # the approximate path, its 3,000-record index the exact one.
    env = dict(os.environ, BASE_PORT=str(base), CONIFER_HNSW_MIN_RECORDS=str(HNSW_MIN_RECORDS))
    if MODE == "ports":
        # Above the nodes' client (base+i) and cluster (base+100+i) ports.
        env["INDEX_PORT_RANGE"] = f"{base + 200}-{base + 399}"
    script = ROOT / "scripts" / "local-cluster.sh"
    subprocess.run([str(script), "up", "3", d], check=True, env=env, stdout=subprocess.DEVNULL)
    manifest = json.loads((Path(d) / "cluster.json").read_text())
    try:
        yield manifest
    finally:
        subprocess.run([str(script), "down", d], env=env)
        if MODE == "names":
            _hosts_clean()


@pytest.fixture(scope="session")
def resolve_host(cluster):
    """An index host as the SDK should use it: as reported in `ports` mode (checked to be
    an IP and port, which needs no DNS); in `names` mode, mapped to 127.0.0.1 for this run."""

    def add(host):
        name = host.removeprefix("https://").rsplit(":", 1)[0]
        if MODE == "ports":
            import ipaddress

            ipaddress.ip_address(name)  # raises unless the host is an IP
            return host
        _hosts_add(name)
        return host

    return add


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def admin(manifest, method, path, body=None, node=0):
    """An admin REST call with the operator token; returns the decoded answer."""
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=manifest["ca_cert"])
    req = urllib.request.Request(
        manifest["nodes"][node]["api_url"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Bearer " + manifest["bootstrap"]["admin_token"],
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def engines(manifest):
    """Engine of every hosted namespace, per node: {(node id, group id, namespace): engine}."""
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=manifest["ca_cert"])
    out = {}
    for node in manifest["nodes"]:
        req = urllib.request.Request(
            node["api_url"] + "/admin/cluster",
            headers={"Authorization": "Bearer " + manifest["bootstrap"]["admin_token"]},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            info = json.load(resp)
        for shard in info.get("shards", []):
            for ns in shard.get("namespaces", []):
                out[(node["id"], shard["group_id"], ns["name"])] = ns["engine"]
    return out


def conifer_bin():
    """The conifer binary: $CONIFER_BIN, else the release build when the quickstart made
    one, else the debug build (as scripts/local-cluster.sh chooses)."""
    if os.environ.get("CONIFER_BIN"):
        return os.environ["CONIFER_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/conifer-target"))
    release = target / "release" / "conifer"
    return str(release if release.exists() else target / "debug" / "conifer")


def _free_port_block(n):
    """The first of n consecutive ports free on 127.0.0.1, below the ephemeral range."""
    import socket

    while True:
        first = random.randrange(PORTS_FROM, _ephemeral_low() - n)
        socks = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


@pytest.fixture(scope="module")
def single_node(request):
    """One `conifer serve` on 127.0.0.1 with index ports and the flags of the test module's
    NODE_FLAGS (e.g. ["--dev-http"]): its bootstrap.json, with `data_dir` added."""
    flags = getattr(request.module, "NODE_FLAGS", [])
    base = _free_port_block(12)
    d = Path(tempfile.mkdtemp(prefix="conifer-compat-node-"))
    data = d / "data"
    log = open(d / "serve.log", "ab")
    proc = subprocess.Popen(
        [conifer_bin(), "serve", "--data-dir", str(data), "--api-addr", f"127.0.0.1:{base}",
         "--cluster-addr", f"127.0.0.1:{base + 1}", "--index-port-range",
         f"{base + 2}-{base + 11}", *flags],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        boot_file = data / "bootstrap.json"
        deadline = time.time() + 60
        boot = None
        while boot is None:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("conifer serve did not start:\n" + (d / "serve.log").read_text())
            try:
                boot = json.loads(boot_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.2)
        boot["data_dir"] = str(data)
        yield boot
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


PROXY_USER, PROXY_PASSWORD = "alice", "s3cret"


class Tinyproxy:
    """Debian's tinyproxy on 127.0.0.1 (HTTP CONNECT), logging every tunnel it opens."""

    def __init__(self, basic_auth):
        import socket

        self.dir = Path(tempfile.mkdtemp(prefix="conifer-compat-proxy-"))
        self.port = _free_port_block(1)
        self.log = self.dir / "tinyproxy.log"
        conf = (f"Port {self.port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{self.log}\"\n"
                "LogLevel Connect\nMaxClients 64\nAllow 127.0.0.1\n")
        if basic_auth:
            conf += f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"
        (self.dir / "tinyproxy.conf").write_text(conf)
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(self.dir / "tinyproxy.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("tinyproxy did not start")
                time.sleep(0.05)

    def url(self, credentials=False):
        auth = f"{PROXY_USER}:{PROXY_PASSWORD}@" if credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def tunnels(self):
        """Tunnels opened so far (the log's "Established connection" lines)."""
        text = self.log.read_text() if self.log.exists() else ""
        return sum("Established connection to host" in line for line in text.splitlines())

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def proxies():
    """An open and an authenticating tinyproxy, for the SDK's proxy settings."""
    open_proxy, authenticating = Tinyproxy(False), Tinyproxy(True)
    yield open_proxy, authenticating
    open_proxy.stop()
    authenticating.stop()
