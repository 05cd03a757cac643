"""The host agent in fleet mode (issue #14), against a small fake control plane speaking the documented wire
(docs/FLEET.md, "The wire and the tables of slice 2") over mutual TLS: the agent must present its host
certificate, and it verifies the server against the fleet CA and its name.

What is checked: a request filed on the host reaches the server through the outbox (and the user is told
plainly when the server cannot be reached), a streamed grant becomes a real sudoers file with NOTAFTER and
approves the local request, a streamed revocation removes it, the audit trail is shipped, and a SIGKILLed
agent resumes the stream from the cursor it committed.
"""
import datetime
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

import pytest

from conftest import Agent, wait_for
from hosts import PAM as PAM_PATH

trustme = pytest.importorskip("trustme", reason="trustme (PyPI) makes the test CA and certificates: python3 -m pip install trustme")


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeControlPlane:
    """The four host routes, in memory. `away` makes every call fail at the TLS layer's door (connection closed)."""

    def __init__(self, tmp):
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1")
        self.lock = threading.Condition()
        self.filed = []
        self.statuses = {}
        self.changes = []  # (version, grant)
        self.events = {}
        self.cursors = []
        self.peer_names = set()
        self.away = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def peer(self):
                cert = self.connection.getpeercert()  # CERT_REQUIRED: the handshake already refused a host without one
                fake.peer_names.add(json.dumps(cert.get("subjectAltName", [])))
                return cert

            def do_GET(self):
                if fake.away:
                    self.close_connection = True
                    return
                self.peer()
                u = urlparse(self.path)
                if u.path == "/v1/grants/stream":
                    q = parse_qs(u.query)
                    cursor = int(q.get("cursor", ["0"])[0])
                    wait = min(int(q.get("wait", ["30"])[0]), 2)
                    with fake.lock:
                        fake.cursors.append(cursor)
                        deadline = time.time() + wait
                        while not [c for c in fake.changes if c[0] > cursor] and time.time() < deadline and not fake.away:
                            fake.lock.wait(deadline - time.time())
                        if fake.away:  # went away while this poll was held: it must not deliver what came meanwhile
                            self.close_connection = True
                            return
                        if cursor == 0:
                            latest = {}
                            for v, g in fake.changes:
                                latest[g["id"]] = g
                            body = {"cursor": fake.changes[-1][0] if fake.changes else 0, "reset": True,
                                    "changes": [g for g in latest.values() if g["state"] == "active"]}
                        else:
                            new = [(v, g) for v, g in fake.changes if v > cursor]
                            body = {"cursor": new[-1][0] if new else cursor, "reset": False, "changes": [g for _, g in new]}
                    return self.answer(200, body)
                if u.path.startswith("/v1/requests/"):
                    rid = int(u.path.rsplit("/", 1)[1])
                    with fake.lock:
                        st = fake.statuses.get(rid)
                    if st is None:
                        return self.answer(404, {"error": {"code": "not_found", "message": f"no request {rid}"}})
                    return self.answer(200, st)
                self.answer(404, {"error": {"code": "not_found", "message": self.path}})

            def do_POST(self):
                if fake.away:
                    self.close_connection = True
                    return
                self.peer()
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/v1/requests":
                    with fake.lock:
                        for i, r in enumerate(fake.filed):
                            if r["seq"] == body["seq"]:
                                return self.answer(200, fake.statuses[500 + i])
                        fake.filed.append(body)
                        rid = 500 + len(fake.filed) - 1
                        st = {"id": rid, "state": "pending", "rule": "people", "user": body["user"], "environment": "production",
                              "hosts": [], "approver_groups": ["jit-approvers"], "grant_id": None,
                              "expires_at": rfc3339(time.time() + 3600), "message": f"request {rid} is pending"}
                        fake.statuses[rid] = st
                    return self.answer(201, st)
                if self.path == "/v1/events":
                    with fake.lock:
                        for e in body["events"]:
                            fake.events.setdefault(e["seq"], e)
                        acked = max(fake.events) if fake.events else 0
                    return self.answer(200, {"acked": acked})
                self.answer(404, {"error": {"code": "not_found", "message": self.path}})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a long-poll cut by the agent's stop or the test's teardown

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_cert.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no host certificate, no answer
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def push(self, grant):
        with self.lock:
            version = (self.changes[-1][0] if self.changes else 0) + 1
            self.changes.append((version, grant))
            self.lock.notify_all()
        return version

    def stop(self):
        self.away = True
        with self.lock:
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def write_host_files(self, folder, name):
        """What jitd enrol would have written: key (0600), certificate, CA, fleet file."""
        os.makedirs(folder, mode=0o700, exist_ok=True)
        host = self.ca.issue_cert(f"{name}.hosts.test")
        paths = {"key": os.path.join(folder, "host.key"), "certificate": os.path.join(folder, "host.pem"), "ca": os.path.join(folder, "ca.pem")}
        host.private_key_pem.write_to_path(paths["key"])
        os.chmod(paths["key"], 0o600)
        host.cert_chain_pems[0].write_to_path(paths["certificate"])
        self.ca.cert_pem.write_to_path(paths["ca"])
        fleet = os.path.join(folder, "fleet.yaml")
        with open(fleet, "w") as f:
            f.write(f"server: '{self.url}'\nname: '{name}'\nenvironment: 'production'\nlabels: ['db']\n"
                    f"key: '{paths['key']}'\ncertificate: '{paths['certificate']}'\nca: '{paths['ca']}'\n")
        os.chmod(fleet, 0o644)
        return fleet


