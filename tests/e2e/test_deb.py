"""The .deb end to end, as root, on this machine (issue 7): install, serve the installed jit, the installed
module (pamtester, a real sshd login, a real sudo), reinstall over an active grant, remove, purge.

It uses dist/jit-access_*_amd64.deb, which `make check` builds first (`make deb`). It skips, saying why,
when not root, when there is no package, or when jit-access is already installed here (it would not leave
the machine as it found it). Whatever happens, the package is purged and every file the test wrote under
/etc is removed before it ends.
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

import hosts
from conftest import REPO, needs_root, run, wait_for
from hosts import EtcFiles, Sshd

pytestmark = needs_root

PKG = "jit-access"
SOCKET = "/run/jit/jitd.sock"
CONFIG = "/etc/jit/jit.yaml"
DATABASE = "/var/lib/jit/jit.db"
MODULE = "/lib/x86_64-linux-gnu/security/pam_jit.so"
UNIT = "/lib/systemd/system/jitd.service"
SYSTEMD = os.path.isdir("/run/systemd/system")
# Names the test harnesses (ours and the other e2e tests, which may run at the same time) give their files.
HARNESS_PAM = ("sshd-jit", "sudo-jit", "jit-pt-", "jitdeb-")

# Everything the package may leave on the machine; after a purge none of it may exist.
OURS = [
    "/usr/sbin/jitd", "/usr/bin/jit", MODULE, UNIT, "/etc/jit", "/var/lib/jit", "/run/jit",
    "/usr/share/pam-configs/jit", "/usr/share/doc/jit-access", "/usr/share/bash-completion/completions/jit",
    "/usr/share/man/man1/jit.1.gz", "/usr/share/man/man8/jitd.8.gz", "/usr/share/man/man5/jit.yaml.5.gz",
    "/usr/share/man/man8/pam_jit.8.gz", "/usr/share/lintian/overrides/jit-access",
    "/etc/systemd/system/jitd.service", "/etc/systemd/system/multi-user.target.wants/jitd.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/jitd.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/jitd.service",
    "/var/lib/systemd/deb-systemd-helper-masked/jitd.service",
]


def the_deb():
    debs = sorted(glob.glob(os.path.join(REPO, "dist", f"{PKG}_*_amd64.deb")))
    return debs[-1] if debs else None


@pytest.fixture(scope="module")
def deb():
    path = the_deb()
    if path is None:
        pytest.skip("no dist/jit-access_*_amd64.deb: run 'make deb' first ('make check' does)")
    return path


def installed():
    p = run(["dpkg-query", "-W", "-f=${Status}", PKG])
    return p.returncode == 0 and "installed" in p.stdout and "not-installed" not in p.stdout and "config-files" not in p.stdout


def known_to_dpkg():
    p = run(["dpkg-query", "-W", "-f=${Status}", PKG])
    return p.returncode == 0 and "not-installed" not in p.stdout


def pam_d_hashes():
    """Every file in /etc/pam.d but the test harnesses' own service files."""
    out = {}
    for name in sorted(os.listdir("/etc/pam.d")):
        if name.startswith(HARNESS_PAM):
            continue
        path = os.path.join("/etc/pam.d", name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def ours_in_sudoers():
    return sorted(n for n in os.listdir("/etc/sudoers.d") if n.startswith("jit-grant-") or n.startswith(".jit-tmp"))


def dpkg(*args, env=None):
    e = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    e.update(env or {})
    return run(["dpkg", *args], timeout=180, env=e)


def socket_answers():
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(1)
        s.connect(SOCKET)
        s.close()
        return True
    except OSError:
        return False


def unit_capabilities():
    """The unit's CapabilityBoundingSet, as setpriv's --bounding-set argument."""
    for line in open(UNIT):
        if line.startswith("CapabilityBoundingSet="):
            caps = line.split("=", 1)[1].split()
            return "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
    raise AssertionError("the unit has no CapabilityBoundingSet")


class InstalledAgent:
    """The installed jitd on the installed config: under systemd when it runs, else started directly with the
    unit's capability bounding set and no_new_privs, as the unit would."""

    socket = SOCKET

    def __init__(self, tmp):
        self.log = os.path.join(tmp, "jitd.log")
        self.proc = None

    def start(self):
        if SYSTEMD:
            run(["systemctl", "start", "jitd"], check=True)
        else:
            logf = open(self.log, "ab")
            self.proc = subprocess.Popen(
                ["setpriv", "--no-new-privs", "--bounding-set", unit_capabilities(), "--",
                 "/usr/sbin/jitd", "--config", CONFIG], stdout=logf, stderr=subprocess.STDOUT)
        if not wait_for(socket_answers, 15):
            raise AssertionError("the installed jitd did not open its socket: " + self.read_log())

    def stop(self):
        if SYSTEMD:
            run(["systemctl", "stop", "jitd"])
        elif self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def running(self):
        if SYSTEMD:
            return run(["systemctl", "is-active", "--quiet", "jitd"]).returncode == 0
        return self.proc is not None and self.proc.poll() is None

    def read_log(self):
        if SYSTEMD:
            return run(["journalctl", "-u", "jitd", "-n", "50", "--no-pager"]).stdout
        try:
            return open(self.log, errors="replace").read()
        except FileNotFoundError:
            return ""

    def jit(self, user, *args):
        """The installed /usr/bin/jit, as `user` (None = root), on the default socket."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        cmd = ["/usr/bin/jit", *args]
        if user is not None:
            cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *cmd]
        return run(cmd, env=env)

    def jit_json(self, user, *args):
        p = self.jit(user, *args, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)


def sudo_as(user, *argv):
    return run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "sudo", "-n", *argv],
               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=30)


def pamtester(service, user, *ops):
    return run(["pamtester", "-v", service, user, *ops], timeout=30)


def test_package_contents(deb):
    size = os.path.getsize(deb)
    assert size < 25 * 1024 * 1024, f"{deb} is {size / 1048576:.1f} MB"
    info = run(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"], check=True).stdout
    fields = dict(line.split(": ", 1) for line in info.strip().splitlines())
    assert fields["Package"] == PKG and fields["Architecture"] == "amd64"
    assert os.path.basename(deb) == f"{PKG}_{fields['Version']}_amd64.deb"
    depends = {d.strip().split(" ")[0] for d in fields["Depends"].replace("|", ",").split(",")}
    # zlib1g: the audit trail's archives are gzip files.
    assert depends <= {"libc6", "libgcc-s1", "libstdc++6", "libpam0g", "libsqlite3-0", "zlib1g", "libpam-runtime", "sudo", "sudo-ldap"}, depends
    assert {"libpam0g", "libsqlite3-0", "sudo"} <= depends
    listing = run(["dpkg-deb", "-c", deb], check=True).stdout
    for path in ["./usr/sbin/jitd", "./usr/bin/jit -> ../sbin/jitd", "." + MODULE, "." + UNIT, "./etc/jit/jit.yaml",
                 "./usr/share/pam-configs/jit", "./usr/share/doc/jit-access/copyright",
                 "./usr/share/doc/jit-access/changelog.gz", "./usr/share/bash-completion/completions/jit",
                 "./usr/share/man/man1/jit.1.gz", "./usr/share/man/man8/jitd.8.gz", "./usr/share/man/man5/jit.yaml.5.gz"]:
        assert path in listing, f"{path} is not in the package"
    if os.path.exists(os.path.join(REPO, "packaging", "man", "pam_jit.8")):
        assert "./usr/share/man/man8/pam_jit.8.gz" in listing
    assert "./var/lib/jit" not in listing  # postinst makes it, purge removes it
    control = run(["dpkg-deb", "-I", deb, "conffiles"], check=True).stdout.split()
    assert control == ["/etc/jit/jit.yaml"]
    # The binaries are stripped; the module exports only pam_sm_* and never links Swift.
    tmp = os.path.join("/tmp", "jitdeb-x-" + uuid.uuid4().hex[:6])
    try:
        run(["dpkg-deb", "-x", deb, tmp], check=True)
        for f in [tmp + "/usr/sbin/jitd", tmp + MODULE]:
            assert ".symtab" not in run(["readelf", "-S", f], check=True).stdout, f"{f} is not stripped"
        needed = run(["objdump", "-p", tmp + "/usr/sbin/jitd"], check=True).stdout
        assert "libswift" not in needed and "libFoundation" not in needed, "not built with --static-swift-stdlib"
        syms = run(["nm", "-D", "--defined-only", tmp + MODULE], check=True).stdout.split()
        assert [s for s in syms if s.startswith("pam_")] and all(s.startswith("pam_sm_") for s in syms if s.startswith(("pam_", "jit"))), syms
        prof = open(tmp + "/usr/share/pam-configs/jit").read()
        assert "Default: no" in prof
        assert open(tmp + "/etc/jit/jit.yaml").read() == open(os.path.join(REPO, "packaging", "jit.yaml")).read()
        completion = open(tmp + "/usr/share/bash-completion/completions/jit").read()
        assert "jit" in completion and not completion.startswith("#!")
        assert run(["bash", "-n", tmp + "/usr/share/bash-completion/completions/jit"]).returncode == 0
    finally:
        run(["rm", "-rf", tmp])


def test_lintian_reports_no_errors(deb):
    if run(["sh", "-c", "command -v lintian"]).returncode != 0:
        pytest.fail("lintian is not installed: run 'make deps'")
    p = run(["lintian", "--fail-on", "error", "--no-tag-display-limit", deb], timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [l for l in p.stdout.splitlines() if l.startswith("E:")], p.stdout


def test_install_serve_reinstall_remove_purge(deb, users, tmpdir_root, monkeypatch):
    if known_to_dpkg():
        pytest.skip(f"{PKG} is already installed here (or its config files are): the test would not leave the machine as it found it")
    if os.path.exists(SOCKET):
        pytest.skip(f"something already listens on {SOCKET}")
    etc = EtcFiles()
    tag = uuid.uuid4().hex[:6]
    agent = InstalledAgent(tmpdir_root)
    sshd = None
    pam_before = pam_d_hashes()
    sudoers_before = ours_in_sudoers()
    seen_before = open("/var/lib/pam/seen").read() if os.path.exists("/var/lib/pam/seen") else ""
    alice = users.user("alice", ["jit-requesters"])  # will hold a sudo grant
    dave = users.user("dave", ["jit-requesters"])    # never gets one
    bob = users.user("bob", ["jit-approvers"])
    carl = users.user("carl")                         # a normal sudoer, outside jit
    etc.write(f"/etc/sudoers.d/jitdebtest-{tag}", f"{carl} ALL=(root) NOPASSWD: /usr/bin/id\n", mode=0o440)
    assert run(["visudo", "-c"]).returncode == 0
    assert sudo_as(carl, "/usr/bin/id", "-u").stdout.strip() == "0"
    try:
        # --- Install: state and config in place, no PAM stack or sudoers file touched.
        p = dpkg("-i", deb)
        assert p.returncode == 0, p.stdout + p.stderr
        if not SYSTEMD:
            assert "systemd is not running" in p.stderr
        assert installed()
        assert pam_d_hashes() == pam_before, "installing changed /etc/pam.d"
        assert ours_in_sudoers() == sudoers_before
        st = os.stat("/var/lib/jit")
        assert oct(st.st_mode & 0o777) == "0o700" and st.st_uid == 0
        assert os.readlink("/usr/bin/jit") == "../sbin/jitd"
        assert run(["dpkg-query", "-W", "-f=${Conffiles}", PKG]).stdout.split()[0] == CONFIG
        p = run(["jitd", "check-config", "--config", CONFIG], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert p.returncode == 0 and "OK" in p.stdout, p.stderr
        version = run(["dpkg-query", "-W", "-f=${Version}", PKG]).stdout
        assert run(["/usr/bin/jit", "--version"]).stdout.strip() == version
        assert run(["/usr/sbin/jitd", "--version"]).stdout.strip() == version
        if run(["sh", "-c", "command -v systemd-analyze"]).returncode == 0:
            p = run(["systemd-analyze", "verify", UNIT])
            assert p.returncode == 0, p.stdout + p.stderr

        # --- The installed agent serves the installed jit.
        agent.start()
        assert agent.jit(None, "status").returncode == 0
        st = os.stat(SOCKET)
        assert st.st_uid == 0 and oct(st.st_mode & 0o777) == "0o666"
        p = agent.jit(alice, "request", "--for", "30m", "--sudo", "--reason", "deb test", "--json")
        assert p.returncode == 0, p.stderr
        rid = json.loads(p.stdout)["id"]
        p = agent.jit(bob, "approve", str(rid), "--json")
        assert p.returncode == 0, p.stderr
        gid = json.loads(p.stdout)["grant_id"]
        grant_file = f"/etc/sudoers.d/jit-grant-{gid}"
        assert os.path.exists(grant_file)
        p = agent.jit(dave, "request", "--for", "10m", "--reason", "stays pending", "--json")
        assert p.returncode == 0, p.stderr
        pending = json.loads(p.stdout)["id"]

        # --- The installed module by its bare name (so from /lib/x86_64-linux-gnu/security): pamtester.
        svc = f"jitdeb-pt-{tag}"
        etc.write(f"/etc/pam.d/{svc}", "account required pam_jit.so timeout=0\naccount required pam_permit.so\n")
        assert pamtester(svc, alice, "acct_mgmt").returncode == 0
        p = pamtester(svc, dave, "acct_mgmt")
        assert p.returncode != 0 and f"jit approve {pending}" in p.stdout + p.stderr
        assert pamtester(svc, "root", "acct_mgmt").returncode == 0

        # --- A real sshd login through the installed module.
        monkeypatch.setattr(hosts, "PAM", "pam_jit.so")  # the harness's sshd service names the installed module
        sshd = Sshd(tmpdir_root, etc, name=f"sshd-jitdeb{tag}")
        sshd.configure(f"socket={SOCKET} timeout=0")
        sshd.start()
        p = sshd.ssh(alice, "echo IN-$((40+2))")
        assert p.returncode == 0 and "IN-42" in p.stdout, p.stderr + sshd.read_log()
        p = sshd.ssh(dave, "echo IN")
        assert p.returncode != 0 and "IN" not in p.stdout

        # --- A real sudo: the grant's file in /etc/sudoers.d, the account stage in the installed module.
        sudo_svc = f"sudo-jitdeb-{tag}"
        etc.write(f"/etc/pam.d/{sudo_svc}", "auth required pam_unix.so\naccount required pam_jit.so timeout=0\n"
                  "account required pam_unix.so\nsession required pam_unix.so\n")
        etc.write(f"/etc/sudoers.d/jitdebtest-{tag}-svc", f"Defaults:{alice} pam_service={sudo_svc}\n"
                  f"Defaults:{dave} pam_service={sudo_svc}\n", mode=0o440)
        assert run(["visudo", "-c"]).returncode == 0
        p = sudo_as(alice, "/usr/bin/id", "-u")
        assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
        assert sudo_as(dave, "/usr/bin/id", "-u").returncode != 0

        # --- Reinstall the same package over it: database, pending request, active grant, its file and an
        # edited conffile all stay; the agent (restarted) still knows them.
        with open(CONFIG, "a") as f:
            f.write("# edited by the admin\n")
        p = dpkg("-i", deb)
        assert p.returncode == 0, p.stdout + p.stderr
        assert open(CONFIG).read().endswith("# edited by the admin\n")
        assert os.path.exists(grant_file)
        agent.stop()
        agent.start()
        active = agent.jit_json(None, "grants", "--active")
        assert [g["id"] for g in active] == [gid] and active[0]["state"] == "active"
        assert [r["id"] for r in agent.jit_json(bob, "list", "--pending")] == [pending]
        assert wait_for(lambda: os.path.exists(grant_file), 5)
        assert sudo_as(alice, "/usr/bin/id", "-u").returncode == 0

        # --- The pam-auth-update profile: off after install; on, it gates sudo for requesters only.
        common = open("/etc/pam.d/common-account").read()
        assert "pam_jit" not in common
        p = run(["pam-auth-update", "--package", "--enable", "jit"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        assert p.returncode == 0, p.stderr
        assert "pam_jit.so" in open("/etc/pam.d/common-account").read()
        # Through a real sudo on the stock "sudo" service: inside pamtester the module cannot know what sudo
        # would run and refuses a sudo-service check (issue 13, finding 2). alice and dave lose their service
        # pointer; dave gets a standing entry that jit must gate.
        os.unlink(f"/etc/sudoers.d/jitdebtest-{tag}-svc")
        etc.write(f"/etc/sudoers.d/jitdebtest-{tag}-dave", f"{dave} ALL=(root) NOPASSWD: /usr/bin/id\n", mode=0o440)
        assert run(["visudo", "-c"]).returncode == 0
        p = sudo_as(alice, "/usr/bin/id", "-u")
        assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
        p = sudo_as(dave, "/usr/bin/id", "-u")
        assert p.returncode != 0, "a requester without a grant got through a standing sudoers entry: " + p.stdout
        assert pamtester("sudo", dave, "acct_mgmt").returncode != 0
        assert sudo_as(carl, "/usr/bin/id", "-u").stdout.strip() == "0"  # not a requester: not gated

        # --- Remove. A hand-written PAM line naming the module makes prerm refuse (the service would fail
        # every login without it), and nothing changes.
        p = dpkg("-r", PKG)
        assert p.returncode != 0 and "refusing to remove" in p.stderr and svc in p.stderr, p.stdout + p.stderr
        assert installed() and os.path.exists(MODULE) and os.path.exists(grant_file)
        assert "pam_jit.so" in open("/etc/pam.d/common-account").read()
        if sshd:
            sshd.stop()
        etc.cleanup()
        etc.write(f"/etc/sudoers.d/jitdebtest-{tag}", f"{carl} ALL=(root) NOPASSWD: /usr/bin/id\n", mode=0o440)
        p = dpkg("-r", PKG)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not installed()
        assert wait_for(lambda: not agent.running(), 15), "dpkg -r left the agent running"
        assert ours_in_sudoers() == sudoers_before, "dpkg -r left jit sudoers files behind"
        assert pam_d_hashes() == pam_before, "dpkg -r left /etc/pam.d changed"
        assert not os.path.exists(MODULE) and not os.path.exists("/usr/sbin/jitd")
        assert os.path.exists(CONFIG) and os.path.exists(DATABASE), "remove keeps config and database until purge"
        rows = run(["sqlite3", DATABASE, f"select state, ended_by from grants where id={gid}"], check=True).stdout.strip()
        assert rows == "revoked|package removal", rows
        assert sudo_as(alice, "/usr/bin/id", "-u").returncode != 0
        p = sudo_as(carl, "/usr/bin/id", "-u")
        assert p.returncode == 0 and p.stdout.strip() == "0", "sudo broke for a normal sudoer: " + p.stderr

        # --- Purge: nothing of ours is left.
        p = dpkg("-P", PKG)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not known_to_dpkg()
        left = [path for path in OURS if os.path.lexists(path)]
        assert left == [], f"left behind after purge: {left}"
        assert ours_in_sudoers() == sudoers_before
        assert pam_d_hashes() == pam_before
        seen = open("/var/lib/pam/seen").read() if os.path.exists("/var/lib/pam/seen") else ""
        assert "jit" not in seen.split() and seen == seen_before
    finally:
        if sshd:
            sshd.stop()
        etc.cleanup()
        if known_to_dpkg():
            dpkg("-P", PKG, env={"JIT_ACCESS_FORCE_REMOVE": "1"})
        agent.stop()
        for path in glob.glob("/etc/sudoers.d/jit-grant-*"):
            if os.path.basename(path) not in sudoers_before:
                os.unlink(path)


# --- The control plane's package (issue 14): jit-access-server.
SERVER_PKG = "jit-access-server"
SERVER_UNIT = "/lib/systemd/system/jit-access-server.service"
SERVER_CONFIG = "/etc/jit/server.yaml"
SERVER_OURS = [
    "/usr/sbin/jitd-server", SERVER_UNIT, SERVER_CONFIG, "/etc/jit/server", "/run/jit-server",
    "/usr/share/man/man8/jitd-server.8.gz", "/usr/share/doc/jit-access-server",
    "/usr/share/lintian/overrides/jit-access-server",
    "/var/lib/systemd/deb-systemd-helper-masked/jit-access-server.service",
]


def the_server_deb():
    debs = sorted(glob.glob(os.path.join(REPO, "dist", f"{SERVER_PKG}_*_amd64.deb")))
    return debs[-1] if debs else None


@pytest.fixture(scope="module")
def server_deb():
    path = the_server_deb()
    if path is None:
        pytest.skip("no dist/jit-access-server_*_amd64.deb: run 'make deb' first ('make check' does)")
    return path


def package_files(deb):
    """The paths a .deb installs (folders left out: packages may share those)."""
    out = set()
    for line in run(["dpkg-deb", "-c", deb], check=True).stdout.splitlines():
        perms, path = line.split()[0], line.split()[5]
        if not perms.startswith("d"):
            out.add(path.removeprefix("."))
    return out


def status_of(pkg):
    p = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return p.stdout if p.returncode == 0 else ""


def test_server_package_contents(deb, server_deb):
    size = os.path.getsize(server_deb)
    info = run(["dpkg-deb", "-f", server_deb, "Package", "Version", "Depends", "Recommends"], check=True).stdout
    fields = dict(line.split(": ", 1) for line in info.strip().splitlines())
    assert fields["Package"] == SERVER_PKG and "postgresql" in fields["Recommends"]
    depends = {d.strip().split(" ")[0] for d in fields["Depends"].replace("|", ",").split(",")}
    assert "adduser" in depends and depends <= {"libc6", "libgcc-s1", "libstdc++6", "libsqlite3-0", "zlib1g", "adduser"}, depends
    files = package_files(server_deb)
    for path in ["/usr/sbin/jitd-server", SERVER_UNIT, SERVER_CONFIG, "/usr/share/man/man8/jitd-server.8.gz",
                 "/usr/share/doc/jit-access-server/copyright", "/usr/share/lintian/overrides/jit-access-server"]:
        assert path in files, f"{path} is not in {server_deb}"
    assert run(["dpkg-deb", "-I", server_deb, "conffiles"], check=True).stdout.split() == [SERVER_CONFIG]
    # The two packages share no file, so both install on one machine.
    both = files & package_files(deb)
    assert not both, f"files in both packages: {sorted(both)}"
    assert os.path.getsize(deb) < 25 * 1024 * 1024
    print(f"sizes: {os.path.basename(deb)} {os.path.getsize(deb) / 1048576:.1f} MB, {os.path.basename(server_deb)} {size / 1048576:.1f} MB")
    unit = open(os.path.join(REPO, "packaging", "server", "jit-access-server.service")).read()
    for line in ["User=_jitserver", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "CapabilityBoundingSet=\n", "RuntimeDirectory=jit-server"]:
        assert line in unit, f"the unit lacks {line!r}"


def test_server_lintian_reports_no_errors(server_deb):
    if run(["sh", "-c", "command -v lintian"]).returncode != 0:
        pytest.fail("lintian is not installed: run 'make deps'")
    p = run(["lintian", "--fail-on", "error", "--no-tag-display-limit", server_deb], timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [l for l in p.stdout.splitlines() if l.startswith(("E:", "W:"))], p.stdout


def test_server_installs_beside_the_host_package_serves_and_purges(deb, server_deb, tmpdir_root):
    """Both packages on one machine; the shipped server.yaml says what to fill in; the installed server runs
    as _jitserver against a throw-away PostgreSQL and serves; purge removes what the package brought."""
    from fleet import Postgres
    for pkg in (PKG, SERVER_PKG):
        if status_of(pkg) and "not-installed" not in status_of(pkg):
            pytest.skip(f"{pkg} is already installed here (or its config files are): the test would not leave the machine as it found it")
    user_before = run(["getent", "passwd", "_jitserver"]).returncode == 0
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    tag = uuid.uuid4().hex[:6]
    test_config = f"/etc/jit/server-jitdebtest-{tag}.yaml"
    pg = Postgres()
    server = None
    try:
        # --- Install both: no conflict.
        p = dpkg("-i", deb, server_deb)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "installed" in status_of(SERVER_PKG) and "installed" in status_of(PKG)
        assert run(["getent", "passwd", "_jitserver"]).returncode == 0
        st = os.stat("/etc/jit/server")
        import pwd
        assert st.st_uid == pwd.getpwnam("_jitserver").pw_uid and oct(st.st_mode & 0o777) == "0o700"
        assert run(["dpkg-query", "-W", "-f=${Conffiles}", SERVER_PKG]).stdout.split()[0] == SERVER_CONFIG
        assert run(["/usr/sbin/jitd-server", "--version"], env=env).stdout.strip() == run(["dpkg-query", "-W", "-f=${Version}", SERVER_PKG]).stdout
        # The host's jitd has no control plane and says where it is.
        p = run(["/usr/sbin/jitd", "server", "token", "list"], env=env)
        assert p.returncode != 0 and "jit-access-server" in p.stderr, p.stderr
        if run(["sh", "-c", "command -v systemd-analyze"]).returncode == 0:
            p = run(["systemd-analyze", "verify", SERVER_UNIT])
            assert p.returncode == 0, p.stdout + p.stderr

        # --- The shipped example: check-config names what to fill in, then what to run.
        p = run(["/usr/sbin/jitd-server", "check-config"], env=env)
        assert p.returncode == 1 and "public_url" in p.stderr and SERVER_CONFIG in p.stderr, p.stdout + p.stderr

        # --- A config of the test's own (a throw-away cluster on TCP, trust), next to the shipped one.
        pg.start()
        db = pg.createdb("jitdeb_" + tag)
        port = hosts.free_port()
        shipped = open(SERVER_CONFIG).read()
        text = shipped.replace("# public_url: https://jit.example.org:8443", f"public_url: https://127.0.0.1:{port}")
        text = text.replace("  address: 0.0.0.0\n  port: 8443", f"  address: 127.0.0.1\n  port: {port}")
        text = text.replace("  socket_dir: /run/postgresql\n  user: _jitserver\n  name: jit",
                            f"  host: 127.0.0.1\n  port: {pg.port}\n  user: postgres\n  name: {db}")
        assert text != shipped
        with open(test_config, "w") as f:
            f.write(text)
        os.chmod(test_config, 0o644)
        p = run(["/usr/sbin/jitd-server", "check-config", "--config", test_config], env=env)
        assert p.returncode == 1 and "jitd-server init" in p.stderr, p.stdout + p.stderr
        p = run(["/usr/sbin/jitd-server", "init", "--config", test_config], env=env)
        assert p.returncode == 0, p.stderr
        key = os.stat("/etc/jit/server/ca.key")
        assert key.st_uid == pwd.getpwnam("_jitserver").pw_uid and oct(key.st_mode & 0o777) == "0o600"
        p = run(["/usr/sbin/jitd-server", "check-config", "--config", test_config], env=env)
        assert p.returncode == 0 and "OK" in p.stdout, p.stderr

        # --- The installed server, started by root as the unit's ExecStart would, runs as _jitserver.
        # What the unit's RuntimeDirectory=jit-server makes: the approvers' socket folder, the server user's.
        os.makedirs("/run/jit-server", mode=0o755, exist_ok=True)
        shutil.chown("/run/jit-server", "_jitserver", "_jitserver")
        log = open(os.path.join(tmpdir_root, "server.log"), "ab")
        server = subprocess.Popen(["/usr/sbin/jitd-server", "run", "--config", test_config], stdout=log, stderr=subprocess.STDOUT, env=env)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return server.poll() is not None
        assert wait_for(listening, 60) and server.poll() is None, open(os.path.join(tmpdir_root, "server.log")).read()
        uids = [l for l in open(f"/proc/{server.pid}/status") if l.startswith("Uid:")][0].split()[1:]
        assert set(uids) == {str(pwd.getpwnam("_jitserver").pw_uid)}, uids
        assert wait_for(lambda: os.path.exists("/run/jit-server/server.sock"), 10), open(os.path.join(tmpdir_root, "server.log")).read()
        assert os.stat("/run/jit-server/server.sock").st_uid == pwd.getpwnam("_jitserver").pw_uid
        p = run(["/usr/sbin/jitd-server", "token", "create", "--environment", "production", "--ttl", "5m", "--config", test_config], env=env)
        assert p.returncode == 0 and p.stdout.startswith("jit1."), p.stderr
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        server = None
        os.unlink(test_config)

        # --- Purge both: nothing of either is left.
        p = dpkg("-P", SERVER_PKG, PKG)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not status_of(SERVER_PKG) or "not-installed" in status_of(SERVER_PKG)
        left = [path for path in SERVER_OURS + OURS if os.path.lexists(path)]
        assert left == [], f"left behind after purge: {left}"
    finally:
        if server and server.poll() is None:
            server.kill()
            server.wait()
        if os.path.exists(test_config):
            os.unlink(test_config)
        for pkg in (SERVER_PKG, PKG):
            if status_of(pkg) and "not-installed" not in status_of(pkg):
                dpkg("-P", pkg, env={"JIT_ACCESS_FORCE_REMOVE": "1"})
        pg.stop()
        if not user_before and run(["getent", "passwd", "_jitserver"]).returncode == 0:
            run(["deluser", "--system", "--quiet", "_jitserver"])
            run(["sh", "-c", "getent group _jitserver >/dev/null && delgroup --system --quiet _jitserver || true"])
