"""Approve the action (issue #17) and narrow grants inside sudo (issue #13, finding 2), with real sudo.

The PAM account stage admits a sudo use only under a grant covering that command line and run-as user (read
from sudo's own argv), spends use-limited grants (`uses: N`, `jit run --once`), and records the command of
each use; `jit run` files for exactly one command line, waits and runs it through `sudo -n --`.
"""
import json
import os
import threading

import pytest

from conftest import needs_root, run
from hosts import EtcFiles, Sudo, pam_args

pytestmark = needs_root

HEAD = """environment: production
pending_ttl: 1h
rules:
"""

AUTO_NGINX = """  - name: restart-nginx
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/systemctl restart nginx"]
    max_duration: 15m
    approvals: auto
  - name: people
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo, commands]
    runas: [root, nobody]
    max_duration: 2h
    approvals:
      groups: [jit-approvers]
"""


@pytest.fixture
def etc():
    e = EtcFiles()
    yield e
    e.cleanup()


def events(agent, kind):
    return [e for e in agent.jit_json(None, "audit") if e["kind"] == kind]


def standing_all(sudo, etc, user):
    """The standing entry the waiting-sudo flow needs: USER ALL=(ALL:ALL) NOPASSWD: ALL."""
    etc.write(f"/etc/sudoers.d/{sudo.tag}-all", f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n", mode=0o440)


def test_narrow_grant_does_not_open_a_standing_all_entry(agent, people, etc):
    """#13 finding 2: a standing NOPASSWD: ALL plus an automatic grant for one command gave root's shadow."""
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice = people["alice"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    standing_all(sudo, etc, alice)
    p = agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/systemctl restart nginx", "--reason", "stuck")
    assert p.returncode == 0 and "automatically" in p.stdout, p.stdout + p.stderr
    p = Sudo.as_user(alice, "/bin/sh", "-c", "head -1 /etc/shadow")
    assert p.returncode != 0 and "root:" not in p.stdout, p.stdout
    assert "only a grant for all commands" in p.stderr, p.stderr
    p = Sudo.as_user(alice, "/usr/bin/cat", "/etc/shadow")
    assert p.returncode != 0 and "root:" not in p.stdout
    assert "no active grant covers '/usr/bin/cat /etc/shadow' as root" in p.stderr, p.stderr
    # Another run-as user than the grant's: refused too.
    p = Sudo.as_user(alice, "-u", "nobody", "/usr/bin/systemctl", "restart", "nginx")
    assert p.returncode != 0 and "as nobody" in p.stderr, p.stderr
    # The module reads the command through sudo's options and PATH; the granted command line passes the
    # account stage (systemctl itself then fails here: no systemd as PID 1).
    for argv in (["/usr/bin/systemctl", "restart", "nginx"], ["systemctl", "restart", "nginx"],
                 ["-u", "root", "--", "/usr/bin/systemctl", "restart", "nginx"]):
        p = Sudo.as_user(alice, *argv)
        assert "jit: access denied" not in p.stderr, (argv, p.stderr)
    # Forms the module cannot be sure of are refused under a commands grant.
    for argv in (["-s"], ["-E", "/usr/bin/systemctl", "restart", "nginx"], ["LD_PRELOAD=/tmp/x.so", "/usr/bin/systemctl", "restart", "nginx"]):
        p = Sudo.as_user(alice, *argv)
        assert p.returncode != 0 and "cannot be sure" in p.stderr, (argv, p.stderr)
    # The trail names the command of each sudo check, or says it is not known.
    cmds = [e["data"].get("command", "") for e in agent.jit_json(None, "audit") if e["kind"].startswith("check.")]
    assert "/usr/bin/cat /etc/shadow" in cmds
    assert "/usr/bin/systemctl restart nginx" in cmds
    assert any(c.startswith("(not known: ") for c in cmds), cmds


def test_a_grant_for_all_commands_admits_any_command_as_its_runas_only(agent, people, etc):
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice, bob = people["alice"], people["bob"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    standing_all(sudo, etc, alice)
    rid = json.loads(agent.jit(alice, "request", "--for", "10m", "--sudo", "--reason", "x", "--json").stdout)["id"]
    assert agent.jit(bob, "approve", str(rid)).returncode == 0
    p = Sudo.as_user(alice, "/bin/sh", "-c", "id -u")
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
    p = Sudo.as_user(alice, "-s", "/usr/bin/true")
    assert p.returncode == 0, p.stderr
    # The standing entry allows -u nobody; the grant is for root only.
    p = Sudo.as_user(alice, "-u", "nobody", "/usr/bin/id", "-u")
    assert p.returncode != 0 and "as nobody" in p.stderr, p.stderr
