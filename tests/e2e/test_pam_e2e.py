"""pam_jit.so end to end as root: real sshd (its own PAM service file, never /etc/pam.d/sshd), real sudo, and
pamtester, against a real jitd on a temp socket and database (issue: pam_jit.so)."""
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import REPO, needs_root, run, wait_for
from hosts import PAM, EtcFiles, Sshd, Sudo, pam_args

pytestmark = needs_root


def pending_ids(agent, approver):
    return [r["id"] for r in agent.jit_json(approver, "list", "--pending")]


def test_module_is_built_and_exports_only_pam_sm():
    assert os.path.exists(PAM), "build it with make -C pam"
    out = run(["nm", "-D", "--defined-only", PAM], check=True).stdout.split()
    syms = [w for w in out if w.startswith("pam_") or w.startswith("jit")]
    assert syms and all(s.startswith("pam_sm_") for s in syms), syms
    needed = run(["objdump", "-p", PAM], check=True).stdout
    assert "libswift" not in needed


def test_key_login_without_grant_is_refused_and_files_a_request(agent, people, sshd):
    agent.start()
    sshd.configure(pam_args(agent, timeout=0))
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    p = sshd.ssh(alice, "echo IN")
    assert p.returncode != 0 and "IN" not in p.stdout
    ids = pending_ids(agent, bob)
    assert len(ids) == 1
    r = agent.jit_json(bob, "show", str(ids[0]))
    assert r["user"] == alice and r["scope"] == "login" and "127.0.0.1" in r["reason"]
    # A second attempt joins the same request instead of filing another.
    sshd.ssh(alice, "echo IN")
    assert pending_ids(agent, bob) == ids


def test_a_waiting_login_is_let_in_when_an_approver_approves(agent, people, sshd):
    agent.start()
    sshd.configure(pam_args(agent, timeout=30))
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    result = {}
    t = threading.Thread(target=lambda: result.update(p=sshd.ssh(alice, "echo IN-$((40+2))", timeout=60)))
    t.start()
    ids = wait_for(lambda: pending_ids(agent, bob))
    assert ids, "no request filed by the waiting login"
    time.sleep(0.5)
    assert t.is_alive(), "the login did not wait"
    assert agent.jit(bob, "approve", str(ids[0])).returncode == 0
    t.join(timeout=30)
    assert result["p"].returncode == 0, result["p"].stderr
    assert "IN-42" in result["p"].stdout
    # The session was reported: user, service, rhost, pid, and closed at logout.
    rows = wait_for(lambda: agent.sql("select user, service, rhost, grant_id, closed_at is not null from sessions"))
    user, service, rhost, grant, closed = rows.splitlines()[-1].split("|")
    assert user == alice and service == sshd.name and rhost == "127.0.0.1" and grant == "1"
    assert wait_for(lambda: agent.sql("select count(*) from sessions where closed_at is null") == "0")
    # After revoke, a new login is refused.
    assert agent.jit(bob, "revoke", "1").returncode == 0
    sshd.configure(pam_args(agent, timeout=0))
    p = sshd.ssh(alice, "echo IN")
    assert p.returncode != 0 and "IN" not in p.stdout


