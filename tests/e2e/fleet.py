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

from conftest import JITD, run
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
        run(as_pg + [pg_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "30",
                     "-o", f"-k {self.dir} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off", "start"], check=True, timeout=60)
        self.started = True
        return self

    def createdb(self, name):
        self.sql(f'CREATE DATABASE "{name}"', db="postgres")
        return name

    def sql(self, statement, db="postgres"):
        p = run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement], check=True, timeout=30)
        return [line.split("|") for line in p.stdout.splitlines() if line]

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

    def __init__(self, pg, tmp, lifetime="1h", database=None):
        self.pg = pg
        self.dir = os.path.join(tmp, "server-" + uuid.uuid4().hex[:6])
        os.makedirs(self.dir, mode=0o700)
        self.database = database or pg.createdb("jit_" + uuid.uuid4().hex[:8])
        self.lifetime = lifetime
        self.replicas = []
        self.ports = [free_port(), free_port()]
        self.config = self.write_config(self.ports[0])
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
        cfg = self.config if i == 0 else self.write_config(self.ports[i], name=f"server{i}.yaml")
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
