"""Notifications end to end: the built jitd delivering to real receivers on 127.0.0.1 started here.

A small HTTP server records posts (and can answer 500, hang, or not listen at all) for the webhook and the
Slack-compatible hook; aiosmtpd is a real SMTP server for the mail channel.
"""
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import os
import socket
import threading
import time

import pytest

from conftest import REPO, JITD, run

aiosmtpd = pytest.importorskip("aiosmtpd", reason="aiosmtpd is missing: scripts/deps.sh installs it")
from aiosmtpd.controller import Controller  # noqa: E402

SECRET = "0123456789abcdef-webhook-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Receiver:
    """An HTTP server that records every POST. mode: ok | 500 | hang; `ack_limit` acks that many, then hangs."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.posts = []  # dicts: path, headers, body, acked
        self.mode = "ok"
        self.ack_limit = None
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server = None

    def start(self):
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                entry = {"path": self.path, "headers": dict(self.headers), "body": body, "acked": False}
                with rec.lock:
                    rec.posts.append(entry)
                    acked = sum(1 for p in rec.posts if p["acked"])
                    mode = rec.mode
                    if rec.ack_limit is not None and acked >= rec.ack_limit:
                        mode = "hang"
                if mode == "hang":
                    rec.release.wait(30)
                    return
                code = 500 if mode == "500" else 200
                if code == 200:
                    with rec.lock:
                        entry["acked"] = True
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.release.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def acked(self, path=None):
        with self.lock:
            return [p for p in self.posts if p["acked"] and (path is None or p["path"] == path)]


class Mailbox:
    def __init__(self, password=None):
        self.messages = []  # (mail_from, rcpt_tos, bytes)
        self.logins = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
                return "250 OK"

        kw = {}
        if password:
            from aiosmtpd.smtp import AuthResult

            def authenticator(server, session, envelope, mechanism, auth_data):
                box.logins.append((mechanism, auth_data.login, auth_data.password))
                return AuthResult(success=auth_data.login == b"jit" and auth_data.password == password.encode())

            kw = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(), **kw)
        self.port = self.controller.port

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()


def wait_for(cond, timeout, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def base_config():
    with open(os.path.join(REPO, "packaging", "jit.yaml")) as f:
        return f.read()


def secret_file(tmp, name, text, mode=0o600):
    p = os.path.join(tmp, name)
    with open(p, "w") as f:
        f.write(text)
    os.chmod(p, mode)
    return p


def notify_config(tmp, hook_port=None, slack_port=None, smtp_port=None, extra="", timeout="1s"):
    lines = ["notify:", "  max_backoff: 2s", f"  timeout: {timeout}"]
    for l in extra.splitlines():
        lines.append("  " + l)
    if hook_port:
        sf = secret_file(tmp, "hook.secret", SECRET + "\n")
        lines += ["  webhooks:", "    - name: hook", f"      url: http://127.0.0.1:{hook_port}/hook", f"      secret_file: {sf}"]
    if slack_port:
        uf = secret_file(tmp, "slack.url", f"http://127.0.0.1:{slack_port}/services/T000/B000/XXXXSECRET\n")
        lines += ["  slack:", "    - name: chat", f"      url_file: {uf}"]
    if smtp_port:
        lines += ["  email:", "    - name: mail", "      smtp_host: 127.0.0.1", f"      smtp_port: {smtp_port}",
                  "      from: jit@example.org", "      to: [oncall@example.org]", "      to_groups: true", "      domain: example.org",
                  "      starttls: never"]
    return base_config() + "\n" + "\n".join(lines) + "\n"


@pytest.fixture
def receivers():
    made = []

    def make(kind, **kw):
        r = (Receiver(**kw) if kind == "http" else Mailbox(**kw))
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def request(agent, user, reason="OPS-1 disk full", *more):
    p = agent.jit(user, "request", "--for", "30m", "--sudo", "--reason", reason, *more)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split("request ")[1].split()[0])


def test_a_request_reaches_the_webhook_the_slack_hook_and_the_mailbox_within_a_second(agent, people, receivers):
    hook = receivers("http").start()
    chat = receivers("http").start()
    box = receivers("smtp").start()
    agent.write_config(notify_config(agent.tmp, hook.port, chat.port, box.port))
    agent.start()
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    t0 = time.time()
    rid = request(agent, alice)
    assert wait_for(lambda: hook.acked() and chat.acked() and box.messages, 1.0), agent.read_log()
    assert time.time() - t0 < 1.5

    # The webhook: the documented JSON, signed.
    post = hook.acked()[0]
    body = post["body"]
    want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert post["headers"]["X-JIT-Signature"] == want
    assert post["headers"]["X-JIT-Event"] == "request.filed"
    doc = json.loads(body)
    assert doc["event"] == "request" and doc["kind"] == "request.filed" and doc["user"] == alice
    assert doc["request"]["id"] == rid and doc["request"]["reason"] == "OPS-1 disk full" and doc["request"]["scope"] == "sudo"
    assert doc["request"]["duration"] == "30m" and doc["approve_command"] == f"jit approve {rid}"
    assert doc["approver_groups"] == ["jit-approvers"] and doc["environment"] == "production"

    # Slack: who, what, where, why, how long and the exact command.
    text = json.loads(chat.acked()[0]["body"])["text"]
    assert chat.acked()[0]["path"] == "/services/T000/B000/XXXXSECRET"
    for piece in (alice, "sudo (all commands) as root", "production", "OPS-1 disk full", "30m", f"`jit approve {rid}`"):
        assert piece in text, (piece, text)

    # Mail: to the fixed list and the approver group's members; never to the requester.
    frm, rcpts, raw = box.messages[0]
    assert frm == "jit@example.org"
    assert {"oncall@example.org", f"{bob}@example.org", f"{dave}@example.org"} <= set(rcpts)
    assert f"{alice}@example.org" not in rcpts
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == f"[jit] request {rid} by {alice} waits for approval (production)"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert f"jit approve {rid}" in msg.get_content() and "OPS-1 disk full" in msg.get_content()

    # The decision goes to the requester.
    assert agent.jit(bob, "approve", str(rid), "--comment", "go").returncode == 0
    assert wait_for(lambda: any(json.loads(p["body"])["kind"] == "request.approved" for p in hook.acked()), 1.0)
    dec = [json.loads(p["body"]) for p in hook.acked() if json.loads(p["body"])["kind"] == "request.approved"][0]
    assert dec["event"] == "decision" and dec["request"]["decided_by"] == bob and dec["grant"]["id"] >= 1
    assert wait_for(lambda: any(f"{alice}@example.org" in m[1] for m in box.messages), 1.0)
    mail = [m for m in box.messages if f"{alice}@example.org" in m[1]][0]
    assert email.message_from_bytes(mail[2], policy=email.policy.default)["Subject"] == f"[jit] request {rid} approved (production)"

    # Nothing left over, and the status says so; no secrets in the log.
    st = wait_for(lambda: (lambda s: s if s["outbox_pending"] == 0 else None)(agent.jit_json(None, "status")), 2.0)
    assert st and st["outbox_failed"] == 0 and st["notify_channels"] == 3
    log = agent.read_log()
    assert SECRET not in log and "XXXXSECRET" not in log


def test_a_receiver_that_is_down_gets_every_message_once_it_is_back(agent, people, receivers):
    port = free_port()
    agent.write_config(notify_config(agent.tmp, hook_port=port))
    agent.start()
    ids = [request(agent, people["alice"], "OPS-1 down test"), request(agent, people["carol"], "OPS-2 down test")]
    time.sleep(3)  # several attempts fail (nothing listens)
    st = agent.jit_json(None, "status")
    assert st["outbox_pending"] == 2 and st["outbox_failed"] == 0
    assert int(agent.sql("SELECT min(attempts) FROM outbox")) >= 2
    hook = receivers("http", port=port).start()
    assert wait_for(lambda: len(hook.acked()) >= 2, 4.0), agent.read_log()
    got = sorted(json.loads(p["body"])["request"]["id"] for p in hook.acked())
    assert got == sorted(ids)
    time.sleep(0.5)
    assert len(hook.posts) == 2  # each once
    assert agent.sql("SELECT group_concat(state) FROM outbox") == "sent,sent"


def test_an_agent_killed_mid_delivery_delivers_after_restart_and_never_resends_what_was_acknowledged(agent, people, receivers):
    hook = receivers("http").start()
    hook.ack_limit = 1  # the first post is acknowledged; the next one hangs
    agent.write_config(notify_config(agent.tmp, hook_port=hook.port, timeout="5s"))
    agent.start()
    r1 = request(agent, people["alice"], "first")
    assert wait_for(lambda: len(hook.acked()) == 1, 1.0)
    r2 = request(agent, people["carol"], "second")
    assert wait_for(lambda: len(hook.posts) == 2, 1.0)  # the agent is now waiting on the hung receiver
    agent.kill9()
    assert agent.sql(f"SELECT state FROM outbox WHERE audit_id = (SELECT id FROM audit WHERE kind = 'request.filed' AND request_id = {r1})") == "sent"
    assert agent.sql(f"SELECT state FROM outbox WHERE audit_id = (SELECT id FROM audit WHERE kind = 'request.filed' AND request_id = {r2})") == "pending"
    hook.ack_limit = None
    hook.release.set()
    agent.start()
    assert wait_for(lambda: len(hook.acked()) == 2, 3.0), agent.read_log()
    time.sleep(0.5)
    acked = [json.loads(p["body"])["request"]["id"] for p in hook.acked()]
    assert sorted(acked) == sorted([r1, r2])  # the acknowledged one was not sent again
    assert [json.loads(p["body"])["request"]["id"] for p in hook.posts].count(r1) == 1
    assert agent.sql("SELECT group_concat(state) FROM outbox") == "sent,sent"


def test_injection_attempts_in_a_reason_come_out_inert(agent, people, receivers):
    hook = receivers("http").start()
    chat = receivers("http").start()
    box = receivers("smtp").start()
    agent.write_config(notify_config(agent.tmp, hook.port, chat.port, box.port))
    agent.start()
    evil = "<!channel> <@U123> click <http://evil.example|here> & \u2028Bcc: victim@evil.example\u2029Subject: pwned"
    rid = request(agent, people["alice"], evil)
    assert wait_for(lambda: chat.acked() and box.messages and hook.acked(), 1.5), agent.read_log()
    text = json.loads(chat.acked()[0]["body"])["text"]
    assert "<!channel>" not in text and "<@U123>" not in text and "<http" not in text
    assert "&lt;!channel&gt;" in text and "&lt;http://evil.example|here&gt;" in text and "&amp;" in text
    assert "\u2028" not in text
    frm, rcpts, raw = box.messages[0]
    assert not any("evil" in r for r in rcpts)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["Subject"] == f"[jit] request {rid} by {people['alice']} waits for approval (production)"
    assert sorted(k.lower() for k in msg.keys()) == sorted(
        ["from", "to", "subject", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding", "auto-submitted"])
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"evil" not in head and b"pwned" not in head
    # The webhook carries the reason as data (JSON-escaped), exactly as given.
    assert json.loads(hook.acked()[0]["body"])["request"]["reason"] == evil


def test_a_receiver_that_keeps_failing_is_marked_failed_in_status_and_the_audit_trail(agent, people, receivers):
    hook = receivers("http").start()
    hook.mode = "500"
    agent.write_config(notify_config(agent.tmp, hook_port=hook.port, extra="max_attempts: 3"))
    agent.start()
    request(agent, people["alice"])
    st = wait_for(lambda: (lambda s: s if s["outbox_failed"] == 1 else None)(agent.jit_json(None, "status")), 8.0)
    assert st and st["outbox_pending"] == 0, agent.read_log()
    assert len(hook.posts) == 3
    p = agent.jit(None, "status")
    assert "notifications:    0 pending, 1 failed (1 channels)" in p.stdout
    assert agent.sql("SELECT count(*) FROM audit WHERE kind = 'notify.failed'") == "1"
    assert "notify.failed" in agent.jit(None, "audit").stdout
    assert agent.jit(None, "audit", "verify").returncode == 0


def test_a_hanging_receiver_times_out_and_is_retried(agent, people, receivers):
    hook = receivers("http").start()
    hook.mode = "hang"
    agent.write_config(notify_config(agent.tmp, hook_port=hook.port))
    agent.start()
    request(agent, people["alice"])
    assert wait_for(lambda: len(hook.posts) >= 2, 4.0)  # 1 s time-out, 1 s back-off, again
    assert "timed out" in agent.read_log()
    hook.mode = "ok"
    assert wait_for(lambda: len(hook.acked()) == 1, 5.0)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_plain_with_a_root_only_password_file(agent, people, receivers):
    password = "s3cret-smtp-pass"
    box = receivers("smtp", password=password).start()
    pf = secret_file(agent.tmp, "smtp.password", password + "\n")
    cfg = base_config() + f"""
