"""The committed OpenAPI spec against the live control plane: schemathesis generates requests from the spec
(valid and broken bodies, odd parameters) and checks that the server never fails (no 5xx) and that every
answer, errors included, is what the spec says (status documented, body matching its schema).

Bounded: a fixed seed, a few examples per operation, a time budget (60 s; JIT_SCHEMATHESIS_SECONDS). Host routes run with an enrolled host's
certificate (mutual TLS); the bearer routes with a token that is not valid (they must refuse it in the error shape).
"""
import os
import shutil
import sys
import subprocess

import pytest

from conftest import needs_root
from fleet import ControlPlane, FleetHost, pg  # noqa: F401 (pg is a fixture)

requests = pytest.importorskip("requests")
pytestmark = needs_root

# Operations in the spec that another part of this round serves (f-stream); until their branches are
# merged the server answers them with not_found. Empty this list after merging (OpenAPISpecTests has the same).
BUILT_ELSEWHERE = []  # every route of the spec is served by this server (kept for a part built apart)


def schemathesis_cmd():
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe:
        return [exe]
    try:
        import schemathesis  # noqa: F401 (installed for this Python, its script not on PATH)
        return [sys.executable, "-m", "schemathesis.cli"]
    except ImportError:
        # CI (root) must run it: scripts/deps.sh installs it there; elsewhere say how.
        if os.geteuid() == 0:
            pytest.fail("schemathesis is not installed for this Python: run scripts/deps.sh")
        pytest.skip("schemathesis is not installed for this Python (scripts/deps.sh installs it)")


@pytest.fixture
def fleet(pg, tmpdir_root):
    cp = ControlPlane(pg, tmpdir_root)
    yield cp
    cp.stop()


def unrouted(fleet):
    """The paths of BUILT_ELSEWHERE that this server does not serve (a bare GET answers not_found)."""
    out = []
    for p in BUILT_ELSEWHERE:
        r = requests.get(fleet.url + p.replace("{id}", "1"), verify=fleet.ca, timeout=10)
        if r.status_code == 404 and r.json().get("error", {}).get("code") == "not_found":
            out.append(p)
    return out


def test_the_live_server_keeps_to_its_spec(fleet, tmpdir_root):
    cmd = schemathesis_cmd()
    fleet.start()
    host = FleetHost(tmpdir_root, "st1")
    p = host.enrol(fleet.url, fleet.token("staging", labels=["web"]))
    assert p.returncode == 0, p.stderr
    spec = requests.get(fleet.url + "/v1/openapi.yaml", verify=fleet.ca, timeout=10)
    assert spec.status_code == 200 and spec.headers["content-type"] == "application/yaml"
    path = os.path.join(tmpdir_root, "jit-v1.yaml")
    with open(path, "wb") as f:
        f.write(spec.content)
    args = cmd + ["run", path, "--url", fleet.url,
                  "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                  "--max-examples", os.environ.get("JIT_SCHEMATHESIS_EXAMPLES", "25"), "--seed", "15",
                  "--max-time", os.environ.get("JIT_SCHEMATHESIS_SECONDS", "90"), "--phases", "examples,coverage,fuzzing", "--workers", "1",
                  "--tls-verify", fleet.ca, "--request-cert", host.cert, "--request-cert-key", host.key,
                  "-H", "Authorization: Bearer not-a-token", "--request-timeout", "60", "--no-shrink"]
    for p in unrouted(fleet):
        args += ["--exclude-path", p]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    r = subprocess.run(args, capture_output=True, text=True, timeout=420, env=env, cwd=tmpdir_root)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    # It really exercised the API (not an empty run).
    assert "passed" in out.lower(), out[-3000:]
    # The server lived through it and still answers.
    assert requests.get(fleet.url + "/v1/ca", verify=fleet.ca, timeout=10).status_code == 200
