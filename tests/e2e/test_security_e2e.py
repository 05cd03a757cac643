"""Issue 13, part A, end to end as root: who may say what on the check path.

Each test reproduces a finding of the security review with the tools it used (a raw JIT/1 client run as an
ordinary user, real sudo, real sshd) and fails on the code before the fix:
- 1: a user's own `check` with a faked rhost opened an automatic `when: sources:` rule and gave root;
- 6: a user's own `check` was recorded as the PAM module's (`actor=pam`);
- 7: a command grant opened ssh login;
- 9: an unauthenticated keyboard-interactive client filed a request in someone's name, and a client that
  dropped while waiting left the wait and the request behind;
- and the "Lower" items: control characters refused at the agent, the database folder and files closed,
  command grants in folders the user can write refused, programs with shell escapes flagged to approvers.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, needs_root, run, wait_for
from hosts import PAM, EtcFiles, Sshd, Sudo, pam_args

pytestmark = needs_root

HERE = os.path.dirname(os.path.abspath(__file__))


def raw_as(user, socket_path, body):
    """Sends one raw JIT/1 frame as `user` (through setpriv, so the kernel names that user) and returns the reply."""
    code = ("import socket, struct, sys; b = sys.stdin.buffer.read(); s = socket.socket(socket.AF_UNIX); s.settimeout(10); "
            "s.connect(%r); s.sendall(struct.pack('>I', len(b)) + b); d = b''\n"
            "while True:\n c = s.recv(65536)\n if not c: break\n d += c\n if len(d) >= 4 and len(d) >= 4 + struct.unpack('>I', d[:4])[0]: break\n"
            "sys.stdout.write(d[4:].decode())") % socket_path
    p = subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/usr/bin/python3", "-c", code],
                       input=body, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def waiters(agent):
    from conftest import raw_call
    reply = raw_call(agent.socket, b"JIT/1 status\n").decode()
    return int(next(l for l in reply.splitlines() if l.startswith("waiters="))[8:])


AUTO_FROM_VPN = """environment: production
pending_ttl: 1h
rules:
  - name: vpn-sudo
    requesters: {groups: [jit-requesters]}
    scopes: [sudo]
    max_duration: 1h
    approvals: auto
    when: {sources: [10.0.0.0/8]}
    refusal: sudo only from the VPN
"""


def test_finding1_a_faked_source_address_never_opens_an_automatic_rule(agent, people, etc):
    agent.write_config(AUTO_FROM_VPN)
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    body = f"JIT/1 check\nuser={alice}\nservice=sudo\nfile=1\nrhost=10.9.9.9\n".encode()
    reply = raw_as(alice, agent.socket, body)
    assert "JIT/1 error" in reply and "code=unauthorized" in reply, reply
    assert "decision=allow" not in reply
    assert agent.sql("select count(*) from grants") == "0"
    assert agent.sql("select count(*) from requests") == "0"
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode != 0 and p.stdout.strip() != "0", p.stdout + p.stderr
    # sudo itself (the module, a root peer) sends the real context: no 10.x address, so the rule refuses.
    assert agent.sql("select count(*) from grants") == "0"
    # The trail names who really sent the forged check.
    events = agent.jit_json(None, "audit", "--user", alice)
    refused = [e for e in events if e["kind"] == "check.refused"]
    assert refused and refused[0]["actor"] == alice, events
    assert "rhost" in refused[0]["data"]["fields"] and "10.9.9.9" not in json.dumps(refused[0])


def test_finding6_a_users_own_check_never_looks_like_the_modules(agent, people, etc, tmpdir_root):
    agent.start()
    alice = people["alice"]
    raw_as(alice, agent.socket, f"JIT/1 check\nuser={alice}\nservice=sshd\n".encode())
    # The module's own question, through pamtester (a root process, as sshd and sudo are).
    svc = "jit-sec-" + os.path.basename(tmpdir_root)[-6:].lower().replace("_", "")
    etc.write(f"/etc/pam.d/{svc}", f"account required {PAM} {pam_args(agent)}\naccount required pam_permit.so\n")
    subprocess.run(["pamtester", svc, alice, "acct_mgmt"], capture_output=True, timeout=30)
    events = [e for e in agent.jit_json(None, "audit", "--user", alice) if e["kind"].startswith("check.")]
    mine = [e for e in events if e["actor"] == alice]
    module = [e for e in events if e["actor"] == "pam"]
    assert mine and all(e["kind"] == "check.refused" for e in mine), events
    assert module and all(e["kind"] != "check.refused" for e in module), events
    assert len(events) == len(mine) + len(module)


COMMAND_RULE = """environment: production
pending_ttl: 1h
rules:
  - name: restart-nginx
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/systemctl restart nginx"]
    max_duration: 15m
    approvals: auto
  - name: ops
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    max_duration: 2h
    approvals:
      groups: [jit-approvers]
