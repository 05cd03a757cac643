"""The fleet end to end (issue 14, "Done means"): a real PostgreSQL, two `jitd server` replicas behind TCP
proxies the test controls, and host agents in fleet mode on this machine, each with its own socket,
database, sudoers folder and certificate; real sshd logins and a real sudo through the built pam_jit.so.

One engineer's request, filed by a refused ssh login on host 1, is approved on the control plane (`jit
--socket <server socket> approve`), and that one grant lets them in on hosts 1 and 2 and sudo on host 3; a
host of another environment does not honour it; a revocation ends it on every host within 1 s. Then the
faults: a replica SIGKILLed while hosts stream, PostgreSQL stopped, the link blackholed (strict and
best_effort), a host agent SIGKILLed while applying changes, a join token used twice, a request forged with
another host's certificate, a host asking for another environment's grants.

Every bound is a deadline on a condition polled (never a sleep that asserts timing). Everything runs as
root and is stopped by PID and removed at the end, even when a test fails.
"""
import json
import os
import re
import time

import pytest

from conftest import needs_root, run, wait_for
from fleet import PROD, STAGING, ControlPlane, Fleet, fleet_supported, pg, server_extra  # noqa: F401 (pg is a fixture)
from hosts import PAM, Sudo, pam_args

requests = pytest.importorskip("requests")

pytestmark = needs_root


def needs_fleet_mode():
    why = fleet_supported(server_extra("{dir}"))
    if why:
        pytest.skip(why)


@pytest.fixture
def fleet(pg, tmpdir_root, etc):
    needs_fleet_mode()
    f = Fleet(pg, tmpdir_root, etc)
    yield f
    f.close()


@pytest.fixture
def team(users):
    return {"alice": users.user("alice", ["jit-requesters"]), "bob": users.user("bob", ["jit-approvers"]),
            "carl": users.user("carl", ["jit-requesters"])}


def ssh_ok(sshd, user):
    p = sshd.ssh(user, "echo IN-$((40+2))")
    return p.returncode == 0 and "IN-42" in p.stdout


def until(cond, limit, what, fleet=None):
    """Polls `cond` until true; fails naming `what` (and the logs) when `limit` seconds pass."""
    v = wait_for(cond, limit, step=0.02)
    assert v, f"{what} not within {limit} s" + ("\n" + fleet.logs() if fleet else "")
    return v


