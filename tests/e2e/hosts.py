"""Real sshd and sudo set up around a test agent, touching only files the test owns.

- sshd runs from a symlink named after the test's own PAM service, so it reads /etc/pam.d/<that name> and
  never /etc/pam.d/sshd; it listens on 127.0.0.1 on a free high port with its own host key.
- sudo is pointed at the test's PAM service with `Defaults:USER pam_service=...`, and at the agent's
  sudoers folder with `@includedir`, from one file /etc/sudoers.d/<tag> that is removed at the end.
Every file written under /etc is recorded and removed by cleanup(), which the fixtures always call.
"""
import os
import socket
import subprocess
import time
import uuid

from conftest import run

PAM = os.environ.get("JIT_PAM", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pam", "pam_jit.so"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class EtcFiles:
    """Files written under /etc by a test, removed at cleanup (never overwrites an existing file)."""

    def __init__(self):
        self.paths = []

    def write(self, path, text, mode=0o644):
        if os.path.exists(path) and path not in self.paths:
            raise AssertionError(f"refusing to overwrite {path}")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        if path not in self.paths:
            self.paths.append(path)

    def cleanup(self):
        for p in reversed(self.paths):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self.paths = []


def pam_args(agent, timeout=0, failmode=None, exempt_group=None, extra=()):
    args = [f"socket={agent.socket}", f"timeout={timeout}"]
    if failmode:
        args.append(f"failmode={failmode}")
    if exempt_group:
        args.append(f"exempt_group={exempt_group}")
    return " ".join(args + list(extra))


class Sshd:
    def __init__(self, tmp, etc, name=None):
        self.tmp = tmp
        self.etc = etc
        self.name = name or "sshd-jit" + uuid.uuid4().hex[:6]
        self.port = free_port()
        self.proc = None
        self.dir = os.path.join(tmp, "sshd")
        os.makedirs(os.path.join(self.dir, "authorized"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "keys"), exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(os.path.join(self.dir, "authorized"), 0o755)
        os.chmod(os.path.join(self.dir, "keys"), 0o700)
        os.makedirs("/run/sshd", exist_ok=True)
        self.hostkey = os.path.join(self.dir, "hostkey")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.hostkey], check=True)
        self.binary = os.path.join(self.dir, self.name)
        os.symlink("/usr/sbin/sshd", self.binary)
        self.log = os.path.join(self.dir, "sshd.log")

    def configure(self, account_args, kbdint=False, auth_args=None, session=True, grace=60, methods=None, auth_lines=None):
        """Writes the PAM service file and sshd_config. account_args: the pam_jit arguments for the account line.
        methods: sshd's AuthenticationMethods (default: publickey, or publickey,keyboard-interactive with kbdint);
        auth_lines: the auth stack to write instead of the default one."""
        lines = []
        if auth_lines is not None:
            lines += auth_lines
        elif kbdint:
            # Users here have no password: the key is mandatory (AuthenticationMethods publickey,keyboard-interactive),
            # and keyboard-interactive only carries the jit conversation (pam_jit(8), "users without passwords").
            lines.append(f"auth [success=done ignore=ignore default=die] {PAM} {auth_args or account_args}")
            lines.append("auth required pam_permit.so")
        else:
            lines.append("auth required pam_deny.so")
        lines.append(f"account required {PAM} {account_args}")
        lines.append("account required pam_unix.so")
        if session:
            lines.append(f"session optional {PAM} {account_args}")
        lines.append("session required pam_unix.so")
        self.etc.write(f"/etc/pam.d/{self.name}", "\n".join(lines) + "\n")
        cfg = f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.hostkey}
PidFile {self.dir}/sshd.pid
UsePAM yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication {"yes" if kbdint else "no"}
AuthenticationMethods {methods or ("publickey,keyboard-interactive" if kbdint else "publickey")}
AuthorizedKeysFile {self.dir}/authorized/%u
# The test's keys sit in a root-owned 0755 folder under /tmp (1777), which StrictModes would refuse.
StrictModes no
LoginGraceTime {grace}
LogLevel VERBOSE
PrintMotd no
"""
        with open(os.path.join(self.dir, "sshd_config"), "w") as f:
            f.write(cfg)

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-D", "-e", "-f", os.path.join(self.dir, "sshd_config")], stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sshd exited: " + open(self.log).read())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("sshd did not listen")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def authorize(self, user):
        key = os.path.join(self.dir, "keys", user)
        if not os.path.exists(key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
            with open(key + ".pub") as f, open(os.path.join(self.dir, "authorized", user), "w") as out:
                out.write(f.read())
            os.chmod(os.path.join(self.dir, "authorized", user), 0o644)
        return key

    def ssh_cmd(self, user, command="true", tty=False):
        key = self.authorize(user)
        cmd = ["ssh", "-i", key, "-p", str(self.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "LogLevel=INFO", "-o", "ConnectTimeout=10"]
        cmd += ["-tt"] if tty else ["-T"]
        return cmd + [f"{user}@127.0.0.1", command]

    def ssh(self, user, command="true", timeout=60, batch=True, input=None):
        cmd = self.ssh_cmd(user, command)
        if batch:
            cmd[1:1] = ["-o", "BatchMode=yes"]
        else:
            cmd[1:1] = ["-o", "BatchMode=no"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def read_log(self):
        try:
            return open(self.log, errors="replace").read()
        except FileNotFoundError:
            return ""


class Sudo:
    """Points sudo, for the given users, at a test PAM service and the agent's sudoers folder."""

    def __init__(self, agent, etc, users, account_args):
        self.tag = "jit-e2e-" + uuid.uuid4().hex[:6]
        self.etc = etc
        self.service = "sudo-" + self.tag
        lines = ["auth required pam_unix.so"]
        if account_args is not None:
            lines.append(f"account required {PAM} {account_args}")
        lines += ["account required pam_unix.so", "session required pam_unix.so"]
        etc.write(f"/etc/pam.d/{self.service}", "\n".join(lines) + "\n")
        text = f"@includedir {agent.sudoers}\n" + "".join(f"Defaults:{u} pam_service={self.service}\n" for u in users)
        path = f"/etc/sudoers.d/{self.tag}"
        etc.write(path, text, mode=0o440)
        p = run(["visudo", "-c"])
        if p.returncode != 0:
            etc.cleanup()
            raise AssertionError("sudoers does not validate with the test include: " + p.stdout + p.stderr)

    def standing_entry(self, user, command="ALL"):
        """A sudoers entry someone 'left behind', outside jit's control."""
        self.etc.write(f"/etc/sudoers.d/{self.tag}-left", f"{user} ALL=(root) NOPASSWD: {command}\n", mode=0o440)

    @staticmethod
    def as_user(user, *argv, timeout=30):
        return run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "sudo", "-n", *argv], timeout=timeout,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
