"""Forward-secure sealing end to end (issue #16): jitd seals the trail every epoch, at stop and on demand; an
attacker with root and the sqlite3 tool changes, removes, inserts, swaps, cuts, recomputes and forges, and
`jit audit verify --verify-key` names the epoch or event every time; a SIGKILL in the middle of key
evolution never reuses a key and the trail still verifies."""
import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import sys
import time

import pytest

from conftest import REPO, needs_root, run
from test_audit_e2e import SyslogCatcher, story

sys.path.insert(0, os.path.join(REPO, "bench"))
from run import audit_hash, kv  # noqa: E402  (the chain's canonical form, shared with the benchmark)

pytestmark = needs_root


def config(agent, interval="2s", extra=""):
    text = open(os.path.join(REPO, "packaging", "jit.yaml")).read()
    return text + f"\naudit:\n  syslog_socket: {agent.tmp}/log.sock\n  seal_interval: {interval}\n" + extra


def setup_keys(agent):
    p = agent.jit(None, "audit", "setup-keys", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def verify(agent, key, *extra):
    p = agent.jit(None, "audit", "verify", "--verify-key", key, "--database", agent.database, "--json", *extra)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def seals(agent, why=None):
    con = sqlite3.connect(agent.database)
    try:
        rows = con.execute("SELECT id, data FROM audit WHERE kind = 'audit.seal' ORDER BY id").fetchall()
    finally:
        con.close()
    out = []
    for id_, data in rows:
        d = dict(line.split("=", 1) for line in data.split("\n"))
        d["id"] = id_
        if why is None or d["why"] == why:
            out.append(d)
    return out


def wait_for_closing_seals(agent, n, timeout=40):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(seals(agent, "interval")) + len(seals(agent, "resume")) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"jitd made fewer than {n} closing seals in {timeout} s: {agent.read_log()}")


def sealed_trail(agent, people, closing=3):
    """A running agent, a key, a story in epoch 0 and `closing` epochs sealed; jitd stopped (its stop seal in)."""
    agent.write_config(config(agent))
    agent.start()
    key = setup_keys(agent)
    story(agent, people)
    wait_for_closing_seals(agent, closing)
    agent.stop()
    return key


# -- the attacker's tools: sqlite3, the chain's public hash, and whatever key file they can read --------------

def k0(seed):
    return hmac.new(seed, b"jit-seal-k0-v1", hashlib.sha256).digest()


def evolve(k, steps=1):
    for _ in range(steps):
        k = hmac.new(k, b"jit-seal-evolve-v1", hashlib.sha256).digest()
    return k


def seal_tag(k, d, at):
    msg = bytearray(b"jit-seal-v1")
    for f in (d["setup"], d["epoch"], d["next"], d["why"], d["head_id"], d["head"], d["count"], str(at)):
        u = str(f).encode()
        msg += str(len(u)).encode() + b":" + u
    mk = hmac.new(k, b"jit-seal-mac-v1", hashlib.sha256).digest()
    return hmac.new(mk, bytes(msg), hashlib.sha256).hexdigest()


def read_key_file(path):
    words = dict(w.split("=", 1) for w in open(path).read().split()[2:])
    return int(words["epoch"]), bytes.fromhex(words["key"])


