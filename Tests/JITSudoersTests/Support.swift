import Foundation
import JITSudoers
import Testing

#if canImport(Glibc)
import Glibc
#endif

let isRoot = geteuid() == 0
let realVisudo = "/usr/sbin/visudo"
let hasRealVisudo = access(realVisudo, X_OK) == 0
let rootOnly: Comment = "needs root (chown to root:root, mount)"

/// 2026-11-22T10:00:00Z.
let fixedExpiry = Date(timeIntervalSince1970: 1_795_341_600)
/// An hour from now, for entries that must install.
var soon: Date { Date().addingTimeInterval(3600) }

func entry(
    id: Int64 = 7, user: String = "alice", runAs: String = "root", commands: [String]? = nil,
    noPassword: Bool = true, notAfter: Date? = nil, wildcards: Bool = false
) -> SudoersEntry {
    SudoersEntry(
        grantID: id, user: user, runAs: runAs, commands: commands, noPassword: noPassword,
        notAfter: notAfter ?? soon, allowWildcards: wildcards)
}

/// A fresh directory under /tmp (mode 0700, ours), removed (and unmounted) by `cleanup()`.
struct Scratch {
    let path: String
    var mounted = false

    init() {
        var template = Array("/tmp/jit-sudoers-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func cleanup() {
        if mounted { umount2(path, Int32(MNT_DETACH)) }
        chmod(path, 0o700)
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    func write(_ name: String, _ text: String, mode: mode_t = 0o644) {
        _ = FileManager.default.createFile(atPath: file(name), contents: Data(text.utf8))
        chmod(file(name), mode)
    }

    func read(_ name: String) -> String? {
        (try? Data(contentsOf: URL(fileURLWithPath: file(name)))).map { String(decoding: $0, as: UTF8.self) }
    }

    func lstat(_ name: String) -> stat? {
        var info = stat()
        return Glibc.lstat(file(name), &info) == 0 ? info : nil
    }

    func isRegular(_ name: String) -> Bool {
        guard let info = lstat(name) else { return false }
        return info.st_mode & S_IFMT == S_IFREG
    }

    /// Puts a tmpfs (mode 0755) on the scratch directory.
    mutating func mountTmpfs(readOnly: Bool, size: String = "64k") -> Bool {
        let flags: UInt = readOnly ? 1 : 0  // MS_RDONLY
        guard Glibc.mount("tmpfs", path, "tmpfs", flags, "mode=0755,size=\(size)") == 0 else { return false }
        mounted = true
        return true
    }
}

/// Whether this process may mount a tmpfs (root in a container may not).
let canMount: Bool = {
    guard isRoot else { return false }
    var scratch = Scratch()
    defer { scratch.cleanup() }
    return scratch.mountTmpfs(readOnly: false)
}()

/// A script standing in for visudo, in its own directory so it never appears in a sudoers directory.
struct FakeVisudo {
    let scratch = Scratch()
    var path: String { scratch.file("visudo") }

    init(exitCode: Int32, message: String = "") {
        scratch.write("visudo", "#!/bin/sh\necho '\(message)' >&2\nexit \(exitCode)\n", mode: 0o755)
    }

    func cleanup() { scratch.cleanup() }
}

/// The real visudo when installed, else a stand-in that accepts everything (these tests are then about
/// file handling only; the rendering tests that need the real one say so).
func acceptingVisudo() -> (path: String, cleanup: () -> Void) {
    if hasRealVisudo { return (realVisudo, {}) }
    let fake = FakeVisudo(exitCode: 0)
    return (fake.path, fake.cleanup)
}

func errorCode(_ body: () throws(SudoersError) -> Void) -> SudoersError.Code? {
    do {
        try body()
        return nil
    } catch {
        return error.code
    }
}