"""


def test_finding7_a_command_grant_does_not_open_ssh(agent, people, sshd):
    agent.write_config(COMMAND_RULE)
    agent.start()
    sshd.configure(pam_args(agent, timeout=0))
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    p = agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/systemctl restart nginx", "--reason", "OPS-1", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == "approved"
    p = sshd.ssh(alice, "echo IN")
    assert p.returncode != 0 and "IN" not in p.stdout, p.stdout + p.stderr
    # The login attempt filed a login request (under 'ops'): it does not join or ride on the command grant.
    pending = agent.jit_json(bob, "list", "--pending")
    assert len(pending) == 1 and pending[0]["scope"] == "login" and pending[0]["rule"] == "ops"
    assert agent.jit(bob, "approve", str(pending[0]["id"])).returncode == 0
    p = sshd.ssh(alice, "echo IN")
    assert p.returncode == 0 and "IN" in p.stdout, p.stderr


def test_finding7_a_sudo_grant_of_a_rule_that_grants_login_still_opens_ssh(agent, people, sshd):
    """The README's "a sudo grant also covers login" holds for rules that list login (the shipped policy does)."""
    agent.start()
    sshd.configure(pam_args(agent, timeout=0))
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    p = agent.jit(alice, "request", "--for", "10m", "--sudo", "--reason", "x", "--json")
    assert agent.jit(bob, "approve", str(json.loads(p.stdout)["id"])).returncode == 0
    p = sshd.ssh(alice, "echo IN")
    assert p.returncode == 0 and "IN" in p.stdout, p.stderr


def readme_auth_stack(agent, timeout):
    """The README's sshd auth lines: pam_jit first, then real authentication (pam_unix: these users have no
    password, so nobody can authenticate with one)."""
    return [f"auth [success=ok ignore=ignore default=die] {PAM} {pam_args(agent, timeout=timeout)}",
            "auth required pam_unix.so"]


def test_finding9_an_unauthenticated_client_files_nothing(agent, people, sshd):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal; scripts/deps.sh installs it")
    agent.start()
    # keyboard-interactive allowed on its own: no AuthenticationMethods publickey,keyboard-interactive.
    sshd.configure(pam_args(agent, timeout=0), kbdint=True, methods="any", auth_lines=readme_auth_stack(agent, 30))
    sshd.start()
    victim = people["alice"]
    cmd = sshd.ssh_cmd(victim, "echo IN", tty=True)
    cmd[1:1] = ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1"]
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=20, encoding="utf-8")
    try:
        i = child.expect(["Reason for access: ", "[Pp]assword: ", pexpect.EOF])
        if i == 0:
            child.sendline("I am not really " + victim)
            child.expect(["Press Enter", pexpect.EOF, pexpect.TIMEOUT], timeout=5)
        else:
            child.sendline("wrong-password")
            child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert i != 0, "the module asked an unauthenticated client for a reason"
    assert agent.sql("select count(*) from requests") == "0"
    assert waiters(agent) == 0


