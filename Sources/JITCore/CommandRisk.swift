import Foundation

/// Programs that, run with sudo, give more than their name says: a shell, or a way to start one or to write
/// any file. Granting one of them as a "command" is granting root to the requester, so approvers are
/// warned (in `jit show`, the reply of `jit request`, and every notification). They are not refused: an
/// approver may have good reason. The list follows GTFOBins' sudo section; it cannot be complete, so the
/// warning says what it knows and nothing more.
public enum CommandRisk {
    /// Program names (the last path component), with what they allow.
    static let known: [String: String] = {
        var m: [String: String] = [:]
        for p in ["sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "rbash", "ash"] { m[p] = "is a shell" }
        for p in ["vi", "vim", "nvim", "view", "vimdiff", "rvim", "ex", "ed", "nano", "pico", "emacs", "joe", "mcedit", "jed", "sensible-editor", "editor", "visudo", "sudoedit"] {
            m[p] = "is an editor that can run a shell and write any file"
        }
        for p in ["less", "more", "most", "pg", "man", "pager", "sensible-pager", "journalctl", "dmesg"] { m[p] = "shows text in a pager, which can run a shell (!sh)" }
        for p in ["python", "python2", "python3", "perl", "ruby", "irb", "lua", "node", "nodejs", "php", "tclsh", "wish", "expect", "awk", "gawk", "mawk", "nawk", "gdb", "bc", "R", "Rscript", "julia", "guile", "sqlite3", "mysql", "psql"] {
            m[p] = "is an interpreter that can run any code"
        }
        for p in ["find", "xargs", "env", "nice", "ionice", "timeout", "stdbuf", "nohup", "script", "watch", "taskset", "flock", "chroot", "setsid", "strace", "ltrace", "su", "sudo", "runuser", "setpriv", "unshare", "nsenter", "systemd-run", "make", "git", "tar", "zip", "rsync", "scp", "ssh", "ftp", "sftp", "crontab", "at", "docker", "podman", "kubectl", "ansible", "apt", "apt-get", "dpkg", "pip", "pip3", "npm"] {
            m[p] = "can run other programs (a shell among them)"
        }
        for p in ["tee", "cp", "mv", "dd", "install", "ln", "chmod", "chown", "chgrp", "truncate", "sed", "cat", "passwd", "usermod", "useradd", "chpasswd", "visudo", "wget", "curl"] where m[p] == nil {
            m[p] = "can read or write any file (e.g. /etc/shadow or sudoers)"
        }
        return m
    }()

    /// The program of a command line: its first word.
    public static func program(_ command: String) -> String {
        String(command.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true).first ?? "")
    }

    /// One warning per risky program in a scope, e.g.
    /// `/usr/bin/vim /etc/hosts: vim is an editor that can run a shell and write any file: this grants root`.
    public static func warnings(for scope: Scope) -> [String] {
        scope.commands.compactMap { c in
            let path = program(c)
            var name = String(path.split(separator: "/").last ?? "")
            // python3.11, perl5.36 and the like.
            if known[name] == nil, let base = name.split(separator: ".").first.map(String.init),
               let trimmed = Optional(base.trimmingCharacters(in: .decimalDigits)), known[trimmed] != nil {
                name = trimmed
            }
            guard let what = known[name] else { return nil }
            return "\(c): \(name) \(what); granting it is granting a root shell"
        }
    }
}