def rechain(db, key_for_epoch=None):
    """Recomputes every hash from event 1, as an attacker covering an edit would; with `key_for_epoch`,
    also rewrites every seal (head, count, tag) with the key the attacker has for that epoch."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, at, kind, actor, user, request_id, grant_id, data FROM audit ORDER BY id").fetchall()
    prev, since = "0" * 64, 0
    last_id = 0
    for id_, at, kind, actor, user, req, grant, data in rows:
        if kind == "audit.seal" and key_for_epoch:
            d = dict(line.split("=", 1) for line in data.split("\n"))
            d["head_id"], d["head"], d["count"] = str(last_id), prev, str(since)
            d["tag"] = seal_tag(key_for_epoch(int(d["epoch"])), d, at)
            data = "\n".join(f"{k}={d[k]}" for k in ("setup", "epoch", "next", "why", "head_id", "head", "count", "tag"))
        h = audit_hash(id_, at, kind, actor, user, req, grant, data, prev)
        con.execute("UPDATE audit SET data = ?, prev_hash = ?, hash = ? WHERE id = ?", (data, prev, h, id_))
        since = 0 if kind in ("audit.seal", "audit.seal_setup") else since + 1
        prev, last_id = h, id_
    con.commit()
    con.close()


def filed_event(agent):
    return int(agent.sql("SELECT id FROM audit WHERE kind = 'request.filed' ORDER BY id LIMIT 1"))


def epoch_sealing(agent, event_id):
    """The epoch of the first seal after an event: the seal that vouches for it."""
    return int(next(s for s in seals(agent) if s["id"] > event_id)["epoch"])


# -- the attacks --------------------------------------------------------------------------------------------

TAMPER = {
    "changed": ("UPDATE audit SET actor = 'mallory' WHERE id = {n}", 0),
    "deleted": ("DELETE FROM audit WHERE id = {n}", 0),
    "inserted": ("UPDATE audit SET id = id + 1000000 WHERE id > {n}; UPDATE audit SET id = id - 999999 WHERE id > 1000000; "
                 "INSERT INTO audit SELECT {n} + 1, at, kind, actor, user, request_id, grant_id, data, prev_hash, hash FROM audit WHERE id = {n}", 1),
    "swapped": ("UPDATE audit SET id = -1 WHERE id = {n}; UPDATE audit SET id = {n} WHERE id = {n} + 1; UPDATE audit SET id = {n} + 1 WHERE id = -1", 0),
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_verify_key_names_the_event_and_epoch_of_a_row_edit(agent, people, how):
    key = sealed_trail(agent, people)
    n = filed_event(agent)
    epoch = epoch_sealing(agent, n)
    sql, shift = TAMPER[how]
    run(["sqlite3", agent.database, sql.format(n=n)], check=True)
    rc, v, err = verify(agent, key["verify_key"])
    assert rc == 1 and not v["ok"], v
    assert v["bad_id"] == n + shift and f"event {n + shift}" in v["problem"], v["problem"]
    assert v["bad_epoch"] == epoch and f"epoch {epoch}" in v["problem"], v["problem"]
    assert "BROKEN" in err


def test_whole_chain_recomputed_from_event_1_is_caught_at_the_seal(agent, people):
    key = sealed_trail(agent, people)
    n = filed_event(agent)
    epoch = epoch_sealing(agent, n)
    agent.sql(f"UPDATE audit SET data = replace(data, 'OPS-1', 'OPS-9') WHERE id = {n}")
    rechain(agent.database)
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 1 and v["bad_epoch"] == epoch, v
    assert f"the seal of epoch {epoch}" in v["problem"] and "recomputed" in v["problem"], v["problem"]
    # Without the key the recomputed chain looks fine: that is what sealing adds.
    agent.start()
    assert agent.jit(None, "audit", "verify").returncode == 0


def test_last_sealed_events_cut_off_show_as_missing_epochs(agent, people):
    key = sealed_trail(agent, people, closing=4)
    all_seals = seals(agent)
    keep = next(s for s in all_seals if s["why"] == "interval")
    cut_from = keep["id"] + 1
    agent.sql(f"DELETE FROM audit WHERE id >= {cut_from}")
    # Left as it is: the epoch after the last seal ended long ago with no seal.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    rc, v, _ = verify(agent, key["verify_key"], "--as-of", later)
    assert rc == 1 and v["bad_epoch"] == int(keep["next"]), v
    assert f"epochs {keep['next']} to" in v["problem"] and "no closing seal" in v["problem"], v["problem"]
    # And once jitd runs again, its next seal is for an epoch far past the cut: the gap is named.
    agent.start()
    assert agent.jit(None, "audit", "seal").returncode == 0
    agent.stop()
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 1 and v["bad_epoch"] == int(keep["next"]) and "no seal: a seal was deleted or the trail cut" in v["problem"], v


def test_a_deleted_seal_shows_as_a_missing_epoch(agent, people):
    key = sealed_trail(agent, people, closing=4)
    victim = [s for s in seals(agent) if s["why"] == "interval"][1]
    # The attacker removes the seal, renumbers the events after it and recomputes the chain: no hole left.
    agent.sql(f"DELETE FROM audit WHERE id = {victim['id']}; UPDATE audit SET id = id + 1000000 WHERE id > {victim['id']}; "
              "UPDATE audit SET id = id - 1000001 WHERE id > 1000000")
    rechain(agent.database)
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 1 and v["bad_epoch"] == int(victim["epoch"]), v
    assert f"epoch {victim['epoch']} (" in v["problem"] and "no seal" in v["problem"], v["problem"]


def test_a_seal_forged_with_the_current_key_file_is_caught(agent, people):
    key = sealed_trail(agent, people)
    n = filed_event(agent)
    epoch = epoch_sealing(agent, n)
    cur_epoch, cur = read_key_file(os.path.join(os.path.dirname(agent.database), "seal.key"))
    assert cur_epoch > epoch
    agent.sql(f"UPDATE audit SET actor = 'mallory' WHERE id = {n}")
    # The best the attacker can do: the current key for the past, keys derived from it for the future.
    rechain(agent.database, key_for_epoch=lambda e: evolve(cur, max(0, e - cur_epoch)))
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 1 and v["bad_epoch"] == epoch, v
    assert f"the seal of epoch {epoch}" in v["problem"] and "forged" in v["problem"], v["problem"]


def test_a_key_file_rolled_back_to_an_old_copy(agent, people):
    agent.write_config(config(agent))
    agent.start()
    key = setup_keys(agent)
    story(agent, people)
    n = filed_event(agent)
    keyfile = os.path.join(os.path.dirname(agent.database), "seal.key")
    wait_for_closing_seals(agent, 2)
    shutil.copy(keyfile, agent.tmp + "/stolen.key")  # the attacker keeps a copy...
    old_epoch, old = read_key_file(agent.tmp + "/stolen.key")
    wait_for_closing_seals(agent, 5)
    agent.stop()
    epoch = epoch_sealing(agent, n)
    assert epoch < old_epoch
    # ...and later puts it back, rewrites an event sealed before it, and re-seals with what it can derive.
    shutil.copy(agent.tmp + "/stolen.key", keyfile)
    agent.sql(f"UPDATE audit SET actor = 'mallory' WHERE id = {n}")
    rechain(agent.database, key_for_epoch=lambda e: evolve(old, max(0, e - old_epoch)))
    agent.start()
    agent.stop()
    # jitd saw the key was behind the trail's seals and never sealed with it again.
    assert int(agent.sql("SELECT count(*) FROM audit WHERE kind = 'audit.seal_key_rollback'")) == 1
    now_epoch, now_key = read_key_file(keyfile)
    assert now_epoch > old_epoch and now_key != old
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 1 and v["bad_epoch"] == epoch and "forged" in v["problem"], v


def test_clean_trail_with_unsealed_recent_events_is_ok(agent, people):
    agent.write_config(config(agent, interval="1h"))
    catcher = SyslogCatcher(f"{agent.tmp}/log.sock")
    try:
        agent.start()
        key = setup_keys(agent)
        assert len(key["verify_key_short"].split("-")) == 11
        story(agent, people)
        assert agent.jit(None, "audit", "seal").returncode == 0
        p = agent.jit(people["alice"], "request", "--for", "5m", "--reason", "after the seal")
        assert p.returncode == 0, p.stderr
        # Both forms of the key verify; the events after the seal are reported, not proven.
        for k in (key["verify_key"], key["verify_key_short"], key["verify_key_short"].lower().replace("-", "")):
            rc, v, _ = verify(agent, k)
            assert rc == 0 and v["ok"] and v["seals"] == 1 and v["unsealed"] >= 1 and v["unsealed_since"], v
        p = agent.jit(None, "audit", "verify", "--verify-key", key["verify_key"], "--database", agent.database)
        assert p.returncode == 0 and "audit trail OK" in p.stdout and f"not yet sealed: {v['unsealed']} events since" in p.stdout, p.stdout
        # A mistyped short key fails its checksum instead of verifying nothing.
        bad = key["verify_key_short"][:-1] + ("A" if key["verify_key_short"][-1] != "A" else "B")
        p = agent.jit(None, "audit", "verify", "--verify-key", bad, "--database", agent.database)
        assert p.returncode == 2 and "checksum" in p.stderr, p.stderr
        # The seal went to syslog with the other events.
        deadline = time.time() + 10
        while time.time() < deadline and not any(" audit.seal [jit@32473 " in line for line in catcher.lines):
            time.sleep(0.1)
        assert any(" audit.seal [jit@32473 " in line and "tag=" in line for line in catcher.lines)
        # Only root sets up keys or seals; the verification key is never stored on the host.
        assert agent.jit(people["bob"], "audit", "seal").returncode == 5
        assert agent.jit(people["bob"], "audit", "setup-keys").returncode == 5
        assert agent.jit(None, "audit", "setup-keys").returncode == 1  # already set up: --force to replace
        seed = key["verify_key"].split("/")[0]
        for root, _, files in os.walk(os.path.dirname(agent.database)):
            for f in files:
                assert seed.encode() not in open(os.path.join(root, f), "rb").read(), f
    finally:
        catcher.close()


# -- SIGKILL in the middle of key evolution ------------------------------------------------------------------

@pytest.mark.parametrize("step", ["seal-appended", "new-key-written", "old-key-destroyed"])
def test_sigkill_during_key_evolution_never_reuses_a_key(agent, people, step, monkeypatch):
    agent.write_config(config(agent))
    agent.start()
    key = setup_keys(agent)
    keyfile = os.path.join(os.path.dirname(agent.database), "seal.key")
    story(agent, people)
    agent.stop()
    # jitd kills itself at that step of the first epoch it closes.
    monkeypatch.setenv("JITD_TEST_CRASH", step)
    before_epoch, before = read_key_file(keyfile)
    assert agent.start(expect_ok=False) == -signal.SIGKILL, agent.read_log()
    monkeypatch.delenv("JITD_TEST_CRASH")
    agent.start()
    wait_for_closing_seals(agent, 2)
    agent.stop()
    epoch, now = read_key_file(keyfile)
    assert epoch > before_epoch
    # The old key is gone from every file, and no two seals share an epoch with different keys (verify
    # derives each epoch's key: a reused key would fail the MAC of the later epoch).
    d = os.path.dirname(agent.database)
    for f in os.listdir(d):
        assert before.hex().encode() not in open(os.path.join(d, f), "rb").read(), f
    assert not os.path.exists(keyfile + ".new")
    closing = [int(s["epoch"]) for s in seals(agent) if s["why"] in ("interval", "resume")]
    assert len(closing) == len(set(closing)), closing
    rc, v, _ = verify(agent, key["verify_key"])
    assert rc == 0 and v["ok"], v
