"""Fleet fixtures: a throw-away PostgreSQL cluster, `jitd server` replicas and enrolled hosts, all on loopback.

Built to be reused: later slices start 2 replicas and 3 host agents with these. Everything runs as root and
is stopped by PID and removed at the end, even when a test fails.
"""
import glob
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import JIT, JITD, run, wait_for
from hosts import free_port


def pg_bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError(f"PostgreSQL's {name} is not installed: run scripts/deps.sh (it installs 'postgresql')")
    return found[-1]


class Postgres:
    """A PostgreSQL cluster made with initdb in a temp folder, on a free loopback port, trust auth."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="jit-pg-")
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.started = False

    def start(self):
        as_pg = ["runuser", "-u", "postgres", "--"]
        run(as_pg + [pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"], check=True, timeout=60)
        self.resume()
        return self

    def createdb(self, name):
        self.sql(f'CREATE DATABASE "{name}"', db="postgres")
        return name

    def sql(self, statement, db="postgres"):
        p = run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement], check=True, timeout=30)
        return [line.split("|") for line in p.stdout.splitlines() if line]

    def halt(self):
        """Stops the cluster (a fault: the database is away), keeping its data for resume()."""
        run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"], check=True, timeout=60)
        self.started = False

    def resume(self):
        run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "30",
             "-o", f"-k {self.dir} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off", "start"], check=True, timeout=60)
        self.started = True

    def stop(self):
        if self.started:
            run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=60)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg():
    """A running throw-away PostgreSQL cluster, stopped and removed at the end."""
    p = Postgres()
    try:
        yield p.start()
    finally:
        p.stop()


class ControlPlane:
    """One fleet: a server.yaml, a CA (`jitd server init`) and a database; `start()` adds a replica."""

    def __init__(self, pg, tmp, lifetime="1h", database=None, extra=""):
        self.pg = pg
        self.extra = extra
        self.dir = os.path.join(tmp, "server-" + uuid.uuid4().hex[:6])
        os.makedirs(self.dir, mode=0o700)
        self.database = database or pg.createdb("jit_" + uuid.uuid4().hex[:8])
        self.lifetime = lifetime
        self.replicas = []
        self.ports = [free_port(), free_port()]
        self.config = self.write_config(self.ports[0], extra=extra)
        p = run([JITD, "server", "init", "--config", self.config], timeout=60)
        assert p.returncode == 0, p.stderr
        self.ca = os.path.join(self.dir, "ca.pem")

    def write_config(self, port, name=None, extra=""):
        path = os.path.join(self.dir, name or "server.yaml")
        if "\nsocket:" not in "\n" + extra:
            # Each replica its own approvers' socket (the default, /run/jit/server.sock, is one per machine).
            extra += f"socket: {path[:-len('.yaml')]}.sock\n"
        text = f"""listen:
  address: 127.0.0.1
  port: {port}
public_url: https://127.0.0.1:{port}
tls:
  certificate: {self.dir}/tls.pem
  key: {self.dir}/tls.key
ca:
  certificate: {self.dir}/ca.pem
  key: {self.dir}/ca.key
database:
  host: 127.0.0.1
  port: {self.pg.port}
  user: postgres
  name: {self.database}
