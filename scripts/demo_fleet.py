#!/usr/bin/env python3
"""make demo-fleet: the fleet story of jit-access, end to end, in plain words.

Starts a throw-away PostgreSQL cluster (initdb in a temp folder, its own port), a control plane (`jitd
server`) on it, and two hosts of one environment on this machine, each a jitd in fleet mode with its own
socket, database and certificate (enrolled with a one-time join token) and a real sshd with pam_jit.so.
Then: a login refused on host 1 files a request; the approver approves it on the control plane; the same
grant lets the engineer in on both hosts; a revocation ends it on both. It leaves the machine as it found
it, even when a step fails or it is interrupted (Ctrl-C).
"""
import os
import shutil
import signal
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
os.environ.setdefault("JIT_BIN", os.path.join(REPO, ".build", "debug"))

from conftest import Users, wait_for  # noqa: E402
from fleet import PROD, Fleet, Postgres, fleet_supported, server_extra  # noqa: E402
from hosts import EtcFiles  # noqa: E402

from demo_words import fail, ok, say, show  # noqa: E402


def logs_in(sshd, user):
    p = sshd.ssh(user, "echo logged in on $(hostname) as $(id -un)")
    return p.returncode == 0 and "logged in" in p.stdout


def main():
    if os.geteuid() != 0:
        print("make demo-fleet needs root: it runs PostgreSQL, sshd and throw-away users. Run: sudo make demo-fleet", file=sys.stderr)
        return 2
    why = fleet_supported(server_extra("{dir}"))
    if why:
        print(f"make demo-fleet cannot run on this build: {why}", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="jitdemofleet")
    os.chmod(tmp, 0o755)
    users, etc = Users(), EtcFiles()
    pg = Postgres()
    fleet = None

    def cleanup():
        if fleet:
            fleet.close()
        pg.stop()
        etc.cleanup()
        users.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        say("1. A throw-away PostgreSQL cluster (initdb in a temp folder) and the control plane on it.")
        pg.start()
        print(f"  PostgreSQL on 127.0.0.1:{pg.port} (data in {pg.data})")
        fleet = Fleet(pg, tmp, etc, replicas=1)
        print(f"  jitd server on {fleet.cp.url}: schema migrated, fleet CA made; approvers use {fleet.server_socket()}")
        ana = users.user("ana", ["jit-requesters"])
        ben = users.user("ben", ["jit-approvers"])
        print(f"  throw-away users: {ana} (requester), {ben} (approver on the control plane)")

        say(f"2. Two hosts of '{PROD}' enrol with one-time join tokens and start their agents in fleet mode.")
        for name in ("db1", "db2"):
            h = fleet.add(name, PROD)
            print(f"  {name}: enrolled (certificate names host {name}, environment {PROD}, label db); jitd on {h.socket}")
        s1, s2 = fleet.sshd("db1"), fleet.sshd("db2")
        print(f"  sshd of db1 on port {s1.port}, of db2 on port {s2.port}, each asking its own agent through pam_jit.so")

        say(f"3. {ana} tries to log in on db1: refused, and the refusal files a request with the control plane.")
        p = s1.ssh(ana, "echo logged in")
        show(f"ssh {ana}@db1", p)
        if p.returncode == 0:
            fail("the login got in without a grant")
        ok("refused")
        pending = wait_for(lambda: fleet.pending(ben, ana), 15)
        if not pending:
            fail("the request did not reach the control plane")
        rid = pending[0]["id"]
        ok(f"request {rid} is pending on the control plane")

        say(f"4. {ben} approves it on the control plane, through the server's own socket.")
        p = fleet.control(ben, "approve", str(rid))
        show(f"JIT_SOCKET={fleet.server_socket()} jit approve {rid}", p)
        if p.returncode != 0:
            fail("the approval failed")

        say(f"5. The one grant is for the environment: {ana} logs in on db1 and on db2, without asking again.")
        for name, sshd in (("db1", s1), ("db2", s2)):
            t0 = time.monotonic()
            if not wait_for(lambda: logs_in(sshd, ana), 15):
                fail(f"the login on {name} was not let in")
            ok(f"logged in on {name} (let in {(time.monotonic() - t0) * 1000:.0f} ms after the approval, ssh included)")

        say("6. Revocation on the control plane ends it on every host.")
        gid = [g for g in fleet.control_json(ben, "grants", "--active") if g.get("user") == ana][0]["id"]
        p = fleet.control(ben, "revoke", str(gid))
        show(f"JIT_SOCKET={fleet.server_socket()} jit revoke {gid}", p)
        t0 = time.monotonic()
        if not wait_for(lambda: fleet.active("db1", ana) == [] and fleet.active("db2", ana) == [], 10, step=0.02):
            fail("a host still holds the revoked grant")
        ok(f"ended on db1 and db2 in {(time.monotonic() - t0) * 1000:.0f} ms")
        for name, sshd in (("db1", s1), ("db2", s2)):
            if logs_in(sshd, ana):
                fail(f"{ana} still logs in on {name}")
        ok("logins refused again on both hosts")
        say("Done. Everything is stopped and removed.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up")
        return 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
