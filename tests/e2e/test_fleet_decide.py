"""The control plane's decision engine (#14, f-decide): the same `jit` CLI against `jitd server`'s own socket,
the policy from server.yaml, and two replicas approving the same request at once making exactly one grant."""
import os
import threading

import pytest

from conftest import JIT, run
from fleet import ControlPlane, pg  # noqa: F401 (fixture)

POLICY = """pending_ttl: 1h
rules:
  - name: prod
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    max_duration: 4h
    approvals: {groups: [jit-approvers]}
"""


class DecidingPlane(ControlPlane):
    """A control plane whose replicas each have their own approvers' socket, and the policy above."""

    def write_config(self, port, name=None, extra=""):
        policy = os.path.join(self.dir, "policy.yaml")
        with open(policy, "w") as f:
            f.write(POLICY)
        os.chmod(policy, 0o644)
        sock = self.socket(0 if name is None else int(name[len("server"):-len(".yaml")]))
        return super().write_config(port, name, extra + f"policy: {policy}\nsocket: {sock}\n")

    def socket(self, i):
        # Beside the server's private folder (0700): every user must reach the socket.
        return os.path.join(os.path.dirname(self.dir), f"{os.path.basename(self.dir)}-sock{i}", "server.sock")

    def jit(self, i, user, *args):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "JIT_SOCKET": self.socket(i)}
        cmd = [JIT, *args]
        if user is not None:
            cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *cmd]
        return run(cmd, env=env, timeout=60)


@pytest.fixture
def plane(pg, tmpdir_root):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("needs root: PostgreSQL runs as 'postgres' and the socket reads peers' credentials (CI runs as root)")
    os.chmod(tmpdir_root, 0o755)
    cp = DecidingPlane(pg, tmpdir_root)
    try:
        yield cp.start(count=2)
    finally:
        cp.stop()


def grants_of(cp, request_id):
    return cp.pg.sql(f"SELECT id, state, environment FROM grants WHERE request_id = {int(request_id)}", db=cp.database)


def test_the_cli_lists_approves_and_revokes_on_the_control_plane(plane, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    p = plane.jit(0, alice, "request", "--env", "production", "--for", "1h", "--reason", "deploy", "--json")
    assert p.returncode == 0, p.stderr + p.stdout
    import json
    rid = json.loads(p.stdout)["id"]
    # Any replica answers: the request is in PostgreSQL.
    listed = plane.jit(1, bob, "list", "--pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert str(rid) in listed.stdout
    assert plane.jit(1, alice, "approve", str(rid)).returncode != 0, "nobody approves their own request"
    ok = plane.jit(1, bob, "approve", str(rid))
    assert ok.returncode == 0, ok.stderr + ok.stdout
    rows = grants_of(plane, rid)
    assert len(rows) == 1 and rows[0][1] == "active" and rows[0][2] == "production", rows
    # Host-only operations are refused with a sentence.
    audit = plane.jit(0, None, "audit")
    assert audit.returncode != 0 and "control plane" in (audit.stderr + audit.stdout)
    rev = plane.jit(0, carol, "revoke", rows[0][0])
    assert rev.returncode == 0, rev.stderr + rev.stdout
    assert grants_of(plane, rid)[0][1] == "revoked"
    events = [e[0] for e in plane.audit()]
    for e in ("request.filed", "request.approval", "request.approved", "grant.started", "grant.revoked"):
        assert e in events, events


def test_two_replicas_approving_at_once_make_one_grant(plane, people):
    import json
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    for _ in range(5):
        p = plane.jit(0, alice, "request", "--env", "production", "--for", "30m", "--reason", "race", "--json")
        assert p.returncode == 0, p.stderr + p.stdout
        rid = json.loads(p.stdout)["id"]
        results = {}
        go = threading.Barrier(2)

        def approve(i, who):
            go.wait()
            results[i] = plane.jit(i, who, "approve", str(rid))

        ts = [threading.Thread(target=approve, args=(0, bob)), threading.Thread(target=approve, args=(1, dave))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        codes = sorted(r.returncode for r in results.values())
        assert codes[0] == 0 and codes[1] != 0, {i: (r.returncode, r.stdout, r.stderr) for i, r in results.items()}
        assert len(grants_of(plane, rid)) == 1