host_certificates:
  lifetime: {self.lifetime}
{extra}"""
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    @property
    def url(self):
        return f"https://127.0.0.1:{self.ports[0]}"

    def replica_url(self, i):
        return f"https://127.0.0.1:{self.ports[i]}"

    def spawn(self, i=0):
        """Starts replica i without waiting (several may start at once)."""
        cfg = self.config if i == 0 else self.write_config(self.ports[i], name=f"server{i}.yaml", extra=self.extra.replace("server.sock", f"server{i}.sock"))
        log = open(os.path.join(self.dir, f"server{i}.log"), "ab")
        proc = subprocess.Popen([JITD, "server", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
        self.replicas.append((proc, self.ports[i], os.path.join(self.dir, f"server{i}.log")))
        return proc

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        for proc, port, log in self.replicas:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"jitd server exited {proc.returncode}: {open(log).read()[-3000:]}")
                try:
                    ctx = ssl.create_default_context(cafile=self.ca)
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                            break
                except (OSError, ssl.SSLError):
                    if time.time() > deadline:
                        raise AssertionError(f"jitd server did not listen on {port} in {timeout} s: {open(log).read()[-3000:]}")
                    time.sleep(0.05)
        return self

    def start(self, count=1):
        for i in range(count):
            self.spawn(i)
        return self.wait_ready()

    def admin(self, *args, timeout=60):
        return run([JITD, "server", *args, "--config", self.config], timeout=timeout)

    def token(self, environment, labels=None, host=None, ttl="10m"):
        args = ["token", "create", "--environment", environment, "--ttl", ttl]
        if labels:
            args += ["--labels", ",".join(labels)]
        if host:
            args += ["--host", host]
        p = self.admin(*args)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    def hosts(self):
        p = self.admin("host", "list", "--json")
        assert p.returncode == 0, p.stderr
        return {h["name"]: h for h in json.loads(p.stdout)["hosts"]}

    def audit(self):
        return self.pg.sql("SELECT event, coalesce(host, ''), coalesce(token_id, ''), data::text FROM fleet_audit ORDER BY id", db=self.database)

    def stop(self):
        for proc, _, _ in self.replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.replicas = []


class FleetHost:
    """One host's fleet identity: its own folder for the key and certificates and its own fleet file."""

    def __init__(self, tmp, name):
        self.name = name
        self.dir = os.path.join(tmp, "host-" + name)
        self.fleet = os.path.join(tmp, f"fleet-{name}.yaml")

    def enrol_cmd(self, url, token, name=None):
        return [JITD, "enrol", "--server", url, "--token", token, "--name", name or self.name, "--dir", self.dir, "--fleet-config", self.fleet]

    def enrol(self, url, token, name=None):
        return run(self.enrol_cmd(url, token, name), timeout=60)

    def whoami(self):
        return run([JITD, "enrol", "--whoami", "--fleet-config", self.fleet], timeout=60)

    def renew(self, *extra):
        return run([JITD, "enrol", "--renew", "--fleet-config", self.fleet, *extra], timeout=60)

    @property
    def key(self):
        return os.path.join(self.dir, "host.key")

    @property
    def cert(self):
        return os.path.join(self.dir, "host.pem")


def _replica_methods():
    """Fault helpers of ControlPlane: SIGKILL one replica, start it again."""

    def kill(self, i):
        proc, port, log = self.replicas[i]
        proc.kill()
        proc.wait()
        return port

    def restart(self, i):
        proc, port, log = self.replicas[i]
        if proc.poll() is None:
            raise AssertionError(f"replica {i} is still running")
        cfg = self.config if i == 0 else os.path.join(self.dir, f"server{i}.yaml")
        logf = open(log, "ab")
        self.replicas[i] = (subprocess.Popen([JITD, "server", "--config", cfg], stdout=logf, stderr=subprocess.STDOUT), port, log)
        return self.wait_ready()

    def log(self, i=0):
        try:
            return open(self.replicas[i][2], errors="replace").read()
        except (IndexError, FileNotFoundError):
            return ""

    ControlPlane.kill = kill
    ControlPlane.restart = restart
    ControlPlane.log = log


_replica_methods()


