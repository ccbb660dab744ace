"""Fixtures of the compat suite: a real 3-node Conifer cluster over TLS (started with
scripts/local-cluster.sh), index host names resolving to loopback through /etc/hosts
entries the suite adds and removes, and official Pinecone SDK clients."""

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


@pytest.fixture(scope="session")
def cluster():
    if not os.access(HOSTS, os.W_OK):
        pytest.fail(f"{HOSTS} is not writable: the compat suite maps index hosts to 127.0.0.1 there")
    base = int(os.environ.get("CONIFER_COMPAT_BASE_PORT", random.randrange(20000, 40000, 200)))
    d = tempfile.mkdtemp(prefix="conifer-compat-")
    env = dict(os.environ, BASE_PORT=str(base))
    script = ROOT / "scripts" / "local-cluster.sh"
    subprocess.run([str(script), "up", "3", d], check=True, env=env, stdout=subprocess.DEVNULL)
    manifest = json.loads((Path(d) / "cluster.json").read_text())
    try:
        yield manifest
    finally:
        subprocess.run([str(script), "down", d], env=env)
        _hosts_clean()


@pytest.fixture(scope="session")
def resolve_host():
    """Maps an index host (host:port) to 127.0.0.1 for this run."""

    def add(host):
        _hosts_add(host.split(":")[0])
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
