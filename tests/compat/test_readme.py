"""The README's Python snippets, run as written: every ```python block preceded by the
comment `<!-- tested: KIND -->` whose KIND is in $CONIFER_README_BLOCKS (comma-separated:
`sdk` in the SDK venvs, `langchain` and `llamaindex` in theirs) runs in a fresh interpreter,
with the environment the README's preceding steps set up, in a
directory where `conifer-data` (the quickstart's data directory) and `conifer-dev` are a
fresh node's: a TLS node for `sdk`, a `--dev-http` one for `langchain`, as the README says
to start them.
A snippet that raises fails the test, so the README cannot rot."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import conifer_bin

ROOT = Path(__file__).resolve().parents[2]
KINDS = [k for k in os.environ.get("CONIFER_README_BLOCKS", "").split(",") if k]
NODE_FLAGS = ["--dev-http"] if "langchain" in KINDS else []
BLOCK = re.compile(r"<!-- tested: (\w+) -->\s*\n```python\n(.*?)\n```", re.S)


def blocks(kind):
    return [code for k, code in BLOCK.findall((ROOT / "README.md").read_text()) if k == kind]


def test_the_readme_has_tested_blocks():
    assert KINDS, "CONIFER_README_BLOCKS names no kind of block"
    for kind in KINDS:
        assert blocks(kind), f"README.md has no block marked <!-- tested: {kind} -->"


@pytest.mark.parametrize("kind", KINDS)
def test_readme_snippets_run_as_written(kind, single_node, tmp_path):
    # The quickstart's node, or the development node of the LangChain step.
    for name in ("conifer-data", "conifer-dev"):
        (tmp_path / name).symlink_to(single_node["data_dir"])
    env = dict(os.environ)
    if kind == "sdk":
        # The README's 10.x gRPC note: that client trusts the CA named by SSL_CERT_FILE.
        env["SSL_CERT_FILE"] = single_node["ca_cert"]
    if kind == "llamaindex":
        # The README's line before the block: eval "$(conifer certs trust --no-system …)".
        out = subprocess.run([conifer_bin(), "certs", "trust", "--no-system", "--bootstrap",
                              "conifer-data/bootstrap.json"], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout
        for assignment in shlex.split(out.removeprefix("export ")):
            name, value = assignment.split("=", 1)
            env[name] = value
    for i, code in enumerate(blocks(kind)):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"README {kind} block {i} failed:\n{code}\n{run.stderr}"