def fleet_config(fleet, offline="best_effort"):
    return f"""environment: production
labels: [db]
policy:
  requester_groups: [jit-requesters]
  approver_groups: [jit-approvers]
  scopes: [login, sudo, commands]
server:
  fleet: {fleet}
  offline: {offline}
  offline_grace: 1m
"""


@pytest.fixture
def plane(tmpdir_root):
    p = FakeControlPlane(tmpdir_root)
    yield p
    if not p.away:
        p.stop()


@pytest.fixture
def fleet_agent(tmpdir_root, plane):
    if os.geteuid() != 0:
        pytest.skip("needs root: jitd reads peers' credentials and writes sudoers (CI runs as root)")
    fleet = plane.write_host_files(os.path.join(tmpdir_root, "fleet"), "db1")
    a = Agent(tmpdir_root, config_text=fleet_config(fleet))
    yield a
    a.stop()


def grant(gid, request_id, user, state="active", minutes=30):
    now = time.time()
    return {"id": gid, "request_id": request_id, "user": user, "environment": "production", "hosts": [], "labels": [],
            "scope": "sudo", "commands": [], "run_as": "root", "state": state, "starts_at": rfc3339(now),
            "expires_at": rfc3339(now + minutes * 60), "ended_at": rfc3339(now) if state != "active" else None,
            "ended_by": "bob" if state != "active" else None, "nopasswd": True, "login": True, "uses": None, "record": ""}


def sudoers_files(agent):
    return sorted(f for f in os.listdir(agent.sudoers) if f.startswith("jit-grant-"))


def test_request_goes_to_the_control_plane_and_the_streamed_grant_is_put_in_place(fleet_agent, plane, people):
    alice, bob = people["alice"], people["bob"]
    fleet_agent.start()
    p = fleet_agent.jit(alice, "request", "--sudo", "--for", "30m", "--reason", "deploy 42")
    assert p.returncode == 0, p.stderr
    # The agent waits (bounded) for the control plane's number, and names it: that is what approvers see.
    assert f"request 500 is waiting for approval on the control plane ({plane.url}); an approver runs there: jit approve 500" in p.stdout, p.stdout
    assert wait_for(lambda: plane.filed, limit=10), "the outbox never sent the request: " + fleet_agent.read_log()
    body = plane.filed[0]
    assert body["user"] == alice and body["scope"] == "sudo" and body["reason"] == "deploy 42" and body["duration"] == 1800
    local_id = fleet_agent.jit_json(alice, "list", "--mine")[0]["id"]
    # Approvals happen on the control plane, never on a host.
    d = fleet_agent.jit(bob, "approve", str(local_id))
    assert d.returncode != 0 and "control plane" in d.stderr

    plane.push(grant(7001, 500, alice))
    assert wait_for(lambda: sudoers_files(fleet_agent), limit=10), "no sudoers file: " + fleet_agent.read_log()
    files = sudoers_files(fleet_agent)
    with open(os.path.join(fleet_agent.sudoers, files[0])) as f:
        text = f.read()
    assert alice in text and "NOTAFTER=" in text
    assert wait_for(lambda: fleet_agent.sql(f"SELECT state FROM requests WHERE id = {local_id}") == "approved", limit=5)

    plane.push(grant(7001, 500, alice, state="revoked"))
    assert wait_for(lambda: not sudoers_files(fleet_agent), limit=5), "revocation did not remove the sudoers file"
    assert fleet_agent.sql("SELECT state FROM grants WHERE server_id = 7001") == "revoked"
    # The host's trail reaches the central one, each event once.
    assert wait_for(lambda: any(e["kind"] == "grant.revoked" for e in plane.events.values()), limit=10)
    assert int(fleet_agent.sql("SELECT events_acked FROM fleet_state")) == max(plane.events)


