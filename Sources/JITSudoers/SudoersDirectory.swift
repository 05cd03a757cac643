#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#else
import Darwin
#endif

/// The sudoers drop-in directory (normally /etc/sudoers.d), seen only through the files jitd owns there:
/// `jit-grant-<id>`, one per grant, and its `.jit-tmp-*` temp files (the dot makes sudo ignore them).
///
/// Every name is resolved relative to a directory descriptor opened without following symlinks, and files
/// are opened with `O_NOFOLLOW`, so nothing is ever written through a link. Writing requires the directory
/// to belong to root (or to this process's user, for tests) and not be writable by group or others.
///
/// The operations are not atomic with respect to each other: call them from one serial context (an actor),
/// or a reconcile could remove a file that an install has just put in place.
public struct SudoersDirectory: Sendable {
    /// The directory, as configured (`sudoers_dir`).
    public var path: String
    /// The absolute path of `visudo`, which must accept every file before it is installed.
    public var visudo: String

    static let grantPrefix = "jit-grant-"
    static let tempPrefix = ".jit-tmp-"
    static let fileMode: mode_t = 0o440
    static let maxFileSize = 1 << 20

    public init(path: String, visudo: String = "/usr/sbin/visudo") {
        self.path = path
        self.visudo = visudo
    }

    /// `jit-grant-<id>`: no dot and no `~`, which sudo would silently ignore.
    public func fileName(for grantID: Int64) -> String {
        Self.grantPrefix + String(grantID)
    }

    /// Writes the entry's file atomically: a temp file (mode 0440, root:root when root), fsync,
    /// `visudo -cf` on it, rename into place, fsync of the directory. On any failure the temp file is removed
    /// and nothing is installed; an existing file for the grant is left as it was.
    /// - Parameter now: the current time; an entry whose `notAfter` is not after it is refused.
    public func install(_ entry: SudoersEntry, now: Date = Date()) throws(SudoersError) {
        let text = try SudoersRenderer.render(entry)
        guard entry.notAfter > now else {
            throw SudoersError(.expired, "grant \(entry.grantID) has already expired; nothing was written to sudoers")
        }
        let dirFD = try openDirectory(forWriting: true)
        defer { close(dirFD) }
        try write(text, as: fileName(for: entry.grantID), in: dirFD)
    }

    /// Removes the grant's file (or whatever sits under its name, without following it). Removing a file
    /// that is not there succeeds. This works even when the directory fails the ownership checks: taking
    /// access away is always allowed.
    public func remove(grantID: Int64) throws(SudoersError) {
        try SudoersRenderer.validateGrantID(grantID)
        let dirFD = try openDirectory(forWriting: false)
        defer { close(dirFD) }
        try removeEntry(fileName(for: grantID), in: dirFD)
        fsync(dirFD)
    }

    /// The ids of the `jit-grant-<digits>` entries present (of any file type), ascending. Other names,
    /// including `jit-grant-007` or `jit-grant-1.bak`, are not ours and are neither returned nor touched.
    public func installedGrantIDs() throws(SudoersError) -> [Int64] {
        let dirFD = try openDirectory(forWriting: false)
        defer { close(dirFD) }
        return try grantIDs(in: dirFD)
    }

    /// The text of the grant's file, or nil when it is missing, not a regular file, or unreadable.
    public func contents(grantID: Int64) -> String? {
        guard grantID > 0, let dirFD = try? openDirectory(forWriting: false) else { return nil }
        defer { close(dirFD) }
        return read(fileName(for: grantID), in: dirFD)?.text
    }

    /// Removes `.jit-tmp-*` leftovers of a crash between write and rename, and returns how many. Call it at
    /// start-up, before any install: it would also remove the temp file of an install in progress.
    public func removeTempFiles() -> Int {
        guard let dirFD = try? openDirectory(forWriting: false) else { return 0 }
        defer { close(dirFD) }
        var removed = 0
        for name in Posix.listDirectory(dirFD) ?? [] where name.hasPrefix(Self.tempPrefix) {
            if unlinkat(dirFD, name, 0) == 0 { removed += 1 }
        }
        if removed > 0 { fsync(dirFD) }
        return removed
    }