def grant_sudo(fleet, requester, approver, host, minutes=30):
    """A requester asks on `host` for sudo; the approver approves on the control plane."""
    p = fleet.hosts[host].jit(requester, "request", "--for", f"{minutes}m", "--sudo", "--reason", "fleet test", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    return fleet.approve_pending(approver, requester)


def test_a_refused_login_names_the_request_as_the_control_plane_numbers_it(fleet, team, etc):
    """Approvers see the control plane's numbers; the user is told that one (and where), not the host's own."""
    alice, bob, carl = team["alice"], team["bob"], team["carl"]
    h1, h2 = fleet.add("h1", PROD), fleet.add("h2", PROD)
    # Another host's request first, so that the control plane's numbers and host 1's own differ.
    p = h2.jit(carl, "request", "--for", "30m", "--reason", "first", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    until(lambda: fleet.pending(bob, carl), 15, "carl's request on the control plane", fleet)
    svc = "jit-flpt-" + os.path.basename(fleet.tmp)[-6:].lower().replace("_", "")
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(h1.agent, timeout=0)}\n")
    p = run(["pamtester", "-v", svc, alice, "acct_mgmt"], timeout=30)
    assert p.returncode != 0
    mine = fleet.pending(bob, alice)
    assert len(mine) == 1, mine
    sid = mine[0]["id"]
    local = [r for r in json.loads(h1.jit(None, "list", "--json").stdout) if r.get("user") == alice]
    assert local and local[0]["id"] != sid, (local, sid)
    out = p.stdout + p.stderr
    assert f"Request {sid} is waiting: an approver runs 'jit approve {sid}' on the control plane {h1.url}" in out, out
    # `jit request` on the host says the same, and gives the id in its JSON.
    p = h1.jit(alice, "request", "--for", "30m", "--sudo", "--reason", "sudo too", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    theirs = [r for r in fleet.pending(bob, alice) if r["id"] != sid]
    assert theirs and doc.get("approve_id") == theirs[0]["id"] and doc.get("approve_at") == h1.url, doc
    p = h1.jit(alice, "request", "--for", "30m", "--command", "/usr/bin/true", "--reason", "and a command")
    assert p.returncode == 0, p.stdout + p.stderr
    third = [r["id"] for r in fleet.pending(bob, alice) if r["id"] not in (sid, theirs[0]["id"])]
    assert third and f"an approver runs there: jit approve {third[0]}" in p.stdout, p.stdout


def test_a_request_cancelled_on_the_host_is_cancelled_on_the_control_plane(fleet, team):
    alice, bob = team["alice"], team["bob"]
    h1 = fleet.add("h1", PROD)
    p = h1.jit(alice, "request", "--for", "30m", "--reason", "changed my mind", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    local, sid = doc["id"], doc["approve_id"]
    assert sid and fleet.pending(bob, alice), doc
    p = h1.jit(alice, "cancel", str(local))
    assert p.returncode == 0, p.stdout + p.stderr
    until(lambda: not fleet.pending(bob, alice), 10, "the cancel on the control plane", fleet)
    shown = fleet.control_json(bob, "show", str(sid))
    assert shown["state"] == "cancelled" and shown["decided_by"] == alice, shown


# --- The main story.

def test_one_approval_grants_the_environment_and_a_revocation_ends_it_everywhere(fleet, team, etc):
    alice, bob = team["alice"], team["bob"]
    for name in ("h1", "h2", "h3"):
        fleet.add(name, PROD)
    fleet.add("s1", STAGING)
    s1, s2, s4 = fleet.sshd("h1"), fleet.sshd("h2"), fleet.sshd("s1")
    sudo = Sudo(fleet.hosts["h3"].agent, etc, [alice], pam_args(fleet.hosts["h3"].agent, timeout=0))

    # A refused ssh login on host 1 files the request (timeout=0: the module files and refuses at once).
    p = s1.ssh(alice, "echo IN")
    assert p.returncode != 0 and "IN" not in p.stdout
    rid, gid = fleet.approve_pending(bob, alice)
    grant = [g for g in fleet.control_json(bob, "grants", "--active") if g["id"] == gid][0]
    assert grant["user"] == alice

    # The same grant, without asking again: ssh on hosts 1 and 2, sudo on host 3.
    until(lambda: ssh_ok(s1, alice), 10, "login on h1 after the approval", fleet)
    until(lambda: ssh_ok(s2, alice), 10, "login on h2 with the same grant", fleet)
    assert fleet.pending(bob, alice) == [], "a second request was filed"
    # Login and sudo are separate scopes: ask for sudo once on host 3, approved once, honoured by real sudo.
    p = fleet.hosts["h3"].jit(alice, "request", "--for", "30m", "--sudo", "--reason", "fleet test", "--json")
    assert p.returncode == 0, p.stderr
    _, sudo_gid = fleet.approve_pending(bob, alice)
    until(lambda: Sudo.as_user(alice, "/usr/bin/id", "-u").stdout.strip() == "0", 10, "sudo on h3", fleet)
    # sudo's own NOTAFTER bounds the file: nothing is usable past expiry even if every agent died.
    files = [f for f in os.listdir(fleet.hosts["h3"].agent.sudoers) if f.startswith("jit-grant-")]
    assert files and all(re.search(r"NOTAFTER=\d{14}Z", open(os.path.join(fleet.hosts["h3"].agent.sudoers, f)).read()) for f in files)

    # A host of another environment does not honour it, and never even holds it.
    assert not ssh_ok(s4, alice)
    assert fleet.active("s1", alice) == []

    # Revocation on the control plane ends both grants on every host within 1 s.
    for g in (gid, sudo_gid):
        assert fleet.control(bob, "revoke", str(g)).returncode == 0
    t0 = time.monotonic()
    until(lambda: all(fleet.active(h, alice) == [] for h in ("h1", "h2", "h3")), 1.0, "revocation on h1, h2 and h3", fleet)
    took = time.monotonic() - t0
    print(f"revoke -> ended on 3 hosts: {took * 1000:.0f} ms")
    assert not ssh_ok(s1, alice) and not ssh_ok(s2, alice)
    assert Sudo.as_user(alice, "/usr/bin/id", "-u").returncode != 0
    assert not [f for f in os.listdir(fleet.hosts["h3"].agent.sudoers) if f.startswith("jit-grant-")]


# --- Faults.

def test_replica_sigkilled_while_hosts_stream(fleet, team):
    alice, bob = team["alice"], team["bob"]
    for name in ("h1", "h2"):
        fleet.add(name, PROD)
    grant_sudo(fleet, alice, bob, "h1")
    until(lambda: all(fleet.active(h, alice) for h in ("h1", "h2")), 10, "the first grant on both hosts", fleet)
    # Replica 0 dies mid-stream; its hosts reconnect (through their proxy) to replica 1.
    fleet.cp.kill(0)
    p = fleet.hosts["h2"].jit(team["carl"], "request", "--for", "30m", "--sudo", "--reason", "after the kill", "--json")
    assert p.returncode == 0, p.stderr
    found = until(lambda: [r for r in fleet.control_json(bob, "list", "--pending", replica=1) if r.get("user") == team["carl"]],
                  15, "the request filed after the kill reaching replica 1", fleet)
    out = fleet.control_json(bob, "approve", str(found[0]["id"]), replica=1)
    until(lambda: all(fleet.active(h, team["carl"]) for h in ("h1", "h2")), 10, "the grant approved on replica 1 on both hosts", fleet)
    # Nothing lost: the first grant is still held once per host.
    for h in ("h1", "h2"):
        assert len(fleet.active(h, alice)) == 1
    assert out["grant_id"]
    fleet.cp.restart(0)


def test_postgresql_stopped_hosts_keep_cached_grants_and_resume(fleet, team, pg):
    alice, bob, carl = team["alice"], team["bob"], team["carl"]
    fleet.add("h1", PROD)
    s1 = fleet.sshd("h1")
    fleet.hosts["h1"].jit(alice, "request", "--for", "30m", "--reason", "login", "--json")
    fleet.approve_pending(bob, alice)
    until(lambda: ssh_ok(s1, alice), 10, "login before the database stops", fleet)
    pg.halt()
    try:
        # Cached grants keep working; a request filed meanwhile is kept by the host.
        assert ssh_ok(s1, alice)
        p = fleet.hosts["h1"].jit(carl, "request", "--for", "30m", "--reason", "while the database is down")
        assert p.returncode == 0, p.stdout + p.stderr
        assert ssh_ok(s1, alice)
    finally:
        pg.resume()
    # Back: the queued filing reaches the control plane (nothing lost), is approved and delivered.
    fleet.approve_pending(bob, carl, limit=60)
    until(lambda: fleet.active("h1", carl), 15, "the queued request's grant after the database is back", fleet)
    assert ssh_ok(s1, alice)


def test_postgresql_stopped_a_new_request_is_told_it_is_queued(fleet, team, pg):
    carl = team["carl"]
    fleet.add("h1", PROD)
    pg.halt()
    try:
        said = []

        def file_one():
            p = fleet.hosts["h1"].jit(carl, "request", "--for", "30m", "--reason", "while the database is down")
            said.append(p.stdout + p.stderr)
            return "cannot be reached" in said[-1]
        until(file_one, 20, "a filing told that the control plane cannot be reached")
        assert "queued" in said[-1] and "break-glass" in said[-1], said[-1]
    finally:
        pg.resume()


def test_blackholed_link_strict_refuses_best_effort_keeps_both_catch_up(fleet, team, etc):
    alice, bob = team["alice"], team["bob"]
    fleet.add("strict1", PROD, offline="strict", grace="1m")  # f-host's floor: the stream answers every 25 s
    fleet.add("loose1", PROD)
    st, lo = fleet.sshd("strict1"), fleet.sshd("loose1")
    fleet.hosts["strict1"].jit(alice, "request", "--for", "30m", "--reason", "login", "--json")
    _, gid = fleet.approve_pending(bob, alice)
    until(lambda: ssh_ok(st, alice) and ssh_ok(lo, alice), 10, "login on both before the cut", fleet)
    for name in ("strict1", "loose1"):
        fleet.proxies[name].set("blackhole")
    # The strict host refuses once offline_grace (1 min) has passed without the server; best_effort keeps it.
    until(lambda: not ssh_ok(st, alice), 120, "the strict host refusing after offline_grace", fleet)
    assert ssh_ok(lo, alice)
    # Revoked while they cannot hear: after the link is back both learn it.
    assert fleet.control(bob, "revoke", str(gid)).returncode == 0
    assert ssh_ok(lo, alice), "a blackholed best_effort host cannot know of the revocation yet"
    for name in ("strict1", "loose1"):
        fleet.proxies[name].set("forward")
    until(lambda: fleet.active("loose1", alice) == [] and fleet.active("strict1", alice) == [], 60,
          "both hosts catching up with the revocation", fleet)
    assert not ssh_ok(lo, alice) and not ssh_ok(st, alice)


def test_host_agent_sigkilled_while_applying_changes(fleet, team, users):
    bob = team["bob"]
    h = fleet.add("h1", PROD)
    people = [users.user(f"r{i}", ["jit-requesters"]) for i in range(4)]
    ids = []
    for u in people:
        p = h.jit(u, "request", "--for", "30m", "--sudo", "--reason", "kill test", "--json")
        assert p.returncode == 0, p.stderr
    for u in people:
        ids.append(fleet.approve_pending(bob, u)[1])
        if len(ids) == 2:
            h.kill9()  # while it applies the change just approved; restarted, it resumes from its cursor
            h.start()
    until(lambda: all(len(fleet.active("h1", u) or []) == 1 for u in people), 20, "every grant exactly once after the restart", fleet)
    files = [f for f in os.listdir(h.agent.sudoers) if f.startswith("jit-grant-")]
    assert len(files) == len(people), files


def test_join_token_used_twice_across_replicas(pg, tmpdir_root):
    from fleet import FleetHost
    cp = ControlPlane(pg, tmpdir_root).start(count=2)
    try:
        token = cp.token(PROD)
        a, b = FleetHost(tmpdir_root, "tw1"), FleetHost(tmpdir_root, "tw2")
        assert a.enrol(cp.replica_url(0), token).returncode == 0
        p = b.enrol(cp.replica_url(1), token)
    finally:
        cp.stop()
    assert p.returncode != 0 and "already used" in p.stderr, p.stderr
    assert not os.path.exists(b.fleet)


class host_session:
    """Calls as a host: its key and certificate, the fleet CA (per call: a Session's verify loses to
    REQUESTS_CA_BUNDLE from the environment)."""

    def __init__(self, identity, ca):
        self.kw = {"cert": (identity.cert, identity.key), "verify": ca}

    def get(self, url, **kw):
        return requests.get(url, **self.kw, **kw)

    def post(self, url, **kw):
        return requests.post(url, **self.kw, **kw)


@pytest.fixture
def plane(pg, tmpdir_root):
    """Two replicas and three enrolled identities (h1, h2 of production, s1 of staging), no agents: these
    tests speak the host wire themselves, with a host's key and certificate."""
    from fleet import FleetHost
    cp = ControlPlane(pg, tmpdir_root).start(count=2)
    ids = {}
    for name, env in (("h1", PROD), ("h2", PROD), ("s1", STAGING)):
        ids[name] = FleetHost(tmpdir_root, name)
        p = ids[name].enrol(cp.replica_url(0), cp.token(env, labels=["db"], host=name))
        assert p.returncode == 0, p.stderr
    yield cp, ids
    cp.stop()


def sql_grant(cp, user, environment, state="active"):
    """A grant row as the server's engine writes it (the stream's trigger distributes it)."""
    rows = cp.pg.sql(f"""
        WITH r AS (INSERT INTO requests (user_name, uid, environment, scope, runas, duration, reason, state, created_at, expires_at)
                   VALUES ('{user}', 1000, '{environment}', 'sudo', 'root', 3600, 'test', 'approved', now(), now() + interval '1 hour')
                   RETURNING id)
        INSERT INTO grants (request_id, user_name, uid, environment, hosts, labels, scope, commands, runas, state, starts_at, expires_at, nopasswd)
        SELECT r.id, '{user}', 1000, '{environment}', '{{}}', '{{}}', 'sudo', '', 'root', '{state}', now(), now() + interval '1 hour', true
        FROM r RETURNING id""", db=cp.database)
    return int(rows[0][0])


def test_request_forged_with_another_hosts_certificate(plane, team):
    cp, ids = plane
    alice = team["alice"]
    # h1's certificate cannot be presented without h1's key: with h2's key there is no TLS session.
    with pytest.raises((requests.exceptions.SSLError, OSError)):
        requests.get(cp.url + "/v1/hosts/self", cert=(ids["h1"].cert, ids["h2"].key), verify=cp.ca, timeout=10)
    # h2, with its own certificate, claims in the body to be h1 and to file for h1: the filer is h2.
    body = {"seq": 1, "user": alice, "scope": "sudo", "commands": [], "duration": 1800, "reason": "forged", "hosts": ["h1"],
            "rhost": "", "service": "sudo", "filed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": "h1"}
    r = host_session(ids["h2"], cp.ca).post(cp.url + "/v1/requests", json=body, timeout=10)
    assert r.status_code != 500, r.text
    filers = {row[0] for row in cp.pg.sql("SELECT coalesce(filed_by_host, '') FROM requests", db=cp.database)}
    assert "h1" not in filers, filers
    if r.status_code in (200, 201):
        assert filers == {"h2"}, filers
        # h1 cannot read h2's filing.
        rid = r.json()["id"]
        assert host_session(ids["h1"], cp.ca).get(cp.url + f"/v1/requests/{rid}", timeout=10).status_code == 404
        # Nor cancel it: another host's request is not found; the filer's cancel works, and only once it is pending.
        r = host_session(ids["h1"], cp.ca).post(cp.url + f"/v1/requests/{rid}/cancel", timeout=10)
        assert r.status_code == 404, r.text
        assert cp.pg.sql(f"SELECT state FROM requests WHERE id = {rid}", db=cp.database) == [["pending"]]
        r = host_session(ids["h2"], cp.ca).post(cp.url + f"/v1/requests/{rid}/cancel", timeout=10)
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert cp.pg.sql(f"SELECT state, decided_by FROM requests WHERE id = {rid}", db=cp.database) == [["cancelled", alice]]


def test_host_cannot_read_another_environments_grants(plane, team):
    cp, ids = plane
    alice = team["alice"]
    gid = sql_grant(cp, alice, PROD)
    mine = host_session(ids["h1"], cp.ca).get(cp.url + "/v1/grants/stream?cursor=0&wait=0", timeout=20)
    assert mine.status_code == 200 and gid in [g["id"] for g in mine.json()["changes"]], mine.text
    # The staging host sees none of it, whatever it asks for: the filter is its certificate's record.
    for q in ("cursor=0", "cursor=0&environment=production", "cursor=0&host=h1&labels=db", f"cursor={mine.json()['cursor'] - 1}"):
        r = host_session(ids["s1"], cp.ca).get(cp.url + f"/v1/grants/stream?{q}&wait=0", timeout=20)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["changes"] == [] and alice not in r.text, body
    # Nor through the other replica.
    r = host_session(ids["s1"], cp.ca).get(cp.replica_url(1) + "/v1/grants/stream?cursor=0&wait=0", timeout=20)
    assert r.status_code == 200 and r.json()["changes"] == [], r.text


def test_the_server_name_runs_the_server_tree(tmpdir_root):
    """Installed as jitd-server (the server package's name), the binary runs `jitd server ...`."""
    from conftest import JITD
    link = os.path.join(tmpdir_root, "jitd-server")
    os.symlink(JITD, link)
    cfg = os.path.join(tmpdir_root, "server.yaml")
    with open(cfg, "w") as f:
        f.write("listen:\n  port: 8443\n")
    os.chmod(cfg, 0o600)
    p = run([link, "check-config", "--config", cfg])
    assert p.returncode == 1 and "public_url" in p.stderr and "is required" in p.stderr, p.stdout + p.stderr
    assert run([link, "--version"]).stdout.strip() == run([JITD, "--version"]).stdout.strip()
    p = run([link, "token", "--help"])
    assert p.returncode == 0 and "create" in p.stdout, p.stderr
