"""Approving from anywhere (#15): `jit login` with an SSH key in a real ssh-agent, then jit against the control plane.

The approver is a user with no login on any host: only a key registered on the server and a real ssh-agent.
The server runs a real PostgreSQL (people, nonces, tokens, decisions) and its own engine behind /v1/call.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import JIT, needs_root, run
from fleet import ControlPlane, pg  # noqa: F401 (pg is a fixture)

pytestmark = needs_root


POLICY = """pending_ttl: 1h
rules:
"""

RULES = """  - name: anywhere
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    max_duration: 4h
    approvals: {groups: [jit-approvers]}
"""


class PeoplePlane(ControlPlane):
    """A control plane with a policy; /v1/call runs its own engine (PostgreSQL), as the token's user."""

    def __init__(self, pg, tmp, rules=RULES, signers=False):
        self.rules = rules
        self.signers = signers
        super().__init__(pg, tmp)
        # What an approver is handed: the fleet CA, outside the server's private folder.
        self.ca = shutil.copy(self.ca, os.path.join(tmp, os.path.basename(self.dir) + "-ca.pem"))
        os.chmod(self.ca, 0o644)

    def write_config(self, port, name=None, extra=""):
        policy = os.path.join(self.dir, "policy.yaml")
        with open(policy, "w") as f:
            f.write(POLICY + self.rules)
        os.chmod(policy, 0o644)
        sock = os.path.join(self.dir, f"{name or 'server'}.sock")
        if self.signers:
            extra += f"login:\n  allowed_signers: {self.allowed_signers}\n"
        return super().write_config(port, name, extra + f"policy: {policy}\nsocket: {sock}\n")

    @property
    def allowed_signers(self):
        return os.path.join(self.dir, "allowed_signers")

    def write_signers(self, text):
        with open(self.allowed_signers, "w") as f:
            f.write(text)
        os.chmod(self.allowed_signers, 0o644)


