"""The policy engine end to end, through the built jit and jitd (issue: policy engine).

Two-approver rules, automatic rules, time-window refusals, break-glass, approver MFA with replay refusal,
extension, explain, check-config on bad rules, and SIGHUP reload with rules.
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import struct
import time

import pytest

from conftest import JITD, run, needs_root

pytestmark = needs_root

HEAD = """environment: production
pending_ttl: 1h
break_glass:
  groups: [jitp-breakglass]
  max_duration: 1h
rules:
"""

TWO_APPROVERS = """  - name: restart-nginx
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/systemctl restart nginx"]
    max_duration: 15m
    approvals: auto
  - name: two-approvers
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    max_duration: 2h
    approvals:
      required: 2
      groups: [jit-approvers]
"""


def totp(secret_b32, at=None):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    step = int((at or time.time()) // 30)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = mac[19] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def request(agent, user, *args):
    return agent.jit(user, "request", *args)


def test_two_approver_rule(agent, people):
    agent.write_config(HEAD + TWO_APPROVERS)
    agent.start()
    alice, bob, dave, carol = people["alice"], people["bob"], people["dave"], people["carol"]
    p = request(agent, alice, "--for", "1h", "--sudo", "--reason", "deploy", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["state"] == "pending" and r["rule"] == "two-approvers"
    rid = str(r["id"])
    p = agent.jit(bob, "approve", rid)
    assert p.returncode == 0, p.stderr
    assert "1 more needed" in p.stdout
    p = agent.jit(bob, "approve", rid)
    assert p.returncode == 1 and "already approved" in p.stderr
    p = agent.jit(alice, "approve", rid)
    assert p.returncode == 5
    assert agent.jit_json(alice, "grants") == []
    p = agent.jit(dave, "approve", rid)
    assert p.returncode == 0, p.stderr
    assert "approved" in p.stdout
    shown = agent.jit_json(alice, "show", rid)
    assert shown["state"] == "approved" and shown["approved_via"] == "approvers" and shown["approvals"] == [bob, dave]
    grants = agent.jit_json(alice, "grants", "--active")
    assert len(grants) == 1 and os.listdir(agent.sudoers) == [f"jit-grant-{grants[0]['id']}"]
    # Carol is an approver too, but never of her own request.
    p = request(agent, carol, "--for", "30m", "--reason", "x", "--json")
    cid = str(json.loads(p.stdout)["id"])
    assert agent.jit(carol, "approve", cid).returncode == 5
    assert agent.sql(f"select count(*) from approvals where request_id={cid}") == "0"


def test_automatic_rule_and_extension(agent, people):
    agent.write_config(HEAD + TWO_APPROVERS)
    agent.start()
    alice = people["alice"]
    p = request(agent, alice, "--for", "10m", "--command", "/usr/bin/systemctl restart nginx", "--reason", "stuck workers")
    assert p.returncode == 0, p.stderr
    assert "approved automatically by rule 'restart-nginx'" in p.stdout
    r = agent.jit_json(alice, "show", "1")
    assert r["state"] == "approved" and r["approved_via"] == "auto" and r["decided_by"] == "rule:restart-nginx"
    g = agent.jit_json(alice, "grants", "--active")[0]
    assert os.path.exists(os.path.join(agent.sudoers, f"jit-grant-{g['id']}"))
    assert agent.sql("select approved_via, rule from requests where id=1") == "auto|restart-nginx"
    # Over the rule's maximum: refused, nothing stored.
    p = request(agent, alice, "--for", "1h", "--command", "/usr/bin/systemctl restart nginx", "--reason", "x")
    assert p.returncode == 1 and "maximum of 15m" in p.stderr
    # More time under the same rule: granted at once, the same grant ends later.
    before = g["expires_at"]
    p = agent.jit(alice, "extend", str(g["id"]), "--for", "5m", "--reason", "still stuck")
    assert p.returncode == 0, p.stderr
    assert f"grant {g['id']} extended" in p.stdout
    after = agent.jit_json(alice, "grants", "--active")[0]["expires_at"]
    assert after > before
    assert len(agent.jit_json(alice, "grants")) == 1
    assert "automatic" in agent.jit(alice, "policy", "explain", "--user", alice, "--command", "/usr/bin/systemctl restart nginx").stdout


def test_time_window_refusal(agent, people):
    h = datetime.datetime.now(datetime.timezone.utc).hour
    window = f"{(h + 2) % 24:02d}:00-{(h + 3) % 24:02d}:00"
    agent.write_config(HEAD + f"""  - name: office-hours
    requesters: {{groups: [jit-requesters]}}
    scopes: [login, sudo]
    approvals: {{groups: [jit-approvers]}}
    when:
      time_zone: UTC
      days: [mon-sun]
      hours: "{window}"
    refusal: production access only in the maintenance window