class Proxy:
    """A TCP proxy on a free loopback port that the test controls, between hosts and the replicas (it plays the
    load balancer in front of them): a new connection goes to the first upstream that accepts, in turn, so
    when a replica dies its hosts reconnect to the other.

    Modes: `forward`; `blackhole` (connections are accepted, and what they carry is read and dropped: nothing
    is forwarded or answered, on new and already open connections alike; a host sees its calls hang until its
    own timeouts); `reset` (open connections are closed with a TCP RST, new ones are reset at once)."""

    def __init__(self, upstreams):
        import threading
        self.upstreams = list(upstreams)
        self.mode = "forward"
        self.lock = threading.Lock()
        self.conns = []
        self.next = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def set(self, mode):
        assert mode in ("forward", "blackhole", "reset")
        with self.lock:
            self.mode = mode
            conns = list(self.conns)
        if mode == "reset":
            for pair in conns:
                for s in pair:
                    self._reset(s)

    @staticmethod
    def _reset(s):
        import struct
        # Linger 0 makes close() send a RST; SHUT_RD first wakes a thread blocked reading it (sending nothing).
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def _connect_upstream(self):
        with self.lock:
            order = self.upstreams[self.next:] + self.upstreams[:self.next]
            self.next = (self.next + 1) % len(self.upstreams)
        for port in order:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
        return None

    def _accept(self):
        import threading
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                self._reset(client)
                continue
            if self.mode == "blackhole":
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            up = self._connect_upstream()
            if up is None:
                self._reset(client)
                continue
            up.settimeout(None)
            with self.lock:
                self.conns.append((client, up))
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client), daemon=True).start()

    def _drain(self, s):
        with self.lock:
            self.conns.append((s,))
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.mode == "forward":
                    dst.sendall(data)
                # blackhole: dropped; the connection stays open and silent
        except OSError:
            pass
        if self.mode == "forward":
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            conns, self.conns = self.conns, []
        for pair in conns:
            for s in pair:
                try:
                    s.close()
                except OSError:
                    pass


def host_config(env, fleet_file, offline="best_effort", grace="15m", extra=""):
    """A host's jit.yaml in fleet mode: the packaged one (its local policy governs break-glass) with this
    host's environment and a `server:` block (f-host's keys) naming its fleet file."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "packaging", "jit.yaml")) as f:
        text = f.read()
    text = text.replace("environment: production", f"environment: {env}", 1)
    return text + f"""
server:
  fleet: {fleet_file}
  offline: {offline}
  offline_grace: {grace}
{extra}"""


class FleetAgent:
    """One fleet host on this machine: an enrolled identity (its own key, certificate and fleet file), and a
    jitd with its own socket, database and sudoers folder in fleet mode. PAM service files point at its
    socket through `pam_args` (hosts.Sshd / hosts.Sudo)."""

    def __init__(self, tmp, name, cp, url, environment, labels=(), offline="best_effort", grace="15m", extra=""):
        from conftest import Agent
        self.name = name
        self.environment = environment
        self.url = url  # the control plane as this host knows it (its fleet file's server)
        self.dir = os.path.join(tmp, "agent-" + name)
        os.makedirs(self.dir, mode=0o755)
        self.identity = FleetHost(self.dir, name)
        token = cp.token(environment, labels=list(labels), host=name)
        p = self.identity.enrol(url, token)
        assert p.returncode == 0, f"enrolling {name}: {p.stderr}"
        self.agent = Agent(self.dir, config_text=host_config(environment, self.identity.fleet, offline, grace, extra))
        self.socket = self.agent.socket

    def start(self):
        self.agent.start()
        return self

    def stop(self):
        self.agent.stop()

    def kill9(self):
        self.agent.kill9()

    def jit(self, user, *args, **kw):
        return self.agent.jit(user, *args, **kw)

    def jit_json(self, user, *args):
        return self.agent.jit_json(user, *args)

    def sql(self, q):
        return self.agent.sql(q)

    def log(self):
        return self.agent.read_log()


def fleet_supported(server_extra=""):
    """None when this build has the parts fleet mode needs (f-host's `server:` in jit.yaml; the server.yaml
    keys `server_extra` uses, from f-decide), else the sentence saying which part is missing."""
    d = tempfile.mkdtemp(prefix="jit-fleetcheck-")
    try:
        path = os.path.join(d, "jit.yaml")
        with open(path, "w") as f:
            f.write(host_config("production", os.path.join(d, "fleet.yaml")))
        p = run([JITD, "check-config", "--config", path], timeout=30)
        if "server" in p.stderr and "is not a known setting" in p.stderr:
            return "this build's jitd does not know 'server:' in jit.yaml (the host agent's fleet mode, branch f-host, is not merged)"
        path = os.path.join(d, "server.yaml")
        with open(path, "w") as f:
            f.write(f"public_url: https://127.0.0.1:1\ndatabase:\n  host: 127.0.0.1\n{server_extra.replace('{dir}', d)}")
        os.chmod(path, 0o600)
        p = run([JITD, "server", "check-config", "--config", path], timeout=30)
        if "is not a known setting" in p.stderr:
            return "this build's 'jitd server' does not know a key the fleet tests give it (" + p.stderr.strip() + \
                "): the server's decisions (branch f-decide) are not merged"
        return None
    finally:
        shutil.rmtree(d, ignore_errors=True)


PROD, STAGING = "production", "staging"


POLICY = """policy:
  requester_groups: [jit-requesters]
  approver_groups: [jit-approvers]
  approvals_required: 1
  max_duration: 4h
  default_duration: 1h
  require_reason: true
  scopes: [login, sudo, commands]
