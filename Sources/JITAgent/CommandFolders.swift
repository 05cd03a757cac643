import Foundation
import JITCore

/// A command grant runs a program as root. If the requester can change that program, or any folder on
/// its path (to put another program there), the grant is a root shell for them: refused before anything
/// is stored (issue 13). Checked for the path as written and for where its symbolic links lead.
enum CommandFolders {
    /// Refuses a `commands` scope whose programs `who` could replace.
    static func refuseWritable(_ scope: Scope, for who: Identity) throws(JITError) {
        guard case .commands(let cs) = scope else { return }
        let gids = groupIDs(who)
        for c in cs {
            let program = CommandRisk.program(c)
            var paths = [program]
            if let real = realpath(program, nil) {
                paths.append(String(cString: real))
                free(real)
            }
            for p in paths {
                if let w = firstWritable(p, uid: who.uid, gids: gids) {
                    throw JITError(.invalid, "the command \(program) cannot be granted: \(who.name) can write \(w), so they could put any program there and run it as root; ask for a program in a folder only root can write (e.g. /usr/bin)")
                }
            }
        }
    }

    /// The path or first ancestor (itself included) that `uid` with `gids` may write, or whose owner it is.
    static func firstWritable(_ path: String, uid: UInt32, gids: Set<UInt32>) -> String? {
        var p = path
        while true {
            var st = stat()
            // A symbolic link's own mode means nothing (it is always 0777, and only the folder's writer can
            // change it); where it leads is checked through realpath.
            if lstat(p, &st) == 0 && st.st_mode & S_IFMT != S_IFLNK {
                let m = st.st_mode
                if st.st_uid == uid || m & 0o002 != 0 || (m & 0o020 != 0 && gids.contains(st.st_gid)) { return p }
            }
            if p == "/" || p.isEmpty { return nil }
            let parent = (p as NSString).deletingLastPathComponent
            p = parent.isEmpty ? "/" : parent
        }
    }

    static func groupIDs(_ who: Identity) -> Set<UInt32> {
        var out: Set<UInt32> = []
        var buf = [CChar](repeating: 0, count: 16384)
        for name in who.groups {
            var g = group(), res: UnsafeMutablePointer<group>? = nil
            if getgrnam_r(name, &g, &buf, buf.count, &res) == 0, res != nil { out.insert(g.gr_gid) }
        }
        var pw = passwd(), pres: UnsafeMutablePointer<passwd>? = nil
        if getpwuid_r(who.uid, &pw, &buf, buf.count, &pres) == 0, pres != nil { out.insert(pw.pw_gid) }
        return out
    }
}