def test_dropping_the_connection_while_waiting_cancels_the_request(agent, people, sshd):
    agent.start()
    # While the account stage waits, sshd's privileged process sits in PAM and cannot notice the client
    # leaving; the module watches the client's connection and ends the wait (LoginGraceTime is the backstop),
    # which makes jitd cancel. test_security_e2e.py checks that it happens at once.
    sshd.configure(pam_args(agent, timeout=60), grace=4)
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    proc = subprocess.Popen(sshd.ssh_cmd(alice, "echo IN"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ids = wait_for(lambda: pending_ids(agent, bob))
    assert ids
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: agent.jit_json(bob, "show", str(ids[0]))["state"] == "cancelled", limit=15)
    # A late approval cannot let anyone in: the request is no longer pending.
    assert agent.jit(bob, "approve", str(ids[0])).returncode != 0
    assert agent.jit_json(bob, "grants") == []


def test_keyboard_interactive_asks_for_a_reason_and_waits(agent, people, sshd):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal; scripts/deps.sh installs it")
    agent.start()
    sshd.configure(pam_args(agent, timeout=30), kbdint=True)
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    cmd = sshd.ssh_cmd(alice, "echo IN-$((40+2))", tty=True)
    cmd[1:1] = ["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=20, encoding="utf-8")
    try:
        child.expect("Reason for access: ")
        child.sendline("OPS-7 investigate disk alert")
        child.expect("Press Enter to wait")
        ids = wait_for(lambda: pending_ids(agent, bob))
        assert ids
        r = agent.jit_json(bob, "show", str(ids[0]))
        assert r["reason"] == "OPS-7 investigate disk alert"
        child.sendline("")
        time.sleep(0.5)
        assert agent.jit(bob, "approve", str(ids[0])).returncode == 0
        child.expect("IN-42")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_a_user_the_policy_does_not_gate_is_unaffected(agent, people, sshd):
    agent.start()
    sshd.configure(pam_args(agent, timeout=0))
    sshd.start()
    p = sshd.ssh(people["eve"], "echo IN")
    assert p.returncode == 0 and "IN" in p.stdout
    assert agent.sql("select count(*) from requests") == "0"


def test_agent_down_secure_refuses_and_exempt_group_gets_in(agent, people, sshd, users):
    agent.start()
    breakglass = users.group(f"{users.tag}bg")
    ops = users.user("ops", ["jit-requesters", breakglass])
    sshd.configure(pam_args(agent, timeout=0, failmode="secure", exempt_group=breakglass))
    sshd.start()
    # With the agent up, an exempt (break-glass) pass is reported and audited.
    p = sshd.ssh(ops, "echo IN")
    assert p.returncode == 0 and "IN" in p.stdout, p.stderr
    exempt = [e for e in agent.jit_json(None, "audit", "--user", ops) if e["kind"] == "pam.exempt"]
    assert exempt and exempt[0]["data"]["why"] == "member of exempt_group" and exempt[0]["data"]["service"] == sshd.name
    agent.stop()
    p = sshd.ssh(people["alice"], "echo IN")
    assert p.returncode != 0 and "IN" not in p.stdout
    assert "jitd" in p.stderr or "agent" in p.stderr or "denied" in p.stderr.lower()
    p = sshd.ssh(ops, "echo IN")
    assert p.returncode == 0 and "IN" in p.stdout, p.stderr


def pamtester(service, user, *ops, input_text=None, timeout=30):
    return subprocess.run(["pamtester", "-v", service, user, *ops], capture_output=True, text=True, timeout=timeout,
                          input=input_text)


def test_pamtester_paths(agent, people, etc, tmpdir_root):
    agent.start()
    svc = "jit-pt-" + os.path.basename(tmpdir_root)[-6:].lower().replace("_", "")
    def service(args):
        etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {args}\nsession optional {PAM} {args}\n")
    service(pam_args(agent, timeout=0))
    alice, bob, eve = people["alice"], people["bob"], people["eve"]
    # Not gated: the module ignores, and a stack of only ignores fails in libpam, so add pam_permit.
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(agent)}\naccount required pam_permit.so\n")
    assert pamtester(svc, eve, "acct_mgmt").returncode == 0
    # Gated, no grant: denied with the request id and the approve command.
    p = pamtester(svc, alice, "acct_mgmt")
    assert p.returncode != 0
    rid = pending_ids(agent, bob)[0]
    assert f"jit approve {rid}" in p.stdout + p.stderr
    assert agent.jit(bob, "approve", str(rid)).returncode == 0
    p = pamtester(svc, alice, "acct_mgmt")
    assert p.returncode == 0, p.stdout + p.stderr
    # Sessions are reported to the agent.
    service(pam_args(agent))
    p = pamtester(svc, alice, "open_session", "close_session")
    assert p.returncode == 0, p.stdout + p.stderr
    assert agent.sql("select count(*) from sessions where service='%s' and closed_at is not null" % svc) == "1"
    # Unknown arguments fail closed.
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(agent)} bogus=1\naccount required pam_permit.so\n")
    assert pamtester(svc, alice, "acct_mgmt").returncode != 0
    # Agent down: secure denies, safe allows.
    agent.stop()
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(agent, failmode='secure')}\naccount required pam_permit.so\n")
    assert pamtester(svc, alice, "acct_mgmt").returncode != 0
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(agent, failmode='safe')}\naccount required pam_permit.so\n")
    assert pamtester(svc, alice, "acct_mgmt").returncode == 0


def test_sudo_only_while_a_grant_is_active_even_with_a_leftover_sudoers_entry(agent, people, etc):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    assert Sudo.as_user(alice, "/usr/bin/id", "-u").returncode != 0
    p = agent.jit(alice, "request", "--for", "10m", "--sudo", "--reason", "x", "--json")
    rid = json.loads(p.stdout)["id"]
    assert agent.jit(bob, "approve", str(rid)).returncode == 0
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
    gid = agent.jit_json(alice, "grants", "--active")[0]["id"]
    assert agent.jit(bob, "revoke", str(gid)).returncode == 0
    assert Sudo.as_user(alice, "/usr/bin/id", "-u").returncode != 0
    # Someone left a standing NOPASSWD entry behind: the module's account stage still refuses.
    sudo.standing_entry(alice)
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode != 0
    assert "jit" in p.stderr.lower() or "denied" in p.stderr.lower() or "not allowed" in p.stderr.lower()


def test_expiry_ends_a_running_ssh_session(agent, people, sshd):
    text = open(os.path.join(REPO, "packaging", "jit.yaml")).read().replace("expiry_warning: 5m", "expiry_warning: 2s")
    agent.write_config(text)
    agent.start()
    sshd.configure(pam_args(agent, timeout=0))
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    p = agent.jit(alice, "request", "--for", "10s", "--reason", "short", "--json")
    assert agent.jit(bob, "approve", str(json.loads(p.stdout)["id"])).returncode == 0
    expires = int(agent.sql("select expires_at from grants where id = 1")) / 1000
    p = sshd.ssh(alice, "echo STARTED; sleep 30; echo SURVIVED", timeout=40)
    ended = time.time()
    assert "STARTED" in p.stdout, p.stderr  # the login got in under the grant
    assert "SURVIVED" not in p.stdout
    assert ended - expires < 6, f"session ended {ended - expires:.1f}s after the grant expired"
    log = agent.read_log()
    assert "session" in log and "ended: grant 1 expired" in log, log
    assert agent.sql("select ended_by from sessions where grant_id = 1") == "jitd: grant 1 expired"
