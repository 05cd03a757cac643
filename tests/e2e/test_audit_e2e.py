"""The audit trail end to end: a full story verifies; any single-row edit with the sqlite3 tool is caught and
named; events survive SIGKILL; syslog receives RFC 5424 events and the head hash (issue: audit trail)."""
import csv
import io
import json
import os
import socket
import threading
import time

import pytest

from conftest import REPO, needs_root, requests_until_killed, run
from hosts import EtcFiles, Sudo, pam_args

pytestmark = needs_root


class SyslogCatcher:
    """A Unix datagram socket standing in for /dev/log."""

    def __init__(self, path):
        self.path = path
        self.lines = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                self.lines.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


def audit_config(agent, extra=""):
    text = open(os.path.join(REPO, "packaging", "jit.yaml")).read()
    return text + f"\naudit:\n  syslog_socket: {agent.tmp}/log.sock\n  head_interval: 1s\n" + extra


def story(agent, people):
    alice, bob = people["alice"], people["bob"]
    p = agent.jit(alice, "request", "--for", "3s", "--sudo", "--reason", "OPS-1 story", "--json")
    rid = json.loads(p.stdout)["id"]
    assert agent.jit(bob, "approve", str(rid), "--comment", "fine").returncode == 0
    return rid


def test_full_story_is_recorded_and_verifies(agent, people, etc):
    agent.write_config(audit_config(agent))
    catcher = SyslogCatcher(f"{agent.tmp}/log.sock")
    try:
        agent.start()
        alice = people["alice"]
        Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
        story(agent, people)
        p = Sudo.as_user(alice, "/usr/bin/id", "-u")
        assert p.returncode == 0, p.stderr
        time.sleep(4)  # the 3 s grant expires
        events = agent.jit_json(None, "audit")
        kinds = [e["kind"] for e in events]
        for k in ["agent.start", "request.filed", "approval.recorded", "request.approved", "grant.started", "sudoers.written",
                  "check.sudo", "grant.expired", "sudoers.removed"]:
            assert k in kinds, (k, kinds)
        assert kinds.index("request.filed") < kinds.index("grant.started") < kinds.index("check.sudo") < kinds.index("grant.expired")
        filed = next(e for e in events if e["kind"] == "request.filed")
        assert filed["data"]["reason"] == "OPS-1 story" and filed["user"] == alice
        appr = next(e for e in events if e["kind"] == "approval.recorded")
        assert appr["actor"] == people["bob"] and appr["data"]["comment"] == "fine"
        p = agent.jit(None, "audit", "verify")
        assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
        # Syslog got every event as RFC 5424 with structured data, and the head hash.
        time.sleep(1.5)
        got = "\n".join(catcher.lines)
        assert "<85>1 " in got and "[jit@32473 " in got
        for k in ["request.filed", "grant.started", "grant.expired"]:
            assert f" {k} [jit@32473 " in got
        head = events[-1]["hash"]
        assert "audit.head" in got
    finally:
        catcher.close()


def tamper_cases():
    return {
        "change": "UPDATE audit SET actor = 'mallory' WHERE id = {n}",
        "delete": "DELETE FROM audit WHERE id = {n}",
        # Make room after event n and copy a genuine event into the gap.
        "insert": "UPDATE audit SET id = id + 1000000 WHERE id > {n}; UPDATE audit SET id = id - 999999 WHERE id > 1000000; "
                  "INSERT INTO audit SELECT {n} + 1, at, kind, actor, user, request_id, grant_id, data, prev_hash, hash FROM audit WHERE id = {n}",
        "swap": "UPDATE audit SET id = -1 WHERE id = {n}; UPDATE audit SET id = {n} WHERE id = {n} + 1; UPDATE audit SET id = {n} + 1 WHERE id = -1",
        "rewrite data": "UPDATE audit SET data = replace(data, 'OPS-1', 'OPS-9') WHERE id = {n}",
    }