    /// Makes the directory match `active`, the grants that should have a file now: removes every
    /// `jit-grant-N` without an active entry, and writes any active entry whose file is missing or differs
    /// from its rendering (text, mode 0440, owner, or file type). Returns what it found, for the audit trail.
    /// An active entry that cannot be written (invalid, expired, duplicated id, visudo refused, disk full)
    /// is reported as failed, and an altered file under its name is removed rather than left in force.
    /// - Throws: only when the directory itself cannot be opened.
    public func reconcile(active: [SudoersEntry], now: Date = Date()) throws(SudoersError) -> [SudoersDrift] {
        let dirFD = try openDirectory(forWriting: false)
        defer { close(dirFD) }
        var drifts: [SudoersDrift] = []
        var byID: [Int64: [SudoersEntry]] = [:]
        for entry in active { byID[entry.grantID, default: []].append(entry) }

        for id in try grantIDs(in: dirFD) where byID[id] == nil {
            do throws(SudoersError) {
                try removeEntry(fileName(for: id), in: dirFD)
                drifts.append(SudoersDrift(grantID: id, kind: .removedStale))
            } catch {
                drifts.append(SudoersDrift(grantID: id, kind: .failed(error)))
            }
        }

        for id in byID.keys.sorted() {
            let entries = byID[id]!
            let name = fileName(for: id)
            let present = Posix.lstatAt(dirFD, name) != nil
            do throws(SudoersError) {
                guard entries.count == 1 else {
                    throw SudoersError(
                        .invalidGrantID, "grant \(id) appears \(entries.count) times among the active grants")
                }
                let entry = entries[0]
                let expected = try SudoersRenderer.render(entry)
                if present, let file = read(name, in: dirFD), file.text == expected, isPristine(file.info) {
                    continue
                }
                guard entry.notAfter > now else {
                    throw SudoersError(.expired, "grant \(id) has already expired; its file was not rewritten")
                }
                let writeFD = try openDirectory(forWriting: true)
                defer { close(writeFD) }
                try write(expected, as: name, in: writeFD)
                drifts.append(SudoersDrift(grantID: id, kind: present ? .repairedAltered : .restoredMissing))
            } catch {
                // Fail closed: a file we could not vouch for does not stay in force.
                if present { try? removeEntry(name, in: dirFD) }
                drifts.append(SudoersDrift(grantID: id, kind: .failed(error)))
            }
        }
        fsync(dirFD)
        return drifts
    }

    // MARK: - Internals