limits:
  requests_per_minute: 6000
  pending_per_user: 1000
"""


def server_extra(d):
    """What server.yaml adds for the decisions (f-decide's keys): the approvers' socket in the test's own
    folder, and the policy file (jit.yaml's policy keys), written here."""
    if os.path.isdir(d):
        with open(os.path.join(d, "policy.yaml"), "w") as f:
            f.write(POLICY)
    return f"socket: {d}/server.sock\npolicy: {d}/policy.yaml\n"


class Fleet:
    """PostgreSQL, a control plane with two replicas, and host agents each behind its own proxy (so one
    host's link can be cut alone); a proxy forwards to either replica, as a load balancer would."""

    def __init__(self, pg, tmp, etc, replicas=2, extra=""):
        self.tmp, self.etc = tmp, etc
        d = os.path.join(tmp, "cp")
        os.makedirs(d, mode=0o755)
        self.cp = ControlPlane(pg, tmp, extra=server_extra(d) + extra)
        self.socket_dir = d
        self.cp.start(count=replicas)
        self.hosts = {}
        self.proxies = {}
        self.sshds = {}

    def server_socket(self, replica=0):
        return os.path.join(self.socket_dir, "server.sock" if replica == 0 else f"server{replica}.sock")

    def add(self, name, environment=PROD, labels=("db",), offline="best_effort", grace="15m", start=True, extra=""):
        proxy = Proxy(self.cp.ports[:len(self.cp.replicas)])
        self.proxies[name] = proxy
        h = FleetAgent(self.tmp, name, self.cp, proxy.url, environment, labels=labels, offline=offline, grace=grace, extra=extra)
        self.hosts[name] = h
        if start:
            h.start()
        return h

    def sshd(self, name):
        from hosts import Sshd, pam_args
        h = self.hosts[name]
        s = Sshd(h.dir, self.etc, name=f"sshd-jitfl{name}")
        s.configure(pam_args(h.agent, timeout=0))
        s.start()
        self.sshds[name] = s
        return s

    def control(self, user, *args, replica=0):
        """`JIT_SOCKET=<server socket> jit ...` on the control plane, as `user` (None = root)."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "JIT_SOCKET": self.server_socket(replica)}
        cmd = [JIT, *args]
        if user is not None:
            cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *cmd]
        return run(cmd, env=env, timeout=60)

    def control_json(self, user, *args, replica=0):
        p = self.control(user, *args, "--json", replica=replica)
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout)

    def pending(self, approver, requester):
        return [r for r in self.control_json(approver, "list", "--pending") if r.get("user") == requester]

    def approve_pending(self, approver, requester, limit=15):
        found = wait_for(lambda: self.pending(approver, requester), limit)
        assert found, f"no pending request of {requester} reached the control plane in {limit} s: " + self.logs()
        out = self.control_json(approver, "approve", str(found[0]["id"]))
        return found[0]["id"], out["grant_id"]

    def active(self, name, user):
        """The active grants host `name` holds for `user` (its own view, on its own socket)."""
        p = self.hosts[name].jit(None, "grants", "--active", "--json")
        if p.returncode != 0:
            return None
        return [g for g in json.loads(p.stdout) if g.get("user") == user]

    def logs(self):
        out = [f"--- replica {i}\n" + self.cp.log(i)[-2000:] for i in range(len(self.cp.replicas))]
        out += [f"--- host {n}\n" + h.log()[-2000:] for n, h in self.hosts.items()]
        return "\n".join(out)

    def close(self):
        for s in self.sshds.values():
            s.stop()
        for h in self.hosts.values():
            h.stop()
        for p in self.proxies.values():
            p.close()
        self.cp.stop()
