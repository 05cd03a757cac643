"""Notifications end to end: the built jitd delivering to real receivers on 127.0.0.1 started here.

A small HTTP server records posts (and can answer 500, hang, redirect, or not listen at all) for the webhook
and the Slack-compatible hook, over plain HTTP or HTTPS with certificates from a trustme test CA; aiosmtpd
is a real SMTP server for the mail channel (plain, STARTTLS or implicit TLS), reached directly or through
Debian's msmtp as /usr/sbin/sendmail.
"""
import base64
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import os
import socket
import ssl
import threading
import time

import pytest

from conftest import REPO, JITD, run

aiosmtpd = pytest.importorskip("aiosmtpd", reason="aiosmtpd is missing: scripts/deps.sh installs it")
from aiosmtpd.controller import Controller  # noqa: E402

trustme = pytest.importorskip("trustme", reason="trustme is missing: scripts/deps.sh installs it")
standardwebhooks = pytest.importorskip("standardwebhooks", reason="standardwebhooks is missing: scripts/deps.sh installs it")

SECRET = "0123456789abcdef-webhook-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server_context(ca, *names):
    """A server-side TLS context with a certificate from `ca` for `names`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


class Receiver:
    """An HTTP server that records every POST. mode: ok | 500 | hang | redirect; `ack_limit` acks that many,
    then hangs. With `tls` (an SSLContext, replaceable while it runs) it speaks HTTPS."""

    def __init__(self, port=None, tls=None):
        self.tls = tls
        self.handshake_errors = []
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
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{'https' if rec.tls else 'http'}://127.0.0.1:{rec.port}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 500 if mode == "500" else 200
                if code == 200:
                    with rec.lock:
                        entry["acked"] = True
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True

            def get_request(self):
                sock, addr = self.socket.accept()
                if rec.tls is None:
                    return sock, addr
                sock.settimeout(5)
                try:
                    return rec.tls.wrap_socket(sock, server_side=True), addr
                except (ssl.SSLError, OSError) as e:
                    rec.handshake_errors.append(str(e))
                    sock.close()
                    raise

        self.server = Server(("127.0.0.1", self.port), H)
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
    """aiosmtpd: plain, with STARTTLS offered (`starttls`: an SSLContext), or implicit TLS (`smtps`)."""

    def __init__(self, password=None, starttls=None, smtps=None):
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

            kw = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": starttls is not None}
        if starttls is not None:
            kw.update(tls_context=starttls, require_starttls=True)
        if smtps is not None:
            kw.update(ssl_context=smtps)
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
    assert int(agent.sql("SELECT min(attempts) FROM outbox")) >= 2, agent.read_log()
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
    ("webhooks: [{name: h, url: 'http://hooks.example.org/x'}]", "http:// crosses the network in clear text: use https://"),
    ("webhooks: [{name: h, url: 'ftp://x'}]", "must be an https:// URL"),
    ("webhooks: [{name: h, url: 'http://127.0.0.1/x', colour: red}]", "notify.webhooks.colour: is not a known setting"),
    ("slack: [{name: s, url: 'http://127.0.0.1/x', events: [request, gossip]}]", "'gossip' is not an event"),
    ("email: [{name: m, smtp_host: 127.0.0.1, from: a@b.org, to: [x@y.org], starttls: auto}]", "must be 'required'"),
    ("email: [{name: m, smtp_host: mail.example.org, from: a@b.org, to: [x@y.org], starttls: never, username: u, password_file: /x}]",
     "a password is sent only over TLS"),
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


# --- TLS, Standard Webhooks, sendmail --------------------------------------------------------------------

@pytest.fixture
def test_ca(tmpdir_root):
    """A trustme CA, and its certificate as a PEM file a channel can name as ca_file."""
    ca = trustme.CA()
    path = os.path.join(tmpdir_root, "test-ca.pem")
    ca.cert_pem.write_to_path(path)
    os.chmod(path, 0o644)
    return ca, path


def https_config(tmp, hook_port, slack_port=None, ca_path=None, extra="", host="localhost"):
    sf = secret_file(tmp, "hook.secret", SECRET + "\n")
    lines = ["notify:", "  max_backoff: 1s", "  timeout: 2s"] + ["  " + l for l in extra.splitlines()]
    ca = [f"      ca_file: {ca_path}"] if ca_path else []
    lines += ["  webhooks:", "    - name: hook", f"      url: https://{host}:{hook_port}/hook", f"      secret_file: {sf}"] + ca
    if slack_port:
        uf = secret_file(tmp, "slack.url", f"https://{host}:{slack_port}/services/T000/B000/XXXXSECRET\n")
        lines += ["  slack:", "    - name: chat", f"      url_file: {uf}"] + ca
    return base_config() + "\n" + "\n".join(lines) + "\n"


def test_webhook_and_slack_over_https_with_a_private_ca_and_both_signatures_verify(agent, people, receivers, test_ca):
    ca, ca_path = test_ca
    hook = receivers("http", tls=server_context(ca, "localhost", "127.0.0.1")).start()
    chat = receivers("http", tls=server_context(ca, "localhost", "127.0.0.1")).start()
    agent.write_config(https_config(agent.tmp, hook.port, chat.port, ca_path))
    agent.start()
    rid = request(agent, people["alice"])
    assert wait_for(lambda: hook.acked() and chat.acked(), 3.0), agent.read_log()
    post = hook.acked()[0]
    body, headers = post["body"], post["headers"]
    # Standard Webhooks, checked by the standardwebhooks package: the receiver's secret is whsec_ + base64
    # of the secret file's text.
    wh = standardwebhooks.Webhook("whsec_" + base64.b64encode(SECRET.encode()).decode())
    doc = wh.verify(body, {k.lower(): v for k, v in headers.items()})
    assert doc["request"]["id"] == rid
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-id"].startswith("jit-")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # A body changed on the way no longer verifies.
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        wh.verify(body.replace(b"OPS-1", b"OPS-2"), {k.lower(): v for k, v in headers.items()})
    # The old header still verifies.
    assert headers["X-JIT-Signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert chat.acked()[0]["path"] == "/services/T000/B000/XXXXSECRET"
    assert f"`jit approve {rid}`" in json.loads(chat.acked()[0]["body"])["text"]
    log = agent.read_log()
    assert "XXXXSECRET" not in log and SECRET not in log


@pytest.mark.parametrize("bad", ["another name", "an untrusted CA"])
def test_a_receiver_with_a_bad_certificate_is_refused_and_the_message_waits_until_the_certificate_is_good(
        agent, people, receivers, test_ca, bad):
    ca, ca_path = test_ca
    wrong = server_context(ca, "other.example.org") if bad == "another name" else server_context(trustme.CA(), "localhost", "127.0.0.1")
    hook = receivers("http", tls=wrong).start()
    agent.write_config(https_config(agent.tmp, hook.port, ca_path=ca_path))
    agent.start()
    rid = request(agent, people["alice"])
    assert wait_for(lambda: int(agent.sql("SELECT attempts FROM outbox") or 0) >= 2, 6.0), agent.read_log()
    assert hook.posts == []  # nothing was sent to a server jitd could not verify
    assert agent.sql("SELECT state FROM outbox") == "pending"
    why = agent.sql("SELECT last_error FROM outbox")
    assert why.startswith(f"channel 'hook': localhost:{hook.port}: TLS"), why
    want = "is not for this host name" if bad == "another name" else "is not trusted"
    assert want in why, why
    assert f"to 'hook' failed" in agent.read_log()
    # The receiver presents a good certificate: the waiting message goes out, once.
    hook.tls = server_context(ca, "localhost", "127.0.0.1")
    assert wait_for(lambda: hook.acked(), 6.0), agent.read_log()
    assert json.loads(hook.acked()[0]["body"])["request"]["id"] == rid
    assert wait_for(lambda: agent.sql("SELECT state FROM outbox") == "sent", 2.0)


def test_a_receiver_that_is_never_trusted_ends_as_notify_failed_in_the_audit_trail(agent, people, receivers, test_ca):
    ca, ca_path = test_ca
    hook = receivers("http", tls=server_context(trustme.CA(), "localhost")).start()
    agent.write_config(https_config(agent.tmp, hook.port, ca_path=ca_path, extra="max_attempts: 2"))
    agent.start()
    request(agent, people["alice"])
    st = wait_for(lambda: (lambda s: s if s["outbox_failed"] == 1 else None)(agent.jit_json(None, "status")), 6.0)
    assert st, agent.read_log()
    assert "notify.failed" in agent.jit(None, "audit").stdout
    why = agent.sql("SELECT data FROM audit WHERE kind = 'notify.failed'")
    assert "channel 'hook'" in why and "is not trusted" in why, why
    assert hook.posts == []


def test_redirects_are_not_followed(agent, people, receivers, test_ca):
    ca, ca_path = test_ca
    hook = receivers("http", tls=server_context(ca, "localhost", "127.0.0.1")).start()
    hook.mode = "redirect"
    agent.write_config(https_config(agent.tmp, hook.port, ca_path=ca_path))
    agent.start()
    request(agent, people["alice"])
    assert wait_for(lambda: "redirects are not followed" in agent.sql("SELECT ifnull(last_error, '') FROM outbox"), 4.0), agent.read_log()
    assert all(p["path"] == "/hook" for p in hook.posts)


def msmtp_sendmail(tmp, port, name="sendmail"):
    """Debian's msmtp (/usr/sbin/sendmail from msmtp-mta) with a config file of this test's own: a wrapper
    that adds `-C FILE`, so /etc/msmtprc is never touched."""
    if not os.path.exists("/usr/sbin/sendmail") or "msmtp" not in os.path.realpath("/usr/sbin/sendmail"):
        pytest.skip("needs msmtp-mta as /usr/sbin/sendmail: scripts/deps.sh installs it")
    rc = secret_file(tmp, "msmtprc", f"defaults\nauth off\ntls off\nlogfile -\naccount default\nhost 127.0.0.1\nport {port}\n")
    return script(tmp, name, f'exec /usr/sbin/sendmail -C {rc} "$@"\n')


def script(tmp, name, body):
    p = os.path.join(tmp, name)
    with open(p, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(p, 0o755)
    return p


def sendmail_config(tmp, sendmail, extra=""):
    return base_config() + f"""
