"""End-to-end fixtures: throw-away users and groups, an agent on a temp socket and database, the built binaries.

Everything here runs as root (CI is root). When not root, the tests skip with a message saying so.
Every fixture cleans up after itself (users, files under /etc, processes by PID), even when a test fails.
"""
import json
import os
import pwd
import grp
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("JIT_BIN", os.path.join(REPO, ".build", "debug"))
JIT = os.path.join(BIN, "jit")
JITD = os.path.join(BIN, "jitd")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (CI runs them as root): they create users and run sudo/sshd")


def run(cmd, check=False, timeout=60, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    return p


GROUPS_LOCK = "/run/jit-e2e-groups.lock"


class Users:
    """Creates throw-away users and groups with a unique prefix; removes them all at the end.

    Shared group names (jit-requesters, ...) are held with a shared flock while a test uses them, and removed
    only by the last holder, so that two test runs on one machine never delete each other's groups."""

    def __init__(self):
        self.tag = "j" + uuid.uuid4().hex[:5]
        self.users = []
        self.groups = []
        import fcntl
        self._lock = open(GROUPS_LOCK, "a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)

    def group(self, name):
        if name not in self.groups:
            try:
                grp.getgrnam(name)
            except KeyError:
                run(["groupadd", name], check=True)
                self.groups.append(name)
        return name

    def user(self, role, groups=()):
        name = f"{self.tag}{role}"[:31]
        for g in groups:
            self.group(g)
        cmd = ["useradd", "-m", "-s", "/bin/bash"]
        if groups:
            cmd += ["-G", ",".join(groups)]
        run(cmd + [name], check=True)
        self.users.append(name)
        return name

    def cleanup(self):
        for u in self.users:
            run(["pkill", "-KILL", "-u", u])
            run(["userdel", "-r", "-f", u])
        import fcntl
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except OSError:
            last = False
        if last:
            for g in self.groups:
                run(["groupdel", g])
        self._lock.close()


class Agent:
    """jitd on a temp socket, database and sudoers folder; stopped by PID."""

    def __init__(self, tmp, config_text=None, groups=("jit-requesters", "jit-approvers"), sudoers_dir=None):
        self.tmp = tmp
        os.chmod(tmp, 0o755)
        self.socket = os.path.join(tmp, "run", "jitd.sock")
        self.database = os.path.join(tmp, "db", "jit.db")
        self.sudoers = sudoers_dir or os.path.join(tmp, "sudoers.d")
        os.makedirs(self.sudoers, mode=0o755, exist_ok=True)
        os.chmod(self.sudoers, 0o755)
        self.config = os.path.join(tmp, "jit.yaml")
        self.log = os.path.join(tmp, "jitd.log")
        self.proc = None
        if config_text is None:
            with open(os.path.join(REPO, "packaging", "jit.yaml")) as f:
                config_text = f.read()
        self.write_config(config_text)

    def write_config(self, text):
        with open(self.config, "w") as f:
            f.write(text)

    def start(self, expect_ok=True, extra=()):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [JITD, "--config", self.config, "--socket", self.socket, "--database", self.database, "--sudoers-dir", self.sudoers, *extra],
            stdout=logf, stderr=subprocess.STDOUT)
        if not expect_ok:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError("jitd kept running with a bad setup")
            return self.proc.returncode
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jitd exited {self.proc.returncode}: {self.read_log()}")
            if os.path.exists(self.socket):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.socket)
                    s.close()
                    return 0
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError("jitd did not open its socket in 15 s: " + self.read_log())

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self):
        self.stop(signal.SIGKILL)

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def jit(self, user, *args, timeout=60, env=None):
        """Runs the built jit as `user` (None = root) against this agent."""
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "JIT_SOCKET": self.socket, "LANG": "C.UTF-8"}
        if env:
            e.update(env)
        if user is None:
            cmd = [JIT, *args]
        else:
            cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", JIT, *args]
        return run(cmd, env=e, timeout=timeout)

    def jit_json(self, user, *args):
        p = self.jit(user, *args, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def sql(self, query):
        return run(["sqlite3", self.database, query], check=True).stdout.strip()


def at_a_terminal():
    """preexec_fn for a child that a test interrupts as Ctrl-C would: SIGINT at its default action. A shell
    without job control (`make check &`, nohup, some CI runners) starts its children with SIGINT ignored, and
    an ignored signal stays ignored across exec, so without this the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(cond, limit=15, step=0.05):
    """Polls `cond` until it returns something true or `limit` seconds pass; returns its last value."""
    t0 = time.time()
    while time.time() - t0 < limit:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def requests_until_killed(agent, user, seconds=1.0):
    """Files requests as `user` in a loop, SIGKILLs the agent while they are in flight, restarts it, and
    returns the IDs of the requests that were answered before the kill."""
    answered = []
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            p = agent.jit(user, "request", "--for", "5m", "--reason", "load", "--json")
            if p.returncode == 0:
                answered.append(json.loads(p.stdout)["id"])

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(seconds)
    agent.kill9()
    stop.set()
    t.join()
    agent.start()
    assert answered, "no request was answered before the kill"
    return answered


def raw_call(sock_path, body: bytes, timeout=5):
    """Sends one frame and returns the reply body (bytes) or b'' on close."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(struct.pack(">I", len(body)) + body)
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return b""
        head += chunk
    n = struct.unpack(">I", head)[0]
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    s.close()
    return out


@pytest.fixture
def users():
    if os.geteuid() != 0:
        pytest.skip("needs root to create throw-away users (CI runs as root)")
    u = Users()
    yield u
    u.cleanup()


@pytest.fixture
def tmpdir_root():
    d = tempfile.mkdtemp(prefix="jit-e2e-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agent(tmpdir_root):
    if os.geteuid() != 0:
        pytest.skip("needs root: jitd reads peers' credentials and writes sudoers (CI runs as root)")
    a = Agent(tmpdir_root)
    yield a
    a.stop()


@pytest.fixture
def people(users):
    """A requester, two approvers, someone who is both, and an outsider."""
    return {
        "alice": users.user("alice", ["jit-requesters"]),
        "bob": users.user("bob", ["jit-approvers"]),
        "dave": users.user("dave", ["jit-approvers"]),
        "carol": users.user("carol", ["jit-requesters", "jit-approvers"]),
        "eve": users.user("eve"),
    }


@pytest.fixture
def etc():
    """Files under /etc (PAM services, sudoers includes) written by a test and removed at its end."""
    from hosts import EtcFiles
    e = EtcFiles()
    yield e
    e.cleanup()


@pytest.fixture
def sshd(tmpdir_root, etc):
    """A real sshd on 127.0.0.1 with its own PAM service name (hosts.Sshd)."""
    from hosts import Sshd
    s = Sshd(tmpdir_root, etc)
    yield s
    s.stop()