""")
    agent.start()
    alice = people["alice"]
    p = request(agent, alice, "--for", "30m", "--sudo", "--reason", "x")
    assert p.returncode == 5, p.stdout + p.stderr
    assert "rule 'office-hours' (line 7)" in p.stderr and "only in the maintenance window" in p.stderr
    assert agent.sql("select count(*) from requests") == "0"
    p = agent.jit(None, "policy", "explain", "--user", alice, "--sudo")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("refused:") and "rule:      office-hours (config line 7)" in p.stdout
    explained = agent.jit_json(None, "policy", "explain", "--user", alice, "--sudo")
    assert explained["decision"] == "refused" and explained["rule"] == "office-hours" and explained["line"] == 7
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)).replace(minute=30).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert agent.jit_json(None, "policy", "explain", "--user", alice, "--sudo", "--at", later)["decision"] == "approvers"


def test_break_glass(agent, people, users):
    agent.write_config(HEAD + TWO_APPROVERS)
    agent.start()
    ivan = users.user("ivan", ["jitp-breakglass"])
    p = request(agent, ivan, "--for", "20m", "--sudo", "--break-glass")
    assert p.returncode == 1 and "reason" in p.stderr
    p = request(agent, people["alice"], "--for", "20m", "--sudo", "--break-glass", "--reason", "x")
    assert p.returncode == 5 and "break-glass group" in p.stderr
    p = request(agent, ivan, "--for", "2h", "--sudo", "--break-glass", "--reason", "x")
    assert p.returncode == 1 and "break-glass maximum of 1h" in p.stderr
    p = request(agent, ivan, "--for", "20m", "--sudo", "--break-glass", "--reason", "primary db down, pager 4411")
    assert p.returncode == 0, p.stderr
    assert "BREAK-GLASS" in p.stdout and "every approver is notified" in p.stdout
    r = agent.jit_json(ivan, "list")[0]
    assert r["state"] == "approved" and r["approved_via"] == "break-glass" and r["rule"] == "break-glass"
    g = agent.jit_json(ivan, "grants", "--active")[0]
    assert os.path.exists(os.path.join(agent.sudoers, f"jit-grant-{g['id']}"))
    assert "BREAK-GLASS by " + ivan in agent.read_log()
    assert agent.sql("select count(*) from requests where approved_via='break-glass'") == "1"


def test_approver_mfa_and_replay(agent, people):
    agent.write_config(HEAD + """  - name: mfa-login
    requesters: {groups: [jit-requesters]}
    scopes: [login]
    approvals: {groups: [jit-approvers], mfa: true}