notify:
  timeout: 2s
  max_backoff: 1s
{extra}  email:
    - name: mail
      transport: sendmail
      sendmail: {sendmail}
      from: jit@example.org
      to: [oncall@example.org]
      to_groups: true
      domain: example.org
"""


def test_mail_through_sendmail_reaches_the_smtp_server_via_msmtp(agent, people, receivers):
    box = receivers("smtp").start()
    agent.write_config(sendmail_config(agent.tmp, msmtp_sendmail(agent.tmp, box.port)))
    agent.start()
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    rid = request(agent, alice)
    assert wait_for(lambda: box.messages, 3.0), agent.read_log()
    frm, rcpts, raw = box.messages[0]
    assert frm == "jit@example.org"
    assert {"oncall@example.org", f"{bob}@example.org", f"{dave}@example.org"} <= set(rcpts)  # the To: header (-t)
    assert f"{alice}@example.org" not in rcpts
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == f"[jit] request {rid} by {alice} waits for approval (production)"
    assert f"jit approve {rid}" in msg.get_content()
    assert wait_for(lambda: agent.sql("SELECT state FROM outbox") == "sent", 2.0)


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_a_sendmail_that_fails_or_hangs_is_reported_and_the_mail_waits(agent, people, receivers, how):
    box = receivers("smtp").start()
    flag = os.path.join(agent.tmp, "broken")
    open(flag, "w").close()
    good = msmtp_sendmail(agent.tmp, box.port, name="msmtp-wrapper")
    broken = 'echo "sendmail: cannot reach the smarthost" >&2; exit 75' if how == "fails" else "sleep 30"
    wrapper = script(agent.tmp, "sendmail", f'if [ -e {flag} ]; then {broken}; fi\nexec {good} "$@"\n')
    agent.write_config(sendmail_config(agent.tmp, wrapper))
    agent.start()
    request(agent, people["alice"])
    want = "exited with status 75: sendmail: cannot reach the smarthost" if how == "fails" else "failed: (killed after 2 s)"
    assert wait_for(lambda: want in agent.sql("SELECT ifnull(last_error, '') FROM outbox"), 6.0), agent.read_log()
    assert agent.sql("SELECT state FROM outbox") == "pending" and box.messages == []
    assert f"channel 'mail': {wrapper} " in agent.sql("SELECT last_error FROM outbox")
    os.unlink(flag)
    assert wait_for(lambda: box.messages, 6.0), agent.read_log()
    assert wait_for(lambda: agent.sql("SELECT state FROM outbox") == "sent", 2.0)


def smtp_config(port, extra):
    return base_config() + f"""