def test_the_user_is_told_when_the_control_plane_cannot_be_reached(fleet_agent, plane, people):
    plane.stop()
    fleet_agent.start()
    # The agent notices on its first call (a refused connection is retried until the 10 s connect timeout).
    assert wait_for(lambda: "cannot be reached" in fleet_agent.read_log(), limit=30), fleet_agent.read_log()
    p = fleet_agent.jit(people["alice"], "request", "--for", "30m", "--reason", "outage")
    assert p.returncode == 0, p.stderr
    assert f"the control plane ({plane.url}) cannot be reached" in p.stdout
    assert "break-glass exists: jit request --break-glass" in p.stdout
    assert fleet_agent.sql("SELECT count(*) FROM fleet_outbox WHERE sent_at IS NULL") != "0"


def test_a_killed_agent_resumes_the_stream_from_its_committed_cursor(fleet_agent, plane, people):
    alice = people["alice"]
    plane.push(grant(8001, 600, alice))
    fleet_agent.start()
    assert wait_for(lambda: sudoers_files(fleet_agent), limit=10), fleet_agent.read_log()
    v = plane.push(grant(8002, 601, alice))
    assert wait_for(lambda: fleet_agent.sql("SELECT cursor FROM fleet_state") == str(v), limit=10)
    fleet_agent.kill9()
    with plane.lock:
        plane.cursors.clear()
    fleet_agent.start()
    assert wait_for(lambda: plane.cursors, limit=10)
    assert plane.cursors[0] == v, "after a restart the stream must resume from the committed cursor, not from 0"
    assert fleet_agent.sql("SELECT count(*) FROM grants WHERE state = 'active' AND server_id IS NOT NULL") == "2"


def test_a_waiting_ssh_login_is_filed_with_the_control_plane_and_let_in_by_its_grant(fleet_agent, plane, people, sshd):
    from hosts import pam_args
    import threading
    alice = people["alice"]
    fleet_agent.start()
    sshd.configure(pam_args(fleet_agent, timeout=30))
    sshd.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(p=sshd.ssh(alice, "echo IN-$((40+2))", timeout=60)))
    t.start()
    assert wait_for(lambda: plane.filed, limit=20), "the refused login was not sent to the control plane: " + fleet_agent.read_log()
    body = plane.filed[0]
    assert body["user"] == alice and body["scope"] == "login" and body["rhost"] == "127.0.0.1" and body["service"] == sshd.name
    assert t.is_alive(), "the login did not wait for the control plane's decision"
    g = grant(9001, 500, alice)
    g["scope"], g["run_as"] = "login", ""
    plane.push(g)
    t.join(timeout=30)
    assert result["p"].returncode == 0, result["p"].stderr
    assert "IN-42" in result["p"].stdout
    assert fleet_agent.sql("SELECT state FROM requests WHERE server_id = 500") == "approved"


def test_strict_refuses_after_the_grace_and_catches_up_with_a_revocation_issued_meanwhile(tmpdir_root, plane, people, etc):
    """offline: strict with the shortest grace (1m): honoured while the server answers, refused once it has
    been silent for the grace, and when it is back the revocation issued meanwhile is applied."""
    from hosts import pam_args
    from test_pam_e2e import pamtester
    if os.geteuid() != 0:
        pytest.skip("needs root: jitd reads peers' credentials and writes sudoers (CI runs as root)")
    alice = people["alice"]
    fleet = plane.write_host_files(os.path.join(tmpdir_root, "fleet"), "db1")
    agent = Agent(tmpdir_root, config_text=fleet_config(fleet, offline="strict"))
    try:
        agent.start()
        svc = "jit-fl-" + os.path.basename(tmpdir_root)[-6:].lower().replace("_", "")
        etc.write(f"/etc/pam.d/{svc}", f"account required {PAM_PATH} {pam_args(agent)}\n")
        g = grant(9101, 700, alice, minutes=30)
        g["scope"], g["run_as"] = "login", ""
        plane.push(g)
        assert wait_for(lambda: pamtester(svc, alice, "acct_mgmt").returncode == 0, limit=10), agent.read_log()
        plane.away = True
        cut = time.time()
        revoked = dict(g, state="revoked", ended_at=rfc3339(time.time()), ended_by="bob")
        plane.push(revoked)
        # Within the grace the cached grant is still honoured; after it, refused.
        assert pamtester(svc, alice, "acct_mgmt").returncode == 0
        assert wait_for(lambda: pamtester(svc, alice, "acct_mgmt").returncode != 0, limit=100, step=1), agent.read_log()
        assert time.time() - cut >= 55, "refused before the grace was over"
        plane.away = False
        assert wait_for(lambda: agent.sql("SELECT state FROM grants WHERE server_id = 9101") == "revoked", limit=20), agent.read_log()
        assert pamtester(svc, alice, "acct_mgmt").returncode != 0
    finally:
        agent.stop()
