"""The agent and the CLI, driven through the built binaries as different users (issue: agent, store and CLI)."""
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from conftest import JIT, JITD, REPO, at_a_terminal, raw_call, requests_until_killed, run, needs_root

pytestmark = needs_root

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def file_request(agent, user, *extra, duration="30m", reason="fix the disk"):
    p = agent.jit(user, "request", "--for", duration, "--reason", reason, *extra, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_socket_folder_and_modes(agent):
    agent.start()
    st = os.stat(os.path.dirname(agent.socket))
    assert stat.S_IMODE(st.st_mode) == 0o755
    st = os.lstat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666 and st.st_uid == 0


def test_request_approve_grant_story(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    r = file_request(agent, alice, "--sudo")
    assert r["state"] == "pending" and r["user"] == alice and r["scope"] == "sudo"
    assert r["environment"] == "production" and r["reason"] == "fix the disk"
    assert RFC3339.match(r["created_at"])
    listed = agent.jit_json(bob, "list", "--pending")
    assert [x["id"] for x in listed] == [r["id"]]
    p = agent.jit(bob, "approve", str(r["id"]), "--comment", "ok")
    assert p.returncode == 0, p.stderr
    assert "approved" in p.stdout
    grants = agent.jit_json(alice, "grants", "--active")
    assert len(grants) == 1
    g = grants[0]
    assert g["request_id"] == r["id"] and g["user"] == alice and g["state"] == "active" and g["scope"] == "sudo"
    assert RFC3339.match(g["expires_at"])
    shown = agent.jit_json(alice, "show", str(r["id"]))
    assert shown["state"] == "approved" and shown["decided_by"] == bob and shown["grant_id"] == g["id"]
    # The grant is a sudoers file in the configured folder.
    assert os.listdir(agent.sudoers) == [f"jit-grant-{g['id']}"]
    p = agent.jit(bob, "revoke", str(g["id"]))
    assert p.returncode == 0, p.stderr
    assert agent.jit_json(alice, "grants")[0]["state"] == "revoked"
    assert os.listdir(agent.sudoers) == []


def test_human_output_is_short_and_readable(agent, people):
    agent.start()
    p = agent.jit(people["alice"], "request", "--for", "1h30m", "--reason", "deploy", "--command", "/usr/bin/systemctl restart nginx")
    assert p.returncode == 0, p.stderr
    assert "request 1 filed: sudo /usr/bin/systemctl restart nginx in production for 1h30m" in p.stdout
    assert "jit approve 1" in p.stdout
    p = agent.jit(people["bob"], "list")
    lines = p.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "USER", "ENV"]
    assert people["alice"] in lines[1] and "pending" in lines[1]
    p = agent.jit(None, "status")
    assert "pending requests: 1" in p.stdout


def test_wait_is_woken_by_the_approval_and_exits_zero(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    result = {}

    def waiter():
        result["p"] = agent.jit(alice, "request", "--for", "10m", "--reason", "wait for me", "--wait")

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.time() + 10
    while time.time() < deadline and agent.jit_json(bob, "list", "--pending") == []:
        time.sleep(0.05)
    rid = agent.jit_json(bob, "list", "--pending")[0]["id"]
    time.sleep(0.2)
    t0 = time.time()
    assert agent.jit(bob, "approve", str(rid)).returncode == 0
    t.join(timeout=10)
    assert time.time() - t0 < 2
    assert result["p"].returncode == 0, result["p"].stderr
    assert "approved" in result["p"].stdout


@pytest.mark.parametrize("decision,code", [("deny", 3), ("cancel", 3)])
def test_wait_exits_nonzero_when_not_granted(agent, people, decision, code):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    result = {}
    t = threading.Thread(target=lambda: result.update(p=agent.jit(alice, "request", "--for", "10m", "--reason", "x", "--wait")))
    t.start()
    deadline = time.time() + 10
    while time.time() < deadline and agent.jit_json(bob, "list", "--pending") == []:
        time.sleep(0.05)
    rid = str(agent.jit_json(bob, "list", "--pending")[0]["id"])
    if decision == "deny":
        assert agent.jit(bob, "deny", rid, "--comment", "not now").returncode == 0
    else:
        assert agent.jit(alice, "cancel", rid).returncode == 0
    t.join(timeout=10)
    assert result["p"].returncode == code, result["p"].stdout + result["p"].stderr


def test_wait_timeout_exits_3_and_leaves_the_request_pending(agent, people):
    agent.start()
    p = agent.jit(people["alice"], "request", "--for", "10m", "--reason", "x", "--wait", "--timeout", "1s")
    assert p.returncode == 3
    assert "still pending" in p.stderr
    # jit exited normally after the timeout: the request is still pending (it cancels only when interrupted).
    assert agent.jit_json(people["bob"], "list", "--pending")[0]["state"] == "pending"


def test_ctrl_c_while_waiting_cancels(agent, people):
    agent.start()
    e = {"PATH": "/usr/bin:/bin", "JIT_SOCKET": agent.socket}
    p = subprocess.Popen(["setpriv", "--reuid", people["alice"], "--regid", people["alice"], "--init-groups", "--",
                          JIT, "request", "--for", "10m", "--reason", "x", "--wait"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=at_a_terminal)
    deadline = time.time() + 10
    while time.time() < deadline and agent.jit_json(people["bob"], "list", "--pending") == []:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=10)
    assert p.returncode != 0
    time.sleep(0.3)
    assert agent.jit_json(people["bob"], "list")[0]["state"] == "cancelled"


def test_authorization_matrix(agent, people):
    agent.start()
    alice, bob, carol, eve, dave = people["alice"], people["bob"], people["carol"], people["eve"], people["dave"]
    mine = file_request(agent, carol)
    theirs = file_request(agent, alice)
    # Nobody approves their own request, even an approver.
    p = agent.jit(carol, "approve", str(mine["id"]))
    assert p.returncode == 5 and "own request" in p.stderr
    # Requesters and outsiders do not approve or deny.
    for who in (alice, eve):
        assert agent.jit(who, "approve", str(mine["id"])).returncode == 5
        assert agent.jit(who, "deny", str(mine["id"])).returncode == 5
    # Root is not an approver by default.
    assert agent.jit(None, "approve", str(theirs["id"])).returncode == 5
    # Users see and cancel only their own.
    assert [r["id"] for r in agent.jit_json(alice, "list")] == [theirs["id"]]
    assert agent.jit_json(eve, "list") == []
    assert agent.jit(eve, "show", str(theirs["id"])).returncode == 5
    assert agent.jit(carol, "cancel", str(theirs["id"])).returncode == 5
    # Outsiders cannot ask.
    p = agent.jit(eve, "request", "--for", "10m", "--reason", "x")
    assert p.returncode == 5 and "requester group" in p.stderr
    # Approvers see everyone's; revoking needs root or an approver.
    assert len(agent.jit_json(dave, "list")) == 2
    assert agent.jit(dave, "approve", str(theirs["id"])).returncode == 0
    gid = str(agent.jit_json(alice, "grants")[0]["id"])
    assert agent.jit(alice, "revoke", gid).returncode == 5
    assert agent.jit(eve, "revoke", gid).returncode == 5
    assert agent.jit(None, "revoke", gid).returncode == 0
    # Nothing of this changed what it should not have.
    assert agent.sql(f"select state from requests where id={mine['id']}") == "pending"


def test_identity_comes_from_the_kernel_not_the_message(agent, people):
    agent.start()
    alice = people["alice"]
    # A user's own CLI cannot name another user...
    body = f"JIT/1 request\nfor=60\nreason=x\nuser={people['carol']}\n".encode()
    p = run(["setpriv", "--reuid", people["eve"], "--regid", people["eve"], "--init-groups", "--", "python3", "-c",
             "import socket,struct,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);b=sys.stdin.buffer.read();"
             "s.sendall(struct.pack('>I',len(b))+b);h=s.recv(4);print(s.recv(65536).decode())", agent.socket], input=body.decode())
    assert "unauthorized" in p.stdout, p.stdout + p.stderr
    # ...and cannot ask the PAM question for someone else.
    body = f"JIT/1 check\nuser={alice}\nservice=sshd\nfile=1\n"
    p = run(["setpriv", "--reuid", people["eve"], "--regid", people["eve"], "--init-groups", "--", "python3", "-c",
             "import socket,struct,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);b=sys.stdin.buffer.read();"
             "s.sendall(struct.pack('>I',len(b))+b);h=s.recv(4);print(s.recv(65536).decode())", agent.socket], input=body)
    assert "unauthorized" in p.stdout
    assert agent.sql("select count(*) from requests") == "0"


@pytest.mark.parametrize("args,words,code", [
    (["--for", "0s"], "zero", 2),
    (["--for", "-5m"], "negative", 2),
    (["--for", "5"], "no unit", 2),
    (["--for", "5h"], "maximum of 4h", 1),
    (["--for", "1h", "--reason", ""], "requires a reason", 1),
    (["--for", "1h", "--command", "systemctl restart nginx"], "absolute path", 2),
    (["--for", "1h", "--sudo", "--runas", "postgres"], "running as", 1),
    (["--for", "1h", "--env", "staging"], "environment", 1),
])
def test_bad_requests_get_a_clear_error_and_store_nothing(agent, people, args, words, code):
    agent.start()
    full = ["request", *args] if "--reason" in args else ["request", *args, "--reason", "x"]
    p = agent.jit(people["alice"], *full)
    assert p.returncode == code, p.stdout + p.stderr
    assert words in p.stderr
    assert p.stderr.count("\n") <= 3
    assert agent.sql("select count(*) from requests") == "0"


def test_a_ten_megabyte_reason_is_refused(agent, people):
    agent.start()
    big = "x" * (10 * 1024 * 1024)
    body = ("JIT/1 request\nfor=60\nreason=" + big + "\n").encode()
    try:
        reply = raw_call(agent.socket, body)
    except (BrokenPipeError, ConnectionResetError):
        reply = b""
    assert reply == b"" or b"too-large" in reply
    assert agent.sql("select count(*) from requests") == "0"
    assert agent.jit(None, "status").returncode == 0


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x00\x05hello",
    b"\x00\x00\x00\x0cJIT/9 hello\n",
    b"\xff\xff\xff\xffJIT/1 hello\n",
    b"\x00\x00\x00\x00",
    b"\x00\x00\x00\x20JIT/1 request\nfor=60\nrea",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_malformed_socket_messages_never_crash_the_agent(agent, frame):
    agent.start()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(agent.socket)
    s.sendall(frame)
    try:
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)
    except OSError:
        pass
    s.close()
    assert agent.proc.poll() is None
    assert agent.jit(None, "status").returncode == 0
    assert agent.sql("select count(*) from requests") == "0"


def test_a_client_that_sends_nothing_is_dropped_and_others_are_served(agent):
    agent.start()
    silent = [socket.socket(socket.AF_UNIX) for _ in range(40)]
    for s in silent:
        s.connect(agent.socket)
    t0 = time.time()
    for _ in range(10):
        assert agent.jit(None, "status").returncode == 0
    assert time.time() - t0 < 5
    for s in silent:
        s.close()


def test_sigkill_at_any_moment_loses_nothing(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    pending = file_request(agent, alice)
    granted = file_request(agent, alice, "--sudo")
    assert agent.jit(bob, "approve", str(granted["id"])).returncode == 0
    agent.kill9()
    agent.start()
    assert agent.jit_json(bob, "show", str(pending["id"]))["state"] == "pending"
    active = agent.jit_json(alice, "grants", "--active")
    assert [g["request_id"] for g in active] == [granted["id"]]
    # SIGKILL while writes are in flight: every answered request is there, none half-written.
    answered = requests_until_killed(agent, alice)
    ids = {r["id"] for r in agent.jit_json(bob, "list")}
    assert set(answered) <= ids
    assert agent.sql("pragma integrity_check") == "ok"


def test_corrupt_database_refuses_to_start(agent):
    os.makedirs(os.path.dirname(agent.database), exist_ok=True)
    with open(agent.database, "wb") as f:
        f.write(b"this is not sqlite" * 500)
    assert agent.start(expect_ok=False) != 0
    assert agent.database in agent.read_log()
    assert "not a SQLite database" in agent.read_log() or "corrupt" in agent.read_log()


def test_read_only_database_refuses_to_start(agent, tmpdir_root):
    mnt = os.path.join(tmpdir_root, "ro")
    os.makedirs(mnt)
    run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", mnt], check=True)
    try:
        agent.database = os.path.join(mnt, "jit.db")
        agent.start()
        agent.stop()
        run(["mount", "-o", "remount,ro", mnt], check=True)
        assert agent.start(expect_ok=False) != 0
        assert "read-only" in agent.read_log() and agent.database in agent.read_log()
    finally:
        run(["umount", "-l", mnt])


@pytest.mark.parametrize("text,words", [
    ("environment: production\npolicy:\n  max_duraton: 4h\n", "line 3" if False else ":3: policy.max_duraton"),
    ("environment: production\npolicy:\n  approvals_required: many\n", ":3: policy.approvals_required"),
    ("environment: production\nbogus: 1\n", ":2: bogus"),
])
def test_bad_config_never_starts_an_agent(agent, text, words):
    agent.write_config(text)
    assert agent.start(expect_ok=False) == 1
    assert words in agent.read_log()
    assert not os.path.exists(agent.socket)
    p = run([JITD, "check-config", "--config", agent.config])
    assert p.returncode == 1 and words in p.stderr


def test_check_config_accepts_the_shipped_config():
    p = run([JITD, "check-config", "--config", os.path.join(REPO, "packaging", "jit.yaml")])
    assert p.returncode == 0, p.stderr


def test_agent_down_gives_a_clear_error(tmpdir_root):
    p = run([JIT, "status", "--socket", os.path.join(tmpdir_root, "nope.sock")])
    assert p.returncode == 4
    assert "cannot reach jitd" in p.stderr and "JIT_SOCKET" in p.stderr


def test_socket_resolution_order(agent):
    agent.start()
    env = {"PATH": "/usr/bin:/bin", "JIT_SOCKET": agent.socket}
    assert run([JIT, "status"], env=env).returncode == 0
    env["JIT_SOCKET"] = "/nonexistent.sock"
    assert run([JIT, "status"], env=env).returncode == 4
    assert run([JIT, "status", "--socket", agent.socket], env=env).returncode == 0


def test_pending_requests_expire_unanswered(agent, people):
    agent.write_config(open(os.path.join(REPO, "packaging", "jit.yaml")).read().replace("pending_ttl: 1h", "pending_ttl: 2s"))
    agent.start()
    r = file_request(agent, people["alice"])
    time.sleep(3)
    assert agent.jit_json(people["bob"], "show", str(r["id"]))["state"] == "expired"
    assert agent.jit(people["bob"], "approve", str(r["id"])).returncode == 1


def test_unknown_users_are_handled(agent, people):
    agent.start()
    body = b"JIT/1 check\nuser=nosuchuser-xyz\nservice=sshd\nfile=1\n"
    reply = raw_call(agent.socket, body).decode()
    assert "decision=deny" in reply and "no user" in reply
    assert agent.sql("select count(*) from requests") == "0"


def test_help_documents_exit_codes():
    p = run([JIT, "--help"])
    assert "EXIT CODES" in p.stdout and "4  jitd cannot be reached" in p.stdout


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(agent, people):
    agent.start()
    text = open(agent.config).read()
    agent.write_config(text.replace("max_duration: 4h", "max_duration: 2h"))
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    p = agent.jit(people["alice"], "request", "--for", "3h", "--reason", "x")
    assert p.returncode == 1 and "maximum of 2h" in p.stderr
    agent.write_config("environment: [broken\n")
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert agent.proc.poll() is None
    assert "reload refused" in agent.read_log()
    assert agent.jit(people["alice"], "request", "--for", "1h", "--reason", "x").returncode == 0