notify:
  timeout: 2s
  max_backoff: 1s
  email:
    - name: mail
      transport: smtp
      smtp_host: 127.0.0.1
      smtp_port: {port}
      from: jit@example.org
      to: [oncall@example.org]
{extra}"""


def test_direct_smtp_with_starttls_required_verifies_the_server_and_authenticates_over_tls(agent, people, receivers, test_ca):
    ca, ca_path = test_ca
    password = "s3cret-over-tls"
    box = receivers("smtp", password=password, starttls=server_context(ca, "127.0.0.1")).start()
    pf = secret_file(agent.tmp, "smtp.password", password + "\n")
    agent.write_config(smtp_config(box.port, f"      starttls: required\n      ca_file: {ca_path}\n      username: jit\n      password_file: {pf}\n"))
    agent.start()
    rid = request(agent, people["alice"])
    assert wait_for(lambda: box.messages, 3.0), agent.read_log()
    assert box.logins == [("PLAIN", b"jit", password.encode())]
    assert email.message_from_bytes(box.messages[0][2], policy=email.policy.default)["Subject"].startswith(f"[jit] request {rid} ")


def test_direct_smtp_over_implicit_tls(agent, people, receivers, test_ca):
    ca, ca_path = test_ca
    box = receivers("smtp", smtps=server_context(ca, "127.0.0.1")).start()
    agent.write_config(smtp_config(box.port, f"      implicit_tls: true\n      ca_file: {ca_path}\n"))
    agent.start()
    request(agent, people["alice"])
    assert wait_for(lambda: box.messages, 3.0), agent.read_log()


@pytest.mark.parametrize("server", ["offers no STARTTLS", "has an untrusted certificate"])
def test_direct_smtp_refuses_a_server_without_starttls_or_with_an_untrusted_certificate(agent, people, receivers, test_ca, server):
    ca, ca_path = test_ca
    box = (receivers("smtp") if server == "offers no STARTTLS" else receivers("smtp", starttls=server_context(trustme.CA(), "127.0.0.1"))).start()
    agent.write_config(smtp_config(box.port, f"      starttls: required\n      ca_file: {ca_path}\n"))
    agent.start()
    request(agent, people["alice"])
    want = "does not offer STARTTLS" if server == "offers no STARTTLS" else "is not trusted"
    assert wait_for(lambda: want in agent.sql("SELECT ifnull(last_error, '') FROM outbox"), 4.0), agent.read_log()
    why = agent.sql("SELECT last_error FROM outbox")
    assert why.startswith(f"channel 'mail': 127.0.0.1:{box.port}"), why
    assert box.messages == [] and agent.sql("SELECT state FROM outbox") == "pending"