""")
    agent.start()
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    r1 = json.loads(request(agent, alice, "--for", "30m", "--reason", "x", "--json").stdout)["id"]
    p = agent.jit(bob, "approve", str(r1))
    assert p.returncode == 5 and "--otp" in p.stderr
    p = agent.jit(bob, "mfa", "enroll")
    assert p.returncode == 0, p.stderr
    assert "otpauth://totp/jit-access:" + bob in p.stdout
    secret = p.stdout.split("secret: ")[1].split()[0]
    assert agent.jit(bob, "mfa", "enroll").returncode == 1
    # Wait out the end of a 30 s step so both approvals use the same code in the same step.
    if time.time() % 30 > 25:
        time.sleep(31 - time.time() % 30)
    code = totp(secret)
    p = agent.jit(bob, "approve", str(r1), "--otp", code)
    assert p.returncode == 0, p.stderr
    assert "approved" in p.stdout
    r2 = json.loads(request(agent, carol, "--for", "30m", "--reason", "x", "--json").stdout)["id"]
    p = agent.jit(bob, "approve", str(r2), "--otp", code)
    assert p.returncode == 5 and "already used" in p.stderr
    assert agent.jit(bob, "approve", str(r2), "--otp", "12345").returncode == 2
    # The secret is readable by root only: the database folder is 0700.
    assert oct(os.stat(os.path.dirname(agent.database)).st_mode & 0o777) == "0o700"
    assert agent.jit(alice, "mfa", "reset", bob).returncode == 5
    assert agent.jit(None, "mfa", "reset", bob).returncode == 0


def test_check_config_rejects_bad_rules_and_warns_about_unknown_groups(agent):
    bad = HEAD + """  - name: a
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    approvals: auto
  - name: b
    requesters: {groups: [jit-requesters]}
    scopes: [sudo]
    approvals: {groups: [jit-approvers], required: 2}
"""
    agent.write_config(bad)
    p = run([JITD, "check-config", "--config", agent.config])
    assert p.returncode == 1
    assert ":11: rule b: can never match: rule 'a' (line 7)" in p.stderr
    assert agent.start(expect_ok=False) == 1
    for text, words in [
        ("    when: {sources: [10.0.0.1/8]}\n", ":11: rule a: when.sources: '10.0.0.1/8' has bits set"),
        ("    when: {time_zone: Europe/Atlantis, hours: \"9-17\"}\n", ":11: rule a: when.time_zone: 'Europe/Atlantis' is not a known time zone"),
        ("    max_duration: 8d\n", ":11: rule a: max_duration: 8d is over the hard ceiling"),
    ]:
        agent.write_config(HEAD + """  - name: a
    requesters: {groups: [jit-requesters]}
    scopes: [login]
    approvals: auto
""" + text)
        p = run([JITD, "check-config", "--config", agent.config])
        assert p.returncode == 1 and words in p.stderr, p.stderr
    agent.write_config(HEAD + """  - name: a
    requesters: {groups: [jitp-no-such-group]}
    scopes: [login]
    approvals: auto
""")
    p = run([JITD, "check-config", "--config", agent.config])
    assert p.returncode == 0, p.stderr
    assert "warning:" in p.stderr and ":7: rule a: requesters: the group 'jitp-no-such-group' is not known" in p.stderr
    assert "rule 'a' (line 7)" in p.stdout


def test_sighup_reload_switches_rules_and_keeps_pending_requests(agent, people):
    agent.start()
    alice, bob = people["alice"], people["bob"]
    pending = json.loads(request(agent, alice, "--for", "30m", "--reason", "x", "--json").stdout)
    text = open(agent.config).read()
    agent.write_config(text + """rules:
  - name: auto-login
    requesters: {groups: [jit-requesters]}
    scopes: [login]
    approvals: auto
""")
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    p = request(agent, alice, "--for", "30m", "--reason", "y")
    assert p.returncode == 0 and "approved automatically by rule 'auto-login'" in p.stdout, p.stdout + p.stderr
    # The pending request was filed under the default rule, which the reloaded config still has.
    assert agent.jit_json(bob, "show", str(pending["id"]))["state"] == "pending"
    assert agent.jit(bob, "approve", str(pending["id"])).returncode == 0
    agent.write_config(text + "rules: [oops\n")
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert agent.proc.poll() is None and "reload refused" in agent.read_log()
