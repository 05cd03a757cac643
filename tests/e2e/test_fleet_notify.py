"""Notifications sent by the control plane: `notify:` in server.yaml, two `jitd server` replicas on one
PostgreSQL, host agents in fleet mode. A request filed on a host makes the control plane POST the webhook
once (not once per replica), with `page_url` pointing at PUBLIC_URL/web/requests/ID; a break-glass on a host
reaches the webhook through the host's shipped trail; the host itself (it has no notify: here) sends nothing.

A local HTTP listener on 127.0.0.1 records every POST. Every bound is a deadline on a polled condition.
"""
import http.server
import json
import threading
import time

import pytest

from conftest import needs_root, wait_for
from fleet import PROD, Fleet, fleet_supported, pg, server_extra  # noqa: F401 (pg is a fixture)
from hosts import free_port

pytestmark = needs_root


class Hook:
    """An HTTP listener that answers 200 to every POST and keeps them."""

    def __init__(self):
        self.port = free_port()
        self.posts = []
        self.lock = threading.Lock()
        hook = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.posts.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self, kind):
        with self.lock:
            return [p for p in self.posts if p["json"].get("kind") == kind]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def notify_yaml(port):
    return f"""notify:
  timeout: 2s
  webhooks:
    - name: approvers-hook
      url: http://127.0.0.1:{port}/jit
"""


BREAK_GLASS = """break_glass:
  groups: [jit-breakglass]
  max_duration: 1h
"""


@pytest.fixture
def fleet(pg, tmpdir_root, etc, hook):
    why = fleet_supported(server_extra("{dir}"))
    if why:
        pytest.skip(why)
    f = Fleet(pg, tmpdir_root, etc, replicas=2, extra=notify_yaml(hook.port))
    yield f
    f.close()


def test_a_fleet_hosts_request_and_break_glass_reach_the_webhook_once_from_the_control_plane(fleet, hook, users):
    alice = users.user("alice", ["jit-requesters"])
    dora = users.user("dora", ["jit-breakglass"])
    bob = users.user("bob", ["jit-approvers"])
    h1 = fleet.add("h1", PROD, extra=BREAK_GLASS)

    # A request filed on the host reaches the control plane; the control plane tells the webhook once.
    p = h1.jit(alice, "request", "--for", "30m", "--sudo", "--reason", "OPS-7 disk full", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    found = wait_for(lambda: fleet.pending(bob, alice), 15)
    assert found, "the request did not reach the control plane\n" + fleet.logs()
    rid = found[0]["id"]
    got = wait_for(lambda: hook.kinds("request.filed"), 15)
    assert got, "the control plane did not post the webhook\n" + fleet.logs()
    post = got[0]["json"]
    assert post["request"]["id"] == rid and post["user"] == alice and post["host"] == "h1" and post["environment"] == PROD
    assert post["request"]["reason"] == "OPS-7 disk full"
    pages = {f"{fleet.cp.replica_url(i)}/web/requests/{rid}" for i in range(2)}
    assert post["page_url"] in pages, post
    assert post["page_url"] in post["text"], "the plain text carries the link too"
    assert post["approver_groups"] == ["jit-approvers"]

    # Break-glass on the host: access at once there, and the approvers hear of it from the control plane.
    p = h1.jit(dora, "request", "--break-glass", "--for", "30m", "--sudo", "--reason", "INC-9 the control plane is away", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    bg = wait_for(lambda: hook.kinds("breakglass.bypass"), 20)
    assert bg, "the host's break-glass did not reach the webhook\n" + fleet.logs()
    b = bg[0]["json"]
    assert b["event"] == "break_glass" and b["user"] == dora and b["host"] == "h1" and b["environment"] == PROD, b
    assert b["details"]["why"] == "INC-9 the control plane is away" and b["details"]["what"] == "sudo"
    assert "BREAK-GLASS" in b["text"] and "h1" in b["text"]
    assert b["approver_groups"] == ["jit-approvers"]

    # Once each, although two replicas run (and a few more passes of both have gone by).
    deadline = time.time() + 3
    while time.time() < deadline:
        time.sleep(0.2)
    assert len(hook.kinds("request.filed")) == 1, [p["json"]["id"] for p in hook.kinds("request.filed")]
    assert len(hook.kinds("breakglass.bypass")) == 1
    with hook.lock:
        ids = [p["headers"].get("X-JIT-Delivery") for p in hook.posts]
    assert len(ids) == len(set(ids)), ids
    # The host has no notify: of its own: every post came from a replica (each logs one line per message).
    logs = fleet.cp.log(0) + fleet.cp.log(1)
    assert f"request.filed (request {rid}) sent to 'approvers-hook'" in logs, logs[-3000:]
    assert "breakglass.bypass" in logs and "sent to 'approvers-hook'" in logs
