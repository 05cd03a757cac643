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


ONCE_AND_RECORDED = """  - name: once-id
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/id -u", "/usr/bin/id -g"]
    max_duration: 15m
    uses: 1
    approvals: auto
  - name: recorded-echo
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/echo jit-marker-4711"]
    max_duration: 15m
    record: output
    approvals: auto
"""


def jit_popen(agent, user, *args):
    import subprocess
    from conftest import JIT, at_a_terminal
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "JIT_SOCKET": agent.socket, "LANG": "C.UTF-8"}
    return subprocess.Popen(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", JIT, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=at_a_terminal)


def wait_pending(agent, approver, proc, limit=20):
    import time
    t0 = time.time()
    while time.time() - t0 < limit:
        rs = agent.jit_json(approver, "list", "--pending")
        if rs:
            return rs[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no pending request appeared")


def test_jit_run_files_waits_and_runs_through_sudo(agent, people, etc):
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice, bob = people["alice"], people["bob"]
    Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    p = jit_popen(agent, alice, "run", "--reason", "check uid", "--", "id", "-u")
    r = wait_pending(agent, bob, p)
    assert r["commands"] == ["/usr/bin/id -u"] and r["scope"] == "commands"
    assert agent.jit(bob, "approve", str(r["id"])).returncode == 0
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out.strip() == "0", (out, err)
    assert f"request {r['id']}" in err and "jit-approvers" in err, err
    # The command's own exit status comes back.
    p = jit_popen(agent, alice, "run", "--reason", "fail", "--", "/usr/bin/false")
    r = wait_pending(agent, bob, p)
    assert agent.jit(bob, "approve", str(r["id"])).returncode == 0
    p.communicate(timeout=30)
    assert p.returncode == 1


def test_jit_run_refuses_relative_and_unknown_commands_before_filing(agent, people):
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice = people["alice"]
    for argv in (["./id"], ["bin/id"], ["no-such-program-4711"], ["/usr/bin/../bin/id"]):
        p = agent.jit(alice, "run", "--reason", "x", "--", *argv)
        assert p.returncode == 2 and p.stderr.startswith("jit: "), (argv, p.stderr)
    p = agent.jit(alice, "run", "--reason", "x", "/usr/bin/id")
    assert p.returncode == 2 and "after --" in p.stderr, p.stderr
    assert agent.jit_json(None, "list") == []


def test_ctrl_c_cancels_and_a_denied_run_runs_nothing(agent, people, etc, tmpdir_root):
    import signal
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice, bob = people["alice"], people["bob"]
    Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    p = jit_popen(agent, alice, "run", "--reason", "x", "--", "/usr/bin/id", "-u")
    r = wait_pending(agent, bob, p)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=10)
    import time
    for _ in range(100):
        if agent.jit_json(alice, "show", str(r["id"]))["state"] == "cancelled":
            break
        time.sleep(0.05)
    assert agent.jit_json(alice, "show", str(r["id"]))["state"] == "cancelled"
    marker = os.path.join(tmpdir_root, "ran")
    p = jit_popen(agent, alice, "run", "--reason", "x", "--", "/usr/bin/touch", marker)
    r = wait_pending(agent, bob, p)
    assert agent.jit(bob, "deny", str(r["id"]), "--comment", "no").returncode == 0
    out, err = p.communicate(timeout=30)
    assert p.returncode == 3 and "not granted" in err, err
    assert not os.path.exists(marker)


def test_a_one_shot_grant_is_spent_by_its_first_sudo(agent, people, etc):
    agent.write_config(HEAD + ONCE_AND_RECORDED)
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    assert agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/id -u", "--reason", "x").returncode == 0
    gid = agent.jit_json(alice, "grants")[0]["id"]
    path = os.path.join(agent.sudoers, f"jit-grant-{gid}")
    assert os.path.exists(path)
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode != 0
    assert not os.path.exists(path)
    g = agent.jit_json(alice, "grants")[0]
    assert g["state"] == "used" and g["uses"] == 1 and g["uses_left"] == 0, g
    # With a standing entry, sudo gets as far as the account stage, which says the grant was spent.
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    standing_all(sudo, etc, alice)
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode != 0 and f"grant {gid} was spent" in p.stderr, p.stderr
    uses = events(agent, "sudo.use")
    assert len(uses) == 1 and uses[0]["data"]["command"] == "/usr/bin/id -u" and uses[0]["grant_id"] == gid
    assert events(agent, "grant.used")


def test_two_concurrent_first_uses_admit_at_most_one(agent, people, etc):
    import subprocess
    agent.write_config(HEAD + ONCE_AND_RECORDED)
    agent.start()
    alice = people["alice"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    standing_all(sudo, etc, alice)
    assert agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/id -g", "--reason", "x").returncode == 0
    procs = [subprocess.Popen(["setpriv", "--reuid", alice, "--regid", alice, "--init-groups", "--", "sudo", "-n", "/usr/bin/id", "-g"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"}) for _ in range(6)]
    codes = [p.wait(timeout=60) for p in procs]
    assert codes.count(0) == 1, codes


def test_a_recorded_grant_leaves_a_replayable_recording_linked_in_the_trail(agent, people, etc, tmpdir_root):
    io = os.path.join(tmpdir_root, "sudo-io")
    agent.write_config(HEAD.replace("pending_ttl: 1h\n", f"pending_ttl: 1h\nsudo_io_dir: {io}\n") + ONCE_AND_RECORDED + AUTO_NGINX)
    agent.start()
    alice, bob, eve = people["alice"], people["bob"], people["eve"]
    Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    p = agent.jit(alice, "run", "--reason", "marker", "--", "/usr/bin/echo", "jit-marker-4711")
    assert p.returncode == 0 and "jit-marker-4711" in p.stdout, p.stdout + p.stderr
    g = agent.jit_json(alice, "grants")[0]
    text = open(os.path.join(agent.sudoers, f"jit-grant-{g['id']}")).read()
    assert "LOG_OUTPUT:" in text and f"iolog_dir={io}/{g['id']}" in text, text
    listed = agent.jit_json(alice, "replay", str(g["id"]))
    assert len(listed) == 1 and listed[0]["command"] == "/usr/bin/echo jit-marker-4711", listed
    tsid = listed[0]["session"]
    # sudo's own sudoreplay shows the marker; so does jit replay, for the requester and an approver.
    assert "jit-marker-4711" in run(["sudoreplay", "-d", f"{io}/{g['id']}", "-m", "0", tsid]).stdout
    for who in (alice, bob):
        p = agent.jit(who, "replay", str(g["id"]), "--session", tsid)
        assert p.returncode == 0 and "jit-marker-4711" in p.stdout, p.stdout + p.stderr
    p = agent.jit(eve, "replay", str(g["id"]))
    assert p.returncode == 5, p.stderr
    linked = events(agent, "sudo.recording")
    assert len(linked) == 1 and linked[0]["data"]["tsid"] == tsid and linked[0]["grant_id"] == g["id"]
    assert linked[0]["data"]["command"] == "/usr/bin/echo jit-marker-4711"
    checks = [e for e in events(agent, "check.sudo") if e["grant_id"] == g["id"]]
    assert checks and checks[0]["data"]["command"] == "/usr/bin/echo jit-marker-4711"


def test_a_sudo_that_waits_for_approval_spends_the_one_shot_grant_it_was_approved(agent, people, etc):
    """The account stage files for exactly the command being run, waits, and then admits the use with a fresh
    check, which spends the one-shot grant: a second sudo is refused even within the window."""
    import subprocess
    agent.write_config(HEAD + """  - name: approved-once
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/id -u"]
    max_duration: 15m
    uses: 1
    approvals: {groups: [jit-approvers]}
""")
    agent.start()
    alice, bob = people["alice"], people["bob"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=30))
    standing_all(sudo, etc, alice)
    p = subprocess.Popen(["setpriv", "--reuid", alice, "--regid", alice, "--init-groups", "--", "sudo", "-n", "/usr/bin/id", "-u"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    r = wait_pending(agent, bob, p)
    assert r["scope"] == "commands" and r["commands"] == ["/usr/bin/id -u"] and r["uses"] == 1, r
    assert agent.jit(bob, "approve", str(r["id"])).returncode == 0
    out, err = p.communicate(timeout=30)
    # sudo shows the module's "waiting" notice on stdout too.
    assert p.returncode == 0 and "0" in out.splitlines(), (out, err)
    g = agent.jit_json(alice, "grants")[0]
    assert g["state"] == "used", g
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode != 0 and "was spent" in p.stderr, p.stderr


def test_a_bare_name_runs_what_sudo_resolved_not_what_the_callers_path_holds(agent, people, etc):
    """The caller puts ~/bin/systemctl first in PATH: sudo (secure_path) runs /usr/bin/systemctl, and the module
    reads sudo's own resolution (SUDO_COMMAND through sudo's getenv hook, never the caller's exported one)."""
    agent.write_config(HEAD + AUTO_NGINX)
    agent.start()
    alice = people["alice"]
    sudo = Sudo(agent, etc, [alice], account_args=pam_args(agent, timeout=0))
    standing_all(sudo, etc, alice)
    assert agent.jit(alice, "request", "--for", "10m", "--command", "/usr/bin/systemctl restart nginx", "--reason", "x").returncode == 0
    home = os.path.expanduser(f"~{alice}")
    os.makedirs(f"{home}/bin", exist_ok=True)
    with open(f"{home}/bin/systemctl", "w") as f:
        f.write("#!/bin/sh\nhead -1 /etc/shadow\n")
    os.chmod(f"{home}/bin/systemctl", 0o755)
    run(["chown", "-R", f"{alice}:{alice}", f"{home}/bin"], check=True)
    env = {"PATH": f"{home}/bin:/usr/bin:/bin", "SUDO_COMMAND": "/usr/bin/systemctl restart nginx"}
    p = run(["setpriv", "--reuid", alice, "--regid", alice, "--init-groups", "--", "sudo", "-n", "systemctl", "restart", "nginx"], env=env)
    assert "root:" not in p.stdout and "jit: access denied" not in p.stderr, (p.stdout, p.stderr)
    # An exported SUDO_COMMAND never passes for sudo's: the shell is still refused.
    env["SUDO_COMMAND"] = "/usr/bin/systemctl restart nginx"
    p = run(["setpriv", "--reuid", alice, "--regid", alice, "--init-groups", "--", "sudo", "-n", "/bin/sh", "-c", "head -1 /etc/shadow"], env=env)
    assert p.returncode != 0 and "root:" not in p.stdout, p.stdout
    cmds = [e["data"]["command"] for e in events(agent, "check.sudo")]
    assert cmds == ["/usr/bin/systemctl restart nginx"], cmds