    /// Opens the directory itself without following a symlink. For writing, it must be root's (or ours,
    /// when not root) and not writable by group or others, since sudo trusts whatever lands in it.
    func openDirectory(forWriting: Bool) throws(SudoersError) -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            let why: String
            switch code {
            case ENOENT: why = "does not exist; create it (root:root, mode 0755) or fix sudoers_dir"
            case ELOOP, ENOTDIR: why = "is a symlink or not a directory; point sudoers_dir at the real directory"
            default: why = "cannot be opened (\(Posix.describeErrno(code)))"
            }
            throw SudoersError(.unsafeDirectory, "the sudoers directory \(path) \(why)")
        }
        guard forWriting else { return fd }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw SudoersError(.io, "cannot inspect the sudoers directory \(path): \(Posix.describeErrno(code))")
        }
        let me = geteuid()
        if info.st_uid != 0 && info.st_uid != me {
            close(fd)
            throw SudoersError(
                .unsafeDirectory,
                "the sudoers directory \(path) is owned by uid \(info.st_uid), not root; run chown root:root \(path)")
        }
        if info.st_mode & 0o022 != 0 {
            close(fd)
            throw SudoersError(
                .unsafeDirectory,
                "the sudoers directory \(path) is writable by group or others (mode \(String(info.st_mode & 0o7777, radix: 8))); "
                    + "run chmod go-w \(path)")
        }
        return fd
    }

    /// The temp-file, visudo, rename sequence. Leaves either the new file or the old state, never a temp.
    func write(_ text: String, as name: String, in dirFD: Int32) throws(SudoersError) {
        let temp = Self.tempPrefix + name.dropFirst(Self.grantPrefix.count) + "-"
            + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let fd = openat(dirFD, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o400)
        guard fd >= 0 else {
            throw ioError("cannot create a temp file in \(path)", errno)
        }
        var fdOpen = true
        var installed = false
        defer {
            if fdOpen { close(fd) }
            if !installed { unlinkat(dirFD, temp, 0) }
        }
        if geteuid() == 0, fchown(fd, 0, 0) != 0 {
            throw ioError("cannot give \(temp) to root", errno)
        }
        if fchmod(fd, Self.fileMode) != 0 {
            throw ioError("cannot set mode 0440 on \(temp)", errno)
        }
        let writeError = Posix.writeAll(fd, Array(text.utf8))
        if writeError != 0 {
            throw ioError("cannot write \(temp)", writeError)
        }
        if fsync(fd) != 0 {
            throw ioError("cannot flush \(temp) to disk", errno)
        }
        fdOpen = false
        if close(fd) != 0 {
            throw ioError("cannot close \(temp)", errno)
        }
        try validate(path + "/" + temp, grant: name)
        if let existing = Posix.lstatAt(dirFD, name), existing.st_mode & Posix.fileTypeMask == Posix.directory {
            // rename(2) cannot replace a directory; an empty one is removed, anything else needs a human.
            guard unlinkat(dirFD, name, AT_REMOVEDIR) == 0 else {
                throw ioError("\(path)/\(name) is a directory and could not be removed; remove it by hand", errno)
            }
        }
        // rename(2) replaces a symlink itself, never its target.
        guard renameat(dirFD, temp, dirFD, name) == 0 else {
            throw ioError("cannot move \(temp) into place as \(name)", errno)
        }
        installed = true
        if fsync(dirFD) != 0 {
            // Not durable, so not reported as installed: take it back rather than leave a grant nobody records.
            let code = errno
            unlinkat(dirFD, name, 0)
            throw ioError("cannot flush the directory \(path) after renaming \(name) into place; removed it again", code)
        }
    }

    func validate(_ file: String, grant name: String) throws(SudoersError) {
        guard visudo.hasPrefix("/") else {
            throw SudoersError(.validationFailed, "visudo must be an absolute path, not \(visudo); \(name) was not installed")
        }
        let result = Posix.run(visudo, ["-c", "-f", file])
        guard result.status == 0 else {
            let output = result.output.split(whereSeparator: \.isNewline).joined(separator: " / ")
            throw SudoersError(
                .validationFailed,
                "\(visudo) -cf did not accept the file for \(name) (exit \(result.status)): \(SudoersRenderer.quoted(output)); "
                    + "it was not installed")
        }
    }

    func removeEntry(_ name: String, in dirFD: Int32) throws(SudoersError) {
        if unlinkat(dirFD, name, 0) == 0 || errno == ENOENT { return }
        if errno == EISDIR, unlinkat(dirFD, name, AT_REMOVEDIR) == 0 { return }
        throw ioError("cannot remove \(path)/\(name)", errno)
    }

    func grantIDs(in dirFD: Int32) throws(SudoersError) -> [Int64] {
        guard let names = Posix.listDirectory(dirFD) else {
            throw ioError("cannot list the sudoers directory", errno)
        }
        return names.compactMap(grantID(fromName:)).sorted()
    }

    /// The id when `name` is exactly `fileName(for: id)`: canonical digits, no leading zero, no suffix.
    func grantID(fromName name: String) -> Int64? {
        guard name.hasPrefix(Self.grantPrefix) else { return nil }
        let digits = name.dropFirst(Self.grantPrefix.count)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let id = Int64(digits), id > 0, fileName(for: id) == name
        else { return nil }
        return id
    }

    /// A regular file's text and metadata, read without following links or blocking on a FIFO.
    func read(_ name: String, in dirFD: Int32) -> (text: String, info: stat)? {
        let fd = openat(dirFD, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & Posix.fileTypeMask == Posix.regularFile,
            let bytes = Posix.readAll(fd, limit: Self.maxFileSize)
        else { return nil }
        return (String(decoding: bytes, as: UTF8.self), info)
    }

    /// Mode 0440, one link, and owned by root (or by us, when not root), exactly as `write` leaves it.
    func isPristine(_ info: stat) -> Bool {
        let owner: uid_t = geteuid() == 0 ? 0 : geteuid()
        return info.st_mode & 0o7777 == Self.fileMode && info.st_nlink == 1 && info.st_uid == owner
            && (geteuid() != 0 || info.st_gid == 0)
    }

    func ioError(_ what: String, _ code: Int32) -> SudoersError {
        let hint: String
        switch code {
        case EROFS: hint = "; the file system is read-only"
        case ENOSPC, EDQUOT: hint = "; the disk is full"
        case EACCES, EPERM: hint = "; jitd must run as root"
        default: hint = ""
        }
        return SudoersError(.io, "\(what): \(Posix.describeErrno(code))\(hint); nothing was installed")
    }
}