notify:
  email:
    - name: mail
      smtp_host: 127.0.0.1
      smtp_port: {box.port}
      from: jit@example.org
      to: [oncall@example.org]
      username: jit
      password_file: {pf}
"""
    agent.write_config(cfg)
    agent.start()
    rid = request(agent, people["alice"])
    assert wait_for(lambda: box.messages, 1.5), agent.read_log()
    assert box.logins == [("PLAIN", b"jit", password.encode())]
    assert email.message_from_bytes(box.messages[0][2], policy=email.policy.default)["Subject"].startswith(f"[jit] request {rid} ")
    assert password not in agent.read_log()


@pytest.mark.parametrize("setting,message", [
    ("webhooks: [{name: h, url: 'https://hooks.example.org/x'}]", "https:// is not supported: jitd has no TLS library built in"),
    ("webhooks: [{name: h, url: 'ftp://x'}]", "must be an http:// URL"),
    ("webhooks: [{name: h, url: 'http://127.0.0.1/x', colour: red}]", "notify.webhooks.colour: is not a known setting"),
    ("slack: [{name: s, url: 'http://127.0.0.1/x', events: [request, gossip]}]", "'gossip' is not an event"),
    ("email: [{name: m, smtp_host: 127.0.0.1, from: a@b.org, to: [x@y.org], starttls: auto}]", "STARTTLS is not supported"),
    ("email: [{name: m, smtp_host: 127.0.0.1, from: 'a@b.org\\r\\nBcc: x@y', to: [x@y.org]}]", "is not a plain mail address"),
])
def test_check_config_refuses_bad_channels_naming_the_line(tmpdir_root, setting, message):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cfg = os.path.join(tmpdir_root, "jit.yaml")
    text = base_config() + "\nnotify:\n  " + setting + "\n"
    with open(cfg, "w") as f:
        f.write(text)
    line = text.count("\n", 0, text.index("\nnotify:\n") + 1) + 2
    p = run([JITD, "check-config", "--config", cfg])
    assert p.returncode == 1
    assert message in p.stderr, p.stderr
    assert f"jit.yaml:{line}:" in p.stderr, p.stderr


def test_check_config_refuses_a_secret_file_others_can_read(tmpdir_root):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    sf = secret_file(tmpdir_root, "hook.secret", SECRET, mode=0o644)
    cfg = os.path.join(tmpdir_root, "jit.yaml")
    with open(cfg, "w") as f:
        f.write(base_config() + f"\nnotify:\n  webhooks:\n    - name: h\n      url: http://127.0.0.1:9/x\n      secret_file: {sf}\n")
    p = run([JITD, "check-config", "--config", cfg])
    assert p.returncode == 1
    assert f"{sf} is readable or writable by group or others (mode 644)" in p.stderr and "chmod 600" in p.stderr
    os.chmod(sf, 0o600)
    assert run([JITD, "check-config", "--config", cfg]).returncode == 0
