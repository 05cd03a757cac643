#!/usr/bin/env python3
"""make demo: the main job of jit-access, end to end, in plain words.

Starts jitd on an embedded SQLite database in a temp folder and a real sshd on a loopback port with
pam_jit.so (its own PAM service file, never the host's), creates two throw-away users, and walks through:
a login refused, a request filed, the approver approving it, the waiting login let in, sudo under a grant,
revocation, sudo refused again, and `jit run --once`: one command approved, run through sudo, the grant spent. It leaves the machine as it found it, even when interrupted (Ctrl-C).
"""
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
os.environ.setdefault("JIT_BIN", os.path.join(REPO, ".build", "debug"))

from conftest import Agent, Users  # noqa: E402
from hosts import EtcFiles, Sshd, Sudo, pam_args  # noqa: E402

from demo_words import fail, ok, show  # noqa: E402
from demo_words import say as say_words  # noqa: E402


def say(text):
    say_words(text, pause=0.3)


def main():
    if os.geteuid() != 0:
        print("make demo needs root: it creates throw-away users and runs sshd and sudo. Run: sudo make demo", file=sys.stderr)
        return 2
    if os.path.exists("/run/jit/jitd.sock"):
        print("A jitd is already running on this host (/run/jit/jitd.sock); the demo uses its own agent, but stop the "
              "real one first so the two do not meet.", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="jitdemo")
    users, etc = Users(), EtcFiles()
    agent = sshd = None

    def cleanup(*_):
        for thing in (sshd, agent):
            if thing:
                thing.stop()
        etc.cleanup()
        users.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        say("1. Start the agent, jitd, on an embedded SQLite database in a temp folder.")
        agent = Agent(tmp)
        agent.start()
        print(f"  socket {agent.socket}\n  database {agent.database}\n  policy: members of jit-requesters may ask for up to 4h;"
              " one approval from jit-approvers; a reason is required")
        ana = users.user("ana", ["jit-requesters"])
        ben = users.user("ben", ["jit-approvers"])
        print(f"  throw-away users: {ana} (requester), {ben} (approver)")

        say("2. Start a real sshd on 127.0.0.1 whose PAM account stage asks jitd (pam_jit.so, timeout=0).")
        sshd = Sshd(tmp, etc)
        sshd.configure(pam_args(agent, timeout=0))
        sshd.start()
        print(f"  sshd on port {sshd.port}, PAM service /etc/pam.d/{sshd.name}:")
        print("    " + open(f"/etc/pam.d/{sshd.name}").read().strip().replace("\n", "\n    "))

        say(f"3. {ana} tries to log in with her ssh key. She holds no grant, so the login is refused, and jitd files a request for her.")
        p = sshd.ssh(ana, "hostname")
        show(f"ssh {ana}@127.0.0.1 hostname", p)
        if p.returncode == 0:
            fail("the login got in without a grant")
        ok("login refused")
        p = agent.jit(ben, "list", "--pending")
        show(f"jit list --pending        # as {ben}", p)
        rid = agent.jit_json(ben, "list", "--pending")[0]["id"]

        say("4. This time the login waits for a decision (timeout=60). While it waits, the approver approves.")
        sshd.configure(pam_args(agent, timeout=60))
        result = {}
        t = threading.Thread(target=lambda: result.update(p=sshd.ssh(ana, "echo \"logged in as $(whoami) on $(hostname)\"", timeout=90)))
        t.start()
        time.sleep(1.5)
        print(f"  ... {ana}'s ssh is waiting ...")
        p = agent.jit(ben, "approve", str(rid), "--comment", "looks fine")
        show(f"jit approve {rid} --comment 'looks fine'   # as {ben}", p)
        t.join(timeout=60)
        show(f"ssh {ana}@127.0.0.1 ...   (the waiting login)", result["p"])
        if result["p"].returncode != 0:
            fail("the approved login was not let in")
        ok("the waiting login was let in by the approval itself")

        say(f"5. {ana} asks for sudo, for 10 minutes, with a reason. {ben} approves; sudo works under the grant.")
        Sudo(agent, etc, [ana], account_args=pam_args(agent, timeout=0))
        p = agent.jit(ana, "request", "--for", "10m", "--sudo", "--reason", "restart the stuck worker")
        show("jit request --for 10m --sudo --reason 'restart the stuck worker'   # as " + ana, p)
        sid = agent.jit_json(ben, "list", "--pending")[0]["id"]
        show(f"jit approve {sid}   # as {ben}", agent.jit(ben, "approve", str(sid)))
        print(f"  jitd wrote {agent.sudoers}/" + ", ".join(os.listdir(agent.sudoers)) + ":")
        for f in os.listdir(agent.sudoers):
            print("    " + open(os.path.join(agent.sudoers, f)).read().strip().replace("\n", "\n    "))
        p = Sudo.as_user(ana, "/usr/bin/id", "-un")
        show("sudo -n id -un   # as " + ana, p)
        if p.stdout.strip() != "root":
            fail("sudo did not work under the grant")
        ok("sudo works while the grant is active")
        show(f"jit grants --active   # as {ben}", agent.jit(ben, "grants", "--active"))

        say(f"6. {ben} revokes the sudo grant: the sudoers file is gone at once and sudo is refused again.")
        gid = [g for g in agent.jit_json(ben, "grants", "--active") if g["scope"] == "sudo"][0]["id"]
        show(f"jit revoke {gid}   # as {ben}", agent.jit(ben, "revoke", str(gid)))
        p = Sudo.as_user(ana, "/usr/bin/id", "-un")
        show("sudo -n id -un   # as " + ana, p)
        if p.returncode == 0:
            fail("sudo still worked after revocation")
        ok(f"sudo refused; {agent.sudoers} holds {len(os.listdir(agent.sudoers))} files")

        say(f"7. The login grant ends too: {ben} revokes it, and a new login is refused.")
        lid = agent.jit_json(ben, "grants", "--active")[0]["id"]
        show(f"jit revoke {lid}   # as {ben}", agent.jit(ben, "revoke", str(lid)))
        sshd.configure(pam_args(agent, timeout=0))
        p = sshd.ssh(ana, "hostname")
        show(f"ssh {ana}@127.0.0.1 hostname", p)
        if p.returncode == 0:
            fail("a login got in after revocation")
        ok("login refused again")
        show(f"jit list   # as {ben}", agent.jit(ben, "list"))

        say(f"8. Approve the action, not the person: {ana} asks to run one command once (jit run --once). "
            f"{ben} approves that exact command line; it runs through sudo, and the grant is spent by that one use.")
        result = {}
        t = threading.Thread(target=lambda: result.update(p=agent.jit(ana, "run", "--once", "--reason", "check the worker's uid", "--", "id", "-u")))
        t.start()
        for _ in range(200):
            # The login attempt of step 7 is still pending too: pick the request jit run filed.
            pend = [r for r in agent.jit_json(ben, "list", "--pending") if r.get("commands")]
            if pend:
                break
            time.sleep(0.05)
        else:
            fail("jit run filed no request")
        rid = pend[0]["id"]
        print(f"  ... {ana}'s jit run waits for request {rid}: {pend[0]['commands'][0]} (once) ...")
        show(f"jit approve {rid}   # as {ben}", agent.jit(ben, "approve", str(rid)))
        t.join(timeout=60)
        show(f"jit run --once --reason '...' -- id -u   # as {ana}", result["p"])
        if result["p"].returncode != 0 or result["p"].stdout.strip() != "0":
            fail("jit run did not run the approved command")
        ok("the approved command ran through sudo and exited with its own status")
        p = Sudo.as_user(ana, "/usr/bin/id", "-u")
        show("sudo -n /usr/bin/id -u   # as " + ana + ", again", p)
        if p.returncode == 0:
            fail("a spent one-shot grant worked twice")
        g = [g for g in agent.jit_json(ben, "grants") if g["request_id"] == rid][0]
        ok(f"refused: grant {g['id']} is {g['state']}; its sudoers file is gone")

        say("Done. Cleaning up: agent and sshd stopped, users, PAM and sudoers files removed.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up")
        return 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
