public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Files that hold keys and certificates: written whole (temp file, fsync, rename) with the mode asked for,
/// in folders that only root may write.
public enum SecureFiles {
    /// Makes `dir` (and parents) if needed, mode 0700 for a new folder; refuses one that others may write
    /// or that root does not own.
    public static func ensurePrivateDirectory(_ dir: String) throws(FleetError) {
        var st = stat()
        if stat(dir, &st) != 0 {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw FleetError("io", "cannot create \(dir): \(error.localizedDescription)")
            }
            guard stat(dir, &st) == 0 else { throw FleetError("io", "cannot create \(dir)") }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw FleetError("io", "\(dir) is not a folder; move it away or pick another with --dir") }
        guard st.st_uid == geteuid() else {
            throw FleetError("insecure", "\(dir) is owned by uid \(st.st_uid), not by the user jitd runs as: chown root \(dir)")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw FleetError("insecure", "\(dir) may be written by others (mode \(String(st.st_mode & 0o777, radix: 8))): chmod go-w \(dir)")
        }
    }

    /// Writes `text` to `path` atomically with `mode`.
    public static func write(_ text: String, to path: String, mode: mode_t) throws(FleetError) {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw FleetError("io", "cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        var ok = fchmod(fd, mode) == 0
        var off = 0
        while ok && off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { ok = false } else { off += n }
        }
        ok = ok && fsync(fd) == 0
        let err = errno
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw FleetError("io", "cannot write \(path): \(String(cString: strerror(ok ? errno : err)))")
        }
    }

    /// Reads a text file, naming it when it cannot be read.
    public static func read(_ path: String, what: String) throws(FleetError) -> String {
        guard let d = FileManager.default.contents(atPath: path), let s = String(data: d, encoding: .utf8) else {
            throw FleetError("io", "cannot read \(what) \(path)")
        }
        return s
    }

    /// Refuses a key file that anyone but its owner may read, or that root does not own.
    public static func checkPrivate(_ path: String, what: String) throws(FleetError) {
        try checkMode(path, what: what, forbidden: 0o077, verb: "read", fix: "chmod 600")
    }

    /// Refuses a file that others may write (a config whose writer could point us at another CA or key).
    /// Root may own it too: the packaged server runs as `_jitserver` on root's `/etc/jit/server.yaml`.
    public static func checkNotWritableByOthers(_ path: String, what: String) throws(FleetError) {
        try checkMode(path, what: what, forbidden: 0o022, verb: "written", fix: "chmod go-w", rootMayOwn: true)
    }

    static func checkMode(_ path: String, what: String, forbidden: mode_t, verb: String, fix: String, rootMayOwn: Bool = false) throws(FleetError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw FleetError("io", "cannot read \(what) \(path): \(String(cString: strerror(errno)))") }
        guard st.st_uid == geteuid() || (rootMayOwn && st.st_uid == 0) else {
            throw FleetError("insecure", "\(what) \(path) is owned by uid \(st.st_uid), not by the user jitd runs as: chown root \(path)")
        }
        guard st.st_mode & forbidden == 0 else {
            throw FleetError("insecure", "\(what) \(path) may be \(verb) by others (mode \(String(st.st_mode & 0o777, radix: 8))): \(fix) \(path)")
        }
    }
}
