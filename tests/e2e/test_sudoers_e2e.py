"""Temporary sudoers entries with real visudo and real sudo: written on grant, gone at expiry or revocation,
even across crashes (issue: temporary sudoers entries)."""
import json
import os
import re
import time

import pytest

from conftest import REPO, needs_root, run
from hosts import EtcFiles, Sudo

pytestmark = needs_root


def config():
    """The shipped config, with 'nobody' added as an allowed run-as user."""
    text = open(os.path.join(REPO, "packaging", "jit.yaml")).read()
    assert "runas: [root]" in text
    return text.replace("runas: [root]", "runas: [root, nobody]")


def grant(agent, people, *args, duration="10m"):
    p = agent.jit(people["alice"], "request", "--for", duration, "--reason", "test", *args, "--json")
    assert p.returncode == 0, p.stderr
    rid = json.loads(p.stdout)["id"]
    p = agent.jit(people["bob"], "approve", str(rid), "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["grant_id"]


def sudo_ok(user, *argv):
    return Sudo.as_user(user, *argv).returncode == 0


def test_exactly_the_granted_commands_and_runas(agent, people, etc):
    agent.write_config(config())
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    assert not sudo_ok(alice, "/usr/bin/id", "-u")
    gid = grant(agent, people, "--command", "/usr/bin/id -u", "--command", "/usr/bin/whoami")
    path = os.path.join(agent.sudoers, f"jit-grant-{gid}")
    st = os.stat(path)
    assert oct(st.st_mode & 0o777) == "0o440" and st.st_uid == 0 and st.st_gid == 0
    text = open(path).read()
    assert re.search(r"NOTAFTER=\d{14}Z", text)
    assert run(["visudo", "-cf", path]).returncode == 0
    p = Sudo.as_user(alice, "/usr/bin/id", "-u")
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
    assert Sudo.as_user(alice, "/usr/bin/whoami").stdout.strip() == "root"
    # Not other arguments, not other commands, not another run-as user, not a shell.
    assert not sudo_ok(alice, "/usr/bin/id", "-g")
    assert not sudo_ok(alice, "/usr/bin/id")
    assert not sudo_ok(alice, "/usr/bin/cat", "/etc/shadow")
    assert not sudo_ok(alice, "/bin/sh", "-c", "id")
    assert not sudo_ok(alice, "-u", "nobody", "/usr/bin/whoami")
    # Someone else gets nothing from alice's grant.
    assert not sudo_ok(people["eve"], "/usr/bin/id", "-u")


def test_runas_and_all_commands(agent, people, etc):
    agent.write_config(config())
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    grant(agent, people, "--sudo", "--runas", "nobody")
    assert Sudo.as_user(alice, "-u", "nobody", "/usr/bin/whoami").stdout.strip() == "nobody"
    assert not sudo_ok(alice, "/usr/bin/whoami")  # not as root


def test_revoke_removes_at_once(agent, people, etc):
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    gid = grant(agent, people, "--sudo")
    assert sudo_ok(alice, "/usr/bin/true")
    assert agent.jit(people["bob"], "revoke", str(gid)).returncode == 0
    assert os.listdir(agent.sudoers) == []
    assert not sudo_ok(alice, "/usr/bin/true")


def wait_gone(path, limit):
    t0 = time.time()
    while os.path.exists(path) and time.time() - t0 < limit:
        time.sleep(0.005)
    return not os.path.exists(path)


def test_expiry_removes_the_file_within_a_second(agent, people, etc):
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    gid = grant(agent, people, "--sudo", duration="3s")
    path = os.path.join(agent.sudoers, f"jit-grant-{gid}")
    g = agent.jit_json(alice, "grants")[0]
    assert sudo_ok(alice, "/usr/bin/true")
    expires = time.mktime(time.strptime(g["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    # The stored expiry has millisecond precision; the listing rounds down to the second.
    ms = int(agent.sql(f"select expires_at from grants where id={gid}"))
    assert abs(ms / 1000 - expires) < 1
    assert wait_gone(path, 6)
    late = time.time() - ms / 1000
    assert late < 1.0, f"file removed {late:.3f}s after expires_at"
    assert not sudo_ok(alice, "/usr/bin/true")
    assert agent.jit_json(alice, "grants")[0]["state"] == "expired"


def test_killed_agent_sudo_refuses_after_notafter_and_restart_cleans_up(agent, people, etc):
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    gid = grant(agent, people, "--sudo", duration="2s")
    path = os.path.join(agent.sudoers, f"jit-grant-{gid}")
    assert sudo_ok(alice, "/usr/bin/true")
    agent.kill9()
    time.sleep(3.5)
    # jitd is gone, the file is still there, and sudo refuses by itself (NOTAFTER).
    assert os.path.exists(path)
    assert not sudo_ok(alice, "/usr/bin/true")
    t0 = time.time()
    agent.start()
    assert wait_gone(path, 1.0), "stale file not removed within 1 s of restart"
    assert time.time() - t0 < 2
    assert agent.jit_json(alice, "grants")[0]["state"] == "expired"


def test_crash_between_temp_write_and_rename_leaves_nothing_sudo_reads(agent, people, etc):
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    agent.kill9()
    # What a crash between write and rename leaves: a dot-named temp file (sudo ignores names with a dot).
    tmp = os.path.join(agent.sudoers, ".jit-tmp-12345")
    with open(tmp, "w") as f:
        f.write(f"{alice} ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(tmp, 0o440)
    assert not sudo_ok(alice, "/usr/bin/true")
    agent.start()
    assert not os.path.exists(tmp)
    assert "temporary sudoers" in agent.read_log()


@pytest.mark.parametrize("how", ["full", "readonly"])
def test_full_disk_or_read_only_sudoers_dir_fails_the_grant_loudly(agent, people, etc, tmpdir_root, how):
    mnt = os.path.join(tmpdir_root, "sd")
    os.makedirs(mnt)
    run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", mnt], check=True)
    try:
        agent.sudoers = mnt
        agent.start()
        alice = people["alice"]
        Sudo(agent, etc, [alice], account_args=None)
        if how == "full":
            run(["dd", "if=/dev/zero", f"of={mnt}/.fill", "bs=4k", "count=64"])
        else:
            run(["mount", "-o", "remount,ro", mnt], check=True)
        p = agent.jit(alice, "request", "--for", "10m", "--sudo", "--reason", "x", "--json")
        rid = json.loads(p.stdout)["id"]
        p = agent.jit(people["bob"], "approve", str(rid))
        assert p.returncode == 1
        assert "could not be put in place" in p.stderr and "revoked" in p.stderr
        assert [f for f in os.listdir(mnt) if f.startswith("jit-") or f.startswith(".jit-tmp")] == []
        assert agent.jit_json(alice, "grants")[0]["state"] == "revoked"
        assert not sudo_ok(alice, "/usr/bin/true")
        # The agent keeps serving.
        assert agent.jit(None, "status").returncode == 0
        assert agent.proc.poll() is None
    finally:
        run(["umount", "-l", mnt])


def test_hand_edited_file_is_put_back_and_reported(agent, people, etc):
    agent.write_config(open(os.path.join(REPO, "packaging", "jit.yaml")).read() + "\nreconcile_interval: 1s\n")
    agent.start()
    alice = people["alice"]
    Sudo(agent, etc, [alice], account_args=None)
    gid = grant(agent, people, "--command", "/usr/bin/id -u")
    path = os.path.join(agent.sudoers, f"jit-grant-{gid}")
    original = open(path).read()
    os.chmod(path, 0o640)
    with open(path, "w") as f:
        f.write(f"{alice} ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(path, 0o440)
    deadline = time.time() + 5
    while time.time() < deadline and open(path).read() != original:
        time.sleep(0.1)
    assert open(path).read() == original
    # The repair is reported in the log and recorded in the audit trail (just after the file is back).
    deadline = time.time() + 5
    while time.time() < deadline and "drift" not in agent.read_log():
        time.sleep(0.05)
    assert "drift" in agent.read_log()
    assert any(e["kind"] == "sudoers.repaired" and e["grant_id"] == gid for e in agent.jit_json(None, "audit"))
    assert not sudo_ok(alice, "/usr/bin/whoami")
    # A stray jit-grant file for no grant goes; a file without the prefix is never touched.
    stray = os.path.join(agent.sudoers, "jit-grant-999")
    other = os.path.join(agent.sudoers, "admin-notes")
    for pth in (stray, other):
        with open(pth, "w") as f:
            f.write("# nothing\n")
        os.chmod(pth, 0o440)
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(stray):
        time.sleep(0.1)
    assert not os.path.exists(stray)
    assert os.path.exists(other)


@pytest.mark.parametrize("command", [
    "/usr/bin/id\nALL ALL=(ALL) NOPASSWD: ALL",
    "/usr/bin/id, /bin/sh",
    "/usr/bin/id : ALL",
    "!/usr/bin/id",
    "/usr/bin/id =ALL",
    "/usr/bin/id \\",
    "ALL",
    "/usr/bin/*",
    "usr/bin/id",
    "/usr/bin/../../bin/sh",
    "sudoedit /etc/shadow",
])
def test_injection_is_refused_before_anything_is_written(agent, people, etc, command):
    agent.start()
    p = agent.jit(people["alice"], "request", "--for", "10m", "--reason", "x", "--command", command)
    assert p.returncode in (1, 2), p.stdout
    assert p.stderr.strip()
    assert agent.sql("select count(*) from requests") == "0"
    assert os.listdir(agent.sudoers) == []
