import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `jitd-server`: the name the `jit-access-server` package installs the full binary under (the host
/// package owns /usr/sbin/jitd). Started under that name, the binary runs the `jitd server` command tree:
/// `jitd-server token create ...` is `jitd server token create ...`. Started as root, it first becomes the
/// package's system user `_jitserver` (made by its postinst): the control plane needs no root, and its keys,
/// its database role (peer authentication) and its socket belong to that user.
enum ServerName {
    static let program = "jitd-server"
    static let user = "_jitserver"

    /// The arguments for the root command, and whether they are the server's tree.
    static func arguments(_ argv: [String] = CommandLine.arguments) -> [String] {
        let rest = Array(argv.dropFirst())
        guard let first = argv.first, (first as NSString).lastPathComponent == program else { return rest }
        if rest == ["--version"] { return rest }
        return ["server"] + rest
    }

    static func isServerProgram(_ argv: [String] = CommandLine.arguments) -> Bool {
        argv.first.map { ($0 as NSString).lastPathComponent == program } ?? false
    }

    /// As root under the server's name: become `_jitserver` (groups, gid, uid, in that order; checked), or
    /// stop. Without that user (a source build, a test) it stays as it is. Never returns half-changed.
    static func dropPrivilegesIfRoot() {
        guard isServerProgram(), geteuid() == 0, let pw = getpwnam(user) else { return }
        let uid = pw.pointee.pw_uid, gid = pw.pointee.pw_gid
        let home = String(cString: pw.pointee.pw_dir)
        guard initgroups(user, gid) == 0, setgid(gid) == 0, setuid(uid) == 0,
              getuid() == uid, geteuid() == uid, getegid() == gid, setuid(0) != 0 else {
            FileHandleErr.write("jitd-server: cannot become the user \(user) (uid \(uid)): \(String(cString: strerror(errno))); run it as \(user), e.g. 'runuser -u \(user) -- jitd-server ...'\n")
            exit(1)
        }
        setenv("HOME", home, 1)
        setenv("USER", user, 1)
        setenv("LOGNAME", user, 1)
    }
}