class Person:
    """A user with a home, an ed25519 key and a real ssh-agent of their own (socket in their home)."""

    def __init__(self, name, plane):
        self.name = name
        self.plane = plane
        self.home = os.path.expanduser(f"~{name}")
        self.key = os.path.join(self.home, "id_ed25519")
        self.agent_sock = os.path.join(self.home, "agent.sock")
        self.as_me(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", self.key], check=True)
        p = self.as_me(["ssh-agent", "-a", self.agent_sock], check=True)
        self.agent_pid = int(re.search(r"SSH_AGENT_PID=(\d+)", p.stdout).group(1))
        self.as_me(["ssh-add", self.key], check=True)
        # Only the agent holds the private key from here on.
        os.unlink(self.key)

    @property
    def pub(self):
        return self.key + ".pub"

    def env(self, extra=None):
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": self.home, "SSH_AUTH_SOCK": self.agent_sock}
        e.update(extra or {})
        return e

    def as_me(self, argv, check=False, env=None, timeout=60):
        return run(["setpriv", "--reuid", self.name, "--regid", self.name, "--init-groups", "--", *argv], env=env or self.env(), check=check, timeout=timeout)

    def jit(self, *args, env=None, timeout=60):
        return self.as_me([JIT, *args], env=self.env(env), timeout=timeout)

    def login(self, *extra):
        return self.jit("login", "--server", self.plane.url, "--ca", self.plane.ca, *extra)

    def register(self):
        p = self.plane.admin("key", "add", self.name, "--file", self.pub)
        assert p.returncode == 0, p.stderr
        return p

    def stop(self):
        try:
            os.kill(self.agent_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture
def plane(pg, tmpdir_root):
    cp = PeoplePlane(pg, tmpdir_root)
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
def persons(people, plane):
    made = {}

    def make(role):
        if role not in made:
            made[role] = Person(people[role], plane)
        return made[role]
    yield make
    for p in made.values():
        p.stop()


def test_an_approver_with_only_a_key_logs_in_lists_and_approves(plane, persons):
    bob, alice = persons("bob"), persons("alice")
    bob.register()
    alice.register()
    p = bob.login()
    assert p.returncode == 0, p.stderr
    assert f"logged in to {plane.url} as {bob.name}" in p.stdout
    cfg = os.path.join(bob.home, ".config", "jit")
    assert os.stat(cfg).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(cfg, "login.json")).st_mode & 0o777 == 0o600
    # The token is kept, and only its hash is on the server.
    token = json.load(open(os.path.join(cfg, "login.json")))["token"]
    rows = plane.pg.sql("SELECT token_hash FROM person_tokens WHERE kind = 'login'", db=plane.database)
    assert rows and all(token not in r[0] for r in rows)
    # Alice files through the server too (her login), with the same flags and output as on a host.
    assert alice.login().returncode == 0
    p = alice.jit("request", "--env", "staging", "--for", "30m", "--reason", "deploy 4411", "--json")
    assert p.returncode == 0, p.stderr
    rid = json.loads(p.stdout)["id"]
    p = bob.jit("list", "--pending")
    assert p.returncode == 0 and "deploy 4411" in p.stdout, p.stdout + p.stderr
    # Her own request: she cannot approve it (exit 5, as on a host).
    assert alice.jit("approve", str(rid)).returncode == 5
    p = bob.jit("approve", str(rid), "--comment", "ok")
    assert p.returncode == 0, p.stderr
    assert f"request {rid} approved" in p.stdout
    shown = json.loads(alice.jit("show", str(rid), "--json").stdout)
    assert shown["state"] == "approved" and shown["decided_by"] == bob.name
    assert alice.jit("show", "999999").returncode == 6
    # Logout ends the token on the server: the same token presented again is refused.
    p = bob.jit("logout")
    assert p.returncode == 0 and "logged out" in p.stdout, p.stderr
    assert not os.path.exists(os.path.join(cfg, "login.json"))
    p = bob.jit("list", env={"JIT_TOKEN": token, "JIT_SERVER": plane.url, "JIT_CA": plane.ca})
    assert p.returncode == 5 and "ended" in p.stderr, p.stderr


def test_refused_unregistered_key_and_another_users_key(plane, persons):
    bob, dave = persons("bob"), persons("dave")
    p = bob.login()
    assert p.returncode == 5 and "is not registered for" in p.stderr, p.stdout + p.stderr
    # Dave's registered key does not log bob in, nor does bob's key log in as dave.
    dave.register()
    p = bob.login("--user", dave.name)
    assert p.returncode == 5 and "is not registered for" in p.stderr, p.stderr
    p = dave.jit("login", "--server", plane.url, "--ca", plane.ca, "--user", bob.name)
    assert p.returncode == 5 and "is not registered for" in p.stderr, p.stderr
    assert dave.login().returncode == 0
    # A TLS server not verified by the CA given is refused (the system store does not know this fleet CA).
    p = dave.jit("login", "--server", plane.url)
    assert p.returncode == 4 and "TLS" in p.stderr, p.stderr
    refused = plane.pg.sql("SELECT count(*) FROM fleet_audit WHERE event = 'login_refused'", db=plane.database)
    assert int(refused[0][0]) >= 3


def test_replayed_signed_nonce_and_expired_token_are_refused(plane, persons):
    import requests
    bob = persons("bob")
    bob.register()
    class s:  # noqa: N801 (verify per call: a session's verify loses to REQUESTS_CA_BUNDLE)
        post = staticmethod(lambda url, **kw: requests.post(url, verify=plane.ca, timeout=30, **kw))
    ch = s.post(plane.url + "/v1/login/challenge", json={"user": bob.name}).json()
    text = f"jit-login-v1 {plane.url} {bob.name} {ch['nonce']}"
    sig = bob.as_me(["sh", "-c", f"printf %s '{text}' | ssh-keygen -Y sign -n jit -f {bob.pub}"], check=True).stdout
    body = {"user": bob.name, "nonce": ch["nonce"], "signature": sig}
    first = s.post(plane.url + "/v1/login", json=body)
    assert first.status_code == 201, first.text
    again = s.post(plane.url + "/v1/login", json=body)
    assert again.status_code == 401 and again.json()["error"]["code"] == "nonce_used", again.text
    # A signature over another server's URL is refused even with a fresh nonce of this server.
    ch = s.post(plane.url + "/v1/login/challenge", json={"user": bob.name}).json()
    other = f"jit-login-v1 https://evil.example {bob.name} {ch['nonce']}"
    sig = bob.as_me(["sh", "-c", f"printf %s '{other}' | ssh-keygen -Y sign -n jit -f {bob.pub}"], check=True).stdout
    r = s.post(plane.url + "/v1/login", json={"user": bob.name, "nonce": ch["nonce"], "signature": sig})
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature", r.text
    # An expired token is refused with a sentence saying so.
    token = first.json()["token"]
    plane.pg.sql(f"UPDATE person_tokens SET expires_at = now() - interval '1 second' WHERE id = '{first.json()['id']}'", db=plane.database)
    p = bob.jit("list", env={"JIT_TOKEN": token, "JIT_SERVER": plane.url, "JIT_CA": plane.ca})
    assert p.returncode == 5 and "expired" in p.stderr, p.stderr
    # A call without a token, and a host-only call with one, are refused.
    assert s.post(plane.url + "/v1/call", json={"word": "list", "fields": [], "records": []}).status_code == 401


def test_api_tokens_file_and_wait_are_scoped_and_revocable(plane, persons, people):
    bob = persons("bob")
    bob.register()
    alice = people["alice"]
    p = plane.admin("token", "create-api", "--name", "deploy", "--may", "request", "--env", "staging", "--ttl", "90d", "--as", alice)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token.startswith("jitapi_") and "shown only now" in p.stderr
    p = plane.admin("token", "create-api", "--name", "bad", "--may", "approve")
    assert p.returncode == 64 and "--as" in p.stderr, p.stderr  # EX_USAGE, as every jitd usage error
    env = {"JIT_TOKEN": token, "JIT_SERVER": plane.url, "JIT_CA": plane.ca, "PATH": "/usr/bin:/bin"}
    # A staging token cannot request production.
    p = run([JIT, "request", "--env", "production", "--for", "20m", "--reason", "deploy 4411"], env=env)
    assert p.returncode == 5 and "only in staging" in p.stderr, p.stderr
    # Nor approve anything.
    p = run([JIT, "approve", "1"], env=env)
    assert p.returncode == 5 and "not 'approve'" in p.stderr, p.stderr
    # It files and waits; bob approves from his laptop meanwhile.
    waiter = subprocess.Popen([JIT, "request", "--env", "staging", "--sudo", "--for", "20m", "--reason", "deploy 4411", "--wait", "--timeout", "2m"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert bob.login().returncode == 0
    rid = None
    deadline = time.time() + 30
    while rid is None and time.time() < deadline:
        rows = json.loads(bob.jit("list", "--pending", "--json").stdout or "[]")
        rid = next((r["id"] for r in rows if r["reason"] == "deploy 4411"), None)
        time.sleep(0.2)
    if rid is None:
        waiter.kill()
        out, err = waiter.communicate()
        raise AssertionError(f"the pipeline's request never showed up: {out} {err} {bob.jit('list', '--json').stdout}")
    assert bob.jit("approve", str(rid)).returncode == 0
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, out + err
    assert f"request {rid} approved by {bob.name}" in out
    # Last use is recorded; a revoked token is refused at once.
    p = plane.admin("token", "list-api", "--json")
    row = json.loads(p.stdout)["tokens"][0]
    assert row["name"] == "deploy" and row["last_used_at"] and row["state"] == "active"
    assert plane.admin("token", "revoke-api", "deploy").returncode == 0
    p = run([JIT, "list"], env=env)
    assert p.returncode == 5 and "revoked" in p.stderr, p.stderr


def test_ctrl_c_on_wait_over_https_cancels_the_request_on_the_server(plane, persons):
    """As against a local agent (test_agent_cli: jitd cancels when the waiting client goes away), Ctrl-C on
    `jit request --wait` cancels the request, here on the control plane, and jit ends by the signal."""
    bob, alice = persons("bob"), persons("alice")
    for p in (bob, alice):
        p.register()
        assert p.login().returncode == 0
    waiter = subprocess.Popen(["setpriv", "--reuid", alice.name, "--regid", alice.name, "--init-groups", "--",
                               JIT, "request", "--env", "staging", "--sudo", "--for", "20m", "--reason", "ctrl-c 77", "--wait"],
                              env=alice.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rid = None
    deadline = time.time() + 30
    while rid is None and time.time() < deadline:
        rows = json.loads(bob.jit("list", "--pending", "--json").stdout or "[]")
        rid = next((r["id"] for r in rows if r["reason"] == "ctrl-c 77"), None)
        time.sleep(0.2)
    if rid is None:
        waiter.kill()
        out, err = waiter.communicate()
        raise AssertionError(f"the request never showed up: {out} {err}")
    time.sleep(0.5)  # in its wait call
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=30)
    # Ended by SIGINT, as a local jit is; it says what it did.
    assert waiter.returncode == -signal.SIGINT, (waiter.returncode, out, err)
    assert f"request {rid} cancelled" in err, err
    shown = json.loads(bob.jit("show", str(rid), "--json").stdout)
    assert shown["state"] == "cancelled", shown
    # Without a signal, a --wait that times out leaves the request pending (it cancels only when interrupted).
    p = alice.jit("request", "--env", "staging", "--sudo", "--for", "20m", "--reason", "timeout 78", "--wait", "--timeout", "1s", "--json")
    assert p.returncode == 3, p.stderr
    assert json.loads(p.stdout)["state"] == "pending"


def test_jit_audit_reads_the_central_trail_for_approvers_and_only_your_own_otherwise(plane, persons):
    bob, alice = persons("bob"), persons("alice")
    for p in (bob, alice):
        p.register()
        assert p.login().returncode == 0
    r = alice.jit("request", "--env", "staging", "--sudo", "--for", "20m", "--reason", "audit 90", "--json")
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["id"]
    assert bob.jit("approve", str(rid)).returncode == 0
    # An event a host shipped (as POST /v1/events stores it).
    plane.pg.sql("INSERT INTO host_events (host, seq, at, kind, actor, user_name, data) VALUES "
                 f"('web1', 42, now(), 'session.open', 'sshd', '{alice.name}', '{{\"service\": \"sshd\", \"request_id\": \"{rid}\"}}')",
                 db=plane.database)
    r = bob.jit("audit", "--json")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)
    approved = [e for e in events if e["kind"] == "request.approved" and e["request_id"] == rid]
    assert approved and approved[0]["actor"] == bob.name and approved[0]["data"]["source"] == "server", events
    shipped = [e for e in events if e["kind"] == "session.open"]
    assert shipped and shipped[0]["data"]["host"] == "web1" and shipped[0]["data"]["source"] == "host" and shipped[0]["request_id"] == rid
    assert shipped[0]["id"] == 42 and shipped[0]["user"] == alice.name
    # The table, and the filters.
    r = bob.jit("audit", "--user", alice.name, "--since", "1h")
    assert r.returncode == 0 and "request.approved" in r.stdout and "session.open" in r.stdout, r.stdout + r.stderr
    # A plain user reads only events about themselves, and never another's.
    r = alice.jit("audit", "--json")
    assert r.returncode == 0, r.stderr
    mine = json.loads(r.stdout)
    assert mine and all(e["user"] == alice.name for e in mine) and any(e["kind"] == "session.open" for e in mine)
    r = alice.jit("audit", "--user", bob.name)
    assert r.returncode == 5 and "only approvers" in r.stderr, r.stderr
    # verify is a host's chain: refused over the network with the reason.
    r = bob.jit("audit", "verify")
    assert r.returncode != 0 and "audit_verify" in r.stderr, r.stderr


def test_config_folder_readable_by_others_is_refused(plane, persons):
    bob = persons("bob")
    bob.register()
    assert bob.login().returncode == 0
    cfg = os.path.join(bob.home, ".config", "jit")
    os.chmod(cfg, 0o755)
    p = bob.jit("list")
    assert p.returncode == 1 and "may be read by others" in p.stderr, p.stderr


def test_a_user_the_server_no_longer_knows_cannot_log_in_or_call(plane, persons, users):
    carol = persons("carol")
    carol.register()
    assert carol.login().returncode == 0
    token = json.load(open(os.path.join(carol.home, ".config", "jit", "login.json")))["token"]
    home = carol.home
    carol.stop()
    run(["pkill", "-KILL", "-u", carol.name])
    run(["userdel", carol.name], check=True)
    users.users.remove(carol.name)
    env = {"JIT_TOKEN": token, "JIT_SERVER": plane.url, "JIT_CA": plane.ca, "PATH": "/usr/bin:/bin"}
    p = run([JIT, "list"], env=env)
    assert p.returncode == 5 and "not known" in p.stderr, p.stderr
    shutil.rmtree(home, ignore_errors=True)


def test_mfa_stays_in_the_approval_over_the_server(pg, tmpdir_root):
    from test_policy_e2e import totp
    cp = PeoplePlane(pg, tmpdir_root, rules="""  - name: mfa-login
    requesters: {groups: [jit-requesters]}
    scopes: [login]
    approvals: {groups: [jit-approvers], mfa: true}
""")
    cp.start()
    from conftest import Users
    users = Users()
    made = []
    try:
        bob = Person(users.user("bob", ["jit-approvers"]), cp)
        alice = Person(users.user("alice", ["jit-requesters"]), cp)
        made += [bob, alice]
        for p in made:
            p.register()
            assert p.login().returncode == 0
        rid = json.loads(alice.jit("request", "--env", "staging", "--for", "30m", "--reason", "x", "--json").stdout)["id"]
        p = bob.jit("approve", str(rid))
        assert p.returncode == 5 and "--otp" in p.stderr, p.stderr
        p = bob.jit("mfa", "enroll")
        assert p.returncode == 0, p.stderr
        secret = p.stdout.split("secret: ")[1].split()[0]
        if time.time() % 30 > 25:
            time.sleep(31 - time.time() % 30)
        code = totp(secret)
        p = bob.jit("approve", str(rid), "--otp", code)
        assert p.returncode == 0 and "approved" in p.stdout, p.stderr
        # The same code again is a replay, refused by the server's engine.
        r2 = json.loads(alice.jit("request", "--env", "staging", "--for", "30m", "--reason", "y", "--json").stdout)["id"]
        p = bob.jit("approve", str(r2), "--otp", code)
        assert p.returncode == 5 and "already used" in p.stderr, p.stderr
    finally:
        for p in made:
            p.stop()
        users.cleanup()
        cp.stop()


def test_failed_logins_are_rate_limited_per_user(plane, persons):
    import requests
    dave = persons("dave")
    dave.register()

    def post(path, body):
        return requests.post(plane.url + path, json=body, verify=plane.ca, timeout=30)
    for _ in range(10):
        ch = post("/v1/login/challenge", {"user": dave.name}).json()
        r = post("/v1/login", {"user": dave.name, "nonce": ch["nonce"], "signature": "not a signature"})
        assert r.status_code == 401, r.text
    # Now even the right key is refused for a while, with a sentence saying why.
    p = dave.login()
    assert p.returncode == 5 and "too many failed logins" in p.stderr, p.stderr


def test_an_allowed_signers_file_is_read_at_each_login(pg, tmpdir_root, users):
    cp = PeoplePlane(pg, tmpdir_root, signers=True)
    cp.start()
    made = []
    try:
        bob = Person(users.user("bob", ["jit-approvers"]), cp)
        dave = Person(users.user("dave", ["jit-approvers"]), cp)
        made += [bob, dave]
        # Missing file: nobody through it; a key registered in PostgreSQL still works.
        assert bob.login().returncode == 5
        dave.register()
        assert dave.login().returncode == 0
        cp.write_signers(f"# laptops\n{bob.name} namespaces=\"jit\" {open(bob.pub).read()}")
        p = bob.login()
        assert p.returncode == 0, p.stderr
        # A broken line stops the whole file (the log names the line); registered keys are untouched.
        cp.write_signers(f"{bob.name} cert-authority {open(bob.pub).read()}")
        assert bob.login().returncode == 5
        assert dave.login().returncode == 0
        log = open(cp.replicas[0][2]).read()
        assert "allowed_signers:1: cert-authority is not supported" in log, log[-2000:]
    finally:
        for p in made:
            p.stop()
        cp.stop()


def test_open_login_challenges_are_capped(plane):
    import requests
    # Anyone may ask for a challenge (the user need not exist), so the open ones are capped per user and address.
    user = "nobody-" + os.path.basename(plane.dir)
    codes = [requests.post(plane.url + "/v1/login/challenge", json={"user": user}, verify=plane.ca, timeout=30).status_code for _ in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 429, codes