def test_finding9_a_client_that_drops_while_waiting_leaves_no_wait_and_no_request(agent, people, sshd):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal; scripts/deps.sh installs it")
    agent.start()
    # A long LoginGraceTime and timeout: only the module noticing the client left can end the wait early.
    sshd.configure(pam_args(agent, timeout=120), kbdint=True, grace=150)
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    cmd = sshd.ssh_cmd(alice, "echo IN", tty=True)
    cmd[1:1] = ["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=20, encoding="utf-8")
    try:
        child.expect("Reason for access: ")
        child.sendline("OPS-9")
        child.expect("Press Enter to wait")
        child.sendline("")
        assert wait_for(lambda: waiters(agent) == 1, limit=10)
    finally:
        child.close(force=True)
    rid = agent.jit_json(bob, "list")[0]["id"]
    assert wait_for(lambda: agent.jit_json(bob, "show", str(rid))["state"] == "cancelled", limit=20), \
        agent.jit_json(bob, "show", str(rid))
    assert wait_for(lambda: waiters(agent) == 0, limit=10)
    assert agent.jit(bob, "approve", str(rid)).returncode != 0


@pytest.mark.parametrize("field,value", [
    ("rhost", "10.0.0.1\x1b]0;owned\x07"),
    ("command", "/usr/bin/id\x1b[2J"),
    ("tty", "/dev/pts/1\u200e"),
    ("pid", "12ab"),
    ("pid", "9" * 40),
    ("command", "/usr/bin/true " + "x" * 60000),
], ids=["rhost-osc", "command-csi", "tty-lrm", "pid-letters", "pid-40-digits", "command-60k"])
def test_lower_bad_context_fields_are_refused_even_from_root(agent, people, field, value):
    agent.start()
    alice = people["alice"]
    enc = "".join(c if c.isprintable() else "%%%02X" % ord(c) if ord(c) < 0x80 else c for c in value)
    body = f"JIT/1 check\nuser={alice}\nservice=sudo\n{field}={enc}\n".encode()
    from conftest import raw_call
    reply = raw_call(agent.socket, body).decode()
    assert "JIT/1 error" in reply and "code=bad-request" in reply and f"'{field}'" in reply, reply
    csv_out = agent.jit(None, "audit", "--csv").stdout
    assert "\x1b" not in csv_out and "\u200e" not in csv_out


def test_lower_database_folder_and_files_are_closed(agent, tmpdir_root, people):
    folder = os.path.dirname(agent.database)
    os.makedirs(folder, mode=0o755)
    os.chmod(folder, 0o755)
    agent.start()
    agent.jit(people["alice"], "request", "--for", "1h", "--reason", "x")
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
    for f in [agent.database, agent.database + "-wal", agent.database + "-shm"]:
        assert oct(os.stat(f).st_mode & 0o777) == "0o600", f
    agent.stop()
    os.chown(folder, int(run(["id", "-u", people["eve"]]).stdout), 0)
    assert agent.start(expect_ok=False) != 0
    log = agent.read_log()
    assert folder in log and "chown root:root" in log, log
    os.chown(folder, 0, 0)
    os.chmod(folder, 0o777)
    assert agent.start(expect_ok=False) != 0
    assert "writable by group or others" in agent.read_log() and f"chmod 700 {folder}" in agent.read_log()


def test_lower_command_grants_in_folders_the_user_can_write_are_refused(agent, people):
    agent.start()
    alice = people["alice"]
    home = os.path.expanduser(f"~{alice}")
    os.makedirs(f"{home}/bin", exist_ok=True)
    with open(f"{home}/bin/tool", "w") as f:
        f.write("#!/bin/sh\nid\n")
    os.chmod(f"{home}/bin/tool", 0o755)
    os.chown(f"{home}/bin", int(run(["id", "-u", alice]).stdout), -1)
    p = agent.jit(alice, "request", "--for", "10m", "--command", f"{home}/bin/tool", "--reason", "x")
    assert p.returncode != 0 and "can write" in p.stderr, p.stderr
    # A root-owned file in a folder she owns is refused too (she could rename it away and put her own).
    os.chown(f"{home}/bin/tool", 0, 0)
    p = agent.jit(alice, "request", "--for", "10m", "--command", f"{home}/bin/tool", "--reason", "x")
    assert p.returncode != 0 and f"{home}/bin" in p.stderr, p.stderr
    # A symbolic link in a root folder that leads into her home is followed.
    link = os.path.join(os.path.dirname(agent.database) + "-bin", "tool")
    os.makedirs(os.path.dirname(link), mode=0o755)
    os.symlink(f"{home}/bin/tool", link)
    p = agent.jit(alice, "request", "--for", "10m", "--command", link, "--reason", "x")
    assert p.returncode != 0 and "can write" in p.stderr, p.stderr
    assert agent.sql("select count(*) from requests") == "0"


def test_lower_programs_with_shell_escapes_are_flagged_to_approvers(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    p = agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/vim /etc/hosts", "--reason", "edit hosts")
    assert p.returncode == 0, p.stderr
    assert "warning" in p.stderr and "root shell" in p.stderr
    rid = agent.jit_json(bob, "list", "--pending")[0]["id"]
    shown = agent.jit(bob, "show", str(rid)).stdout
    assert "WARNING" in shown and "vim" in shown and "editor" in shown
    assert agent.jit_json(bob, "show", str(rid))["warnings"]
    p = agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/systemctl restart nginx", "--reason", "ok")
    assert p.returncode == 0 and "warning" not in p.stderr


def test_finding9_a_key_login_that_drops_while_the_account_stage_waits_cancels_at_once(agent, people, sshd):
    agent.start()
    # LoginGraceTime and timeout far beyond the bound below: only the module watching the client ends it.
    sshd.configure(pam_args(agent, timeout=120), grace=150)
    sshd.start()
    alice, bob = people["alice"], people["bob"]
    proc = subprocess.Popen(sshd.ssh_cmd(alice, "echo IN"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ids = wait_for(lambda: [r["id"] for r in agent.jit_json(bob, "list", "--pending")])
    assert ids, "no request filed by the waiting login"
    assert wait_for(lambda: waiters(agent) == 1, limit=10)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: agent.jit_json(bob, "show", str(ids[0]))["state"] == "cancelled", limit=20)
    assert wait_for(lambda: waiters(agent) == 0, limit=10)