@pytest.mark.parametrize("how", list(tamper_cases()))
def test_any_single_row_edit_is_caught_and_named(agent, people, how):
    agent.write_config(audit_config(agent))
    agent.start()
    story(agent, people)
    events = agent.jit_json(None, "audit")
    n = next(e["id"] for e in events if e["kind"] == "request.filed")
    last = events[-1]["id"]
    agent.stop()
    run(["sqlite3", agent.database, tamper_cases()[how].format(n=n, last=last)], check=True)
    agent.start()
    p = agent.jit(None, "audit", "verify")
    assert p.returncode == 1, p.stdout
    bad = n + 1 if how == "insert" else n
    assert "BROKEN" in p.stderr and f"event {bad}" in p.stderr, p.stderr
    v = json.loads(agent.jit(None, "audit", "verify", "--json").stdout)
    assert v["ok"] is False and v["bad_id"] == bad


def test_events_survive_sigkill(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    answered = requests_until_killed(agent, alice)
    filed = {e["request_id"] for e in agent.jit_json(None, "audit") if e["kind"] == "request.filed"}
    assert set(answered) <= filed
    p = agent.jit(None, "audit", "verify")
    assert p.returncode == 0, p.stderr
    assert agent.sql("pragma integrity_check") == "ok"


def test_reading_filters_formats_and_permissions(agent, people):
    agent.start()
    alice, carol, bob, eve = people["alice"], people["carol"], people["bob"], people["eve"]
    story(agent, people)
    assert agent.jit(carol, "request", "--for", "5m", "--reason", "carol's", "--json").returncode == 0
    mine = agent.jit_json(alice, "audit")
    assert mine and all(e["user"] == alice for e in mine)
    assert agent.jit(alice, "audit", "--user", carol).returncode == 5
    assert [e["user"] for e in agent.jit_json(bob, "audit", "--user", carol)] == [carol]
    assert agent.jit_json(eve, "audit") == []
    assert agent.jit(eve, "audit", "verify").returncode == 5
    gid = agent.jit_json(alice, "grants")[0]["id"]
    assert {e["grant_id"] for e in agent.jit_json(bob, "audit", "--grant", str(gid))} == {gid}
    assert agent.jit_json(bob, "audit", "--since", "2099-01-01T00:00:00Z") == []
    assert len(agent.jit_json(bob, "audit", "--since", "1h")) >= 4
    # JSON lines for machines, CSV for spreadsheets.
    lines = agent.jit(bob, "audit", "--jsonl").stdout.strip().splitlines()
    assert len(lines) >= 4 and all(json.loads(l)["hash"] for l in lines)
    rows = list(csv.reader(io.StringIO(agent.jit(bob, "audit", "--csv").stdout)))
    assert rows[0][:3] == ["id", "at", "kind"] and len(rows) == len(lines) + 1


def test_check_events_survive_sigkill(agent, people):
    """Checks are journalled before the reply: every answered check is in the trail after a SIGKILL."""
    from conftest import raw_call
    agent.start()
    alice = people["alice"]
    story(agent, people)
    answered = 0
    stop = threading.Event()

    def checker():
        nonlocal answered
        body = f"JIT/1 check\nuser={alice}\nservice=sudo\nsudo_mode=run\nrunas=root\ncommand=/usr/bin/id\n".encode()
        while not stop.is_set():
            try:
                if b"decision=allow" in raw_call(agent.socket, body, timeout=2):
                    answered += 1
            except OSError:
                return

    t = threading.Thread(target=checker)
    t.start()
    time.sleep(1.0)
    agent.kill9()
    stop.set()
    t.join()
    assert answered > 10
    agent.start()
    checks = [e for e in agent.jit_json(None, "audit", "--user", alice) if e["kind"] == "check.sudo"]
    assert len(checks) >= answered, (len(checks), answered)
    assert all(e["data"]["command"] == "/usr/bin/id" for e in checks)
    assert agent.jit(None, "audit", "verify").returncode == 0
