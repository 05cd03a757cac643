import Foundation
import JITSudoers
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct DirectoryTests {
    let scratch = Scratch()
    let visudo = acceptingVisudo()
    var directory: SudoersDirectory { SudoersDirectory(path: scratch.path, visudo: visudo.path) }

    func cleanup() {
        scratch.cleanup()
        visudo.cleanup()
    }

    // MARK: install

    @Test func installWritesTheRenderingReadOnly() throws {
        defer { cleanup() }
        let grant = entry(id: 12, commands: ["/usr/bin/systemctl restart nginx", "/usr/bin/id"])
        try directory.install(grant)
        #expect(scratch.names() == ["jit-grant-12"])
        #expect(directory.contents(grantID: 12) == (try SudoersRenderer.render(grant)))
        let info = try #require(scratch.lstat("jit-grant-12"))
        #expect(info.st_mode & 0o7777 == 0o440)
        #expect(scratch.isRegular("jit-grant-12"))
        if isRoot {
            #expect(info.st_uid == 0 && info.st_gid == 0)
        }
        #expect(try directory.installedGrantIDs() == [12])
    }

    @Test(.enabled(if: hasRealVisudo, "needs /usr/sbin/visudo (apt-get install sudo)"))
    func realVisudoAcceptsEveryShape() throws {
        defer { cleanup() }
        let shapes = [
            entry(id: 1, commands: nil, noPassword: true),
            entry(id: 2, commands: nil, noPassword: false),
            entry(id: 3, user: "smb$", runAs: "www-data", commands: ["/usr/bin/id"]),
            entry(id: 4, commands: ["/usr/bin/systemctl restart nginx.service", "/usr/bin/echo ALL a%b@c+d-e_f"]),
            entry(id: 5, commands: ["/usr/bin/journalctl -u nginx* -n [0-9]?"], wildcards: true),
        ]
        for shape in shapes { try directory.install(shape) }
        #expect(try directory.installedGrantIDs() == [1, 2, 3, 4, 5])
        #expect(scratch.names().allSatisfy { !$0.hasPrefix(".") })
    }

    @Test func installReplacesAnEarlierVersion() throws {
        defer { cleanup() }
        try directory.install(entry(id: 3, commands: ["/usr/bin/id"]))
        let wider = entry(id: 3, commands: ["/usr/bin/id", "/usr/bin/whoami"])
        try directory.install(wider)
        #expect(directory.contents(grantID: 3) == (try SudoersRenderer.render(wider)))
        #expect(scratch.names() == ["jit-grant-3"])
    }

    @Test func anExpiredEntryIsNotWritten() {
        defer { cleanup() }
        let code = errorCode { () throws(SudoersError) in
            try directory.install(entry(notAfter: Date().addingTimeInterval(-1)))
        }
        #expect(code == .expired)
        #expect(scratch.names() == [])
    }

    @Test func aFileVisudoRefusesIsNeverInstalled() throws {
        defer { cleanup() }
        try directory.install(entry(id: 5, commands: ["/usr/bin/id"]))
        let before = scratch.read("jit-grant-5")
        let failing = FakeVisudo(exitCode: 1, message: "parse error near line 2")
        defer { failing.cleanup() }
        let strict = SudoersDirectory(path: scratch.path, visudo: failing.path)
        do {
            try strict.install(entry(id: 5, commands: nil))
            Issue.record("install should fail")
        } catch {
            #expect(error.code == .validationFailed)
            #expect(error.message.contains("parse error near line 2"))
        }
        #expect(errorCode { () throws(SudoersError) in try strict.install(entry(id: 6)) } == .validationFailed)
        #expect(scratch.names() == ["jit-grant-5"], "no temp file and no new grant file")
        #expect(scratch.read("jit-grant-5") == before, "the installed version is untouched")
    }

    @Test(arguments: ["/nonexistent/visudo", "visudo", "/etc/hostname"])
    func aMissingOrBrokenVisudoFailsClosed(path: String) {
        defer { cleanup() }
        let broken = SudoersDirectory(path: scratch.path, visudo: path)
        #expect(errorCode { () throws(SudoersError) in try broken.install(entry()) } == .validationFailed)
        #expect(scratch.names() == [])
    }

    // MARK: symlinks and odd file types

    @Test func installReplacesASymlinkWithoutWritingThroughIt() throws {
        defer { cleanup() }
        let outside = Scratch()
        defer { outside.cleanup() }
        outside.write("target", "precious\n")
        symlink(outside.file("target"), scratch.file("jit-grant-5"))
        symlink(outside.file("never-created"), scratch.file("jit-grant-6"))
        try directory.install(entry(id: 5))
        try directory.install(entry(id: 6))
        #expect(outside.read("target") == "precious\n")
        #expect(outside.names() == ["target"])
        #expect(scratch.isRegular("jit-grant-5") && scratch.isRegular("jit-grant-6"))
        #expect(directory.contents(grantID: 5) == (try SudoersRenderer.render(entry(id: 5))))
    }

    @Test func installReplacesAnEmptyDirectory() throws {
        defer { cleanup() }
        mkdir(scratch.file("jit-grant-8"), 0o755)
        try directory.install(entry(id: 8))
        #expect(scratch.isRegular("jit-grant-8"))
    }

    @Test func installFailsCleanlyOnANonEmptyDirectory() {
        defer { cleanup() }
        mkdir(scratch.file("jit-grant-8"), 0o755)
        scratch.write("jit-grant-8/keep", "x")
        #expect(errorCode { () throws(SudoersError) in try directory.install(entry(id: 8)) } == .io)
        #expect(scratch.names() == ["jit-grant-8"])
        #expect(scratch.read("jit-grant-8/keep") == "x")
    }

    @Test func removeTakesTheLinkNotItsTarget() throws {
        defer { cleanup() }
        let outside = Scratch()
        defer { outside.cleanup() }
        outside.write("target", "precious\n")
        symlink(outside.file("target"), scratch.file("jit-grant-5"))
        #expect(directory.contents(grantID: 5) == nil, "a symlink is never read")
        try directory.remove(grantID: 5)
        #expect(scratch.names() == [])
        #expect(outside.read("target") == "precious\n")
    }

    @Test func contentsReadsOnlyRegularFiles() throws {
        defer { cleanup() }
        mkfifo(scratch.file("jit-grant-2"), 0o600)  // would block a plain open
        mkdir(scratch.file("jit-grant-3"), 0o755)
        #expect(directory.contents(grantID: 2) == nil)
        #expect(directory.contents(grantID: 3) == nil)
        #expect(directory.contents(grantID: 4) == nil)
        #expect(try directory.installedGrantIDs() == [2, 3])
    }

    // MARK: remove, listing, temp files

    @Test func removeIsIdempotentAndTouchesNothingElse() throws {
        defer { cleanup() }
        try directory.install(entry(id: 1))
        try directory.install(entry(id: 2))
        scratch.write("README", "hello\n")
        try directory.remove(grantID: 1)
        try directory.remove(grantID: 1)
        try directory.remove(grantID: 99)
        #expect(scratch.names() == ["README", "jit-grant-2"])
    }

    @Test func onlyCanonicalNamesAreOurs() throws {
        defer { cleanup() }
        let strangers = [
            "README", "jit-grant-", "jit-grant-007", "jit-grant-0", "jit-grant-1.bak", "jit-grant-1~", "jit-grant-1x",
            "jit-grant--1", "jit-grant-99999999999999999999", "jit-other-1", "xjit-grant-1", "JIT-GRANT-1",
        ]
        for name in strangers { scratch.write(name, "keep \(name)\n", mode: 0o440) }
        scratch.write("jit-grant-31", "ours\n")
        #expect(try directory.installedGrantIDs() == [31])
        let drifts = try directory.reconcile(active: [])
        #expect(drifts == [SudoersDrift(grantID: 31, kind: .removedStale)])
        #expect(directory.removeTempFiles() == 0)
        for name in strangers { #expect(scratch.read(name) == "keep \(name)\n") }
        #expect(scratch.names() == strangers.sorted())
    }

    @Test func removeTempFilesCleansOnlyOurLeftovers() {
        defer { cleanup() }
        scratch.write(".jit-tmp-4-1a2b3c", "half a fi")
        scratch.write(".jit-tmp-x", "")
        scratch.write(".other-tool.tmp", "keep")
        scratch.write("jit-grant-4", "keep")
        #expect(directory.removeTempFiles() == 2)
        #expect(scratch.names() == [".other-tool.tmp", "jit-grant-4"])
        #expect(directory.removeTempFiles() == 0)
    }

    // MARK: the directory itself

    @Test(arguments: [mode_t(0o777), 0o775, 0o757, 0o1777])
    func aDirectoryOthersCanWriteIsRefused(mode: mode_t) throws {
        defer { cleanup() }
        chmod(scratch.path, mode)
        do {
            try directory.install(entry())
            Issue.record("install should fail")
        } catch {
            #expect(error.code == .unsafeDirectory)
            #expect(error.message.contains("chmod go-w"))
        }
        #expect(scratch.names() == [])
        scratch.write("jit-grant-4", "stale\n")
        try directory.remove(grantID: 4)  // taking access away is still allowed
        #expect(scratch.names() == [])
    }

    @Test func aSymlinkedOrMissingDirectoryIsRefused() {
        defer { cleanup() }
        mkdir(scratch.file("real"), 0o755)
        symlink(scratch.file("real"), scratch.file("link"))
        for path in [scratch.file("link"), scratch.file("missing"), "/etc/hostname"] {
            let elsewhere = SudoersDirectory(path: path, visudo: visudo.path)
            #expect(errorCode { () throws(SudoersError) in try elsewhere.install(entry()) } == .unsafeDirectory)
            #expect(errorCode { () throws(SudoersError) in _ = try elsewhere.installedGrantIDs() } == .unsafeDirectory)
            #expect(errorCode { () throws(SudoersError) in _ = try elsewhere.reconcile(active: []) } == .unsafeDirectory)
        }
        #expect(scratch.names() == ["link", "real"])
        #expect((try? FileManager.default.contentsOfDirectory(atPath: scratch.file("real"))) == [])
    }

    @Test(.enabled(if: isRoot, rootOnly)) func aDirectoryNotOwnedByRootIsRefused() throws {
        defer { cleanup() }
        chown(scratch.path, 65534, 65534)
        do {
            try directory.install(entry())
            Issue.record("install should fail")
        } catch {
            #expect(error.code == .unsafeDirectory)
            #expect(error.message.contains("chown root:root"))
        }
        #expect(scratch.names() == [])
    }

    @Test(.enabled(if: canMount, rootOnly)) func aReadOnlyDirectoryFailsLoudlyAndLeavesNothing() throws {
        var scratch = Scratch()
        defer { scratch.cleanup(); visudo.cleanup(); self.scratch.cleanup() }
        let mounted = scratch.mountTmpfs(readOnly: true)
        #expect(mounted)
        let directory = SudoersDirectory(path: scratch.path, visudo: visudo.path)
        do {
            try directory.install(entry())
            Issue.record("install should fail")
        } catch {
            #expect(error.code == .io)
            #expect(error.message.contains("read-only"))
        }
        #expect(scratch.names() == [])
    }

    @Test(.enabled(if: !isRoot, "as root, a read-only mount is tested instead"))
    func aDirectoryWeCannotWriteFailsLoudly() {
        defer { cleanup() }
        chmod(scratch.path, 0o555)
        #expect(errorCode { () throws(SudoersError) in try directory.install(entry()) } == .io)
        #expect(scratch.names() == [])
    }

    @Test(.enabled(if: canMount, rootOnly)) func aFullDiskFailsLoudlyAndLeavesNothing() throws {
        var scratch = Scratch()
        defer { scratch.cleanup(); visudo.cleanup(); self.scratch.cleanup() }
        let mounted = scratch.mountTmpfs(readOnly: false, size: "16k")
        #expect(mounted)
        // Fill the file system, leaving room for inodes but not for data.
        let filler = open(scratch.file("filler"), O_WRONLY | O_CREAT, 0o600)
        let block = [UInt8](repeating: 0, count: 1024)
        while block.withUnsafeBytes({ write(filler, $0.baseAddress!, $0.count) }) > 0 {}
        close(filler)
        let directory = SudoersDirectory(path: scratch.path, visudo: visudo.path)
        do {
            try directory.install(entry(commands: ["/usr/bin/id"]))
            Issue.record("install should fail")
        } catch {
            #expect(error.code == .io)
            #expect(error.message.contains("disk is full"))
        }
        #expect(scratch.names() == ["filler"])
    }

    // MARK: reconcile

    @Test func reconcileRemovesStaleRestoresMissingAndRepairsAltered() throws {
        defer { cleanup() }
        let active = [
            entry(id: 2, commands: ["/usr/bin/id"]),  // missing
            entry(id: 3, commands: ["/usr/bin/id"]),  // hand-widened
            entry(id: 4, commands: ["/usr/bin/id"]),  // mode changed
            entry(id: 5, commands: ["/usr/bin/id"]),  // replaced by a symlink
            entry(id: 6, commands: ["/usr/bin/id"]),  // correct
            entry(id: 7, commands: ["/usr/bin/id"]),  // a hard link was added
        ]
        try directory.install(entry(id: 1))
        for grant in active where grant.grantID != 2 { try directory.install(grant) }
        let widened = try #require(directory.contents(grantID: 3)).replacingOccurrences(of: "/usr/bin/id \"\"", with: "ALL")
        chmod(scratch.file("jit-grant-3"), 0o640)
        scratch.write("jit-grant-3", widened, mode: 0o440)
        chmod(scratch.file("jit-grant-4"), 0o644)
        unlink(scratch.file("jit-grant-5"))
        symlink("/etc/sudoers", scratch.file("jit-grant-5"))
        link(scratch.file("jit-grant-7"), scratch.file("hardlink.keep"))
        scratch.write("README", "keep\n")

        let drifts = try directory.reconcile(active: active)
        #expect(
            drifts == [
                SudoersDrift(grantID: 1, kind: .removedStale),
                SudoersDrift(grantID: 2, kind: .restoredMissing),
                SudoersDrift(grantID: 3, kind: .repairedAltered),
                SudoersDrift(grantID: 4, kind: .repairedAltered),
                SudoersDrift(grantID: 5, kind: .repairedAltered),
                SudoersDrift(grantID: 7, kind: .repairedAltered),
            ])
        for grant in active {
            #expect(directory.contents(grantID: grant.grantID) == (try SudoersRenderer.render(grant)))
            #expect(scratch.lstat(directory.fileName(for: grant.grantID))?.st_mode == 0o100440)
        }
        #expect(scratch.read("README") == "keep\n")
        #expect(try directory.reconcile(active: active) == [], "a second pass finds nothing")
        #expect(scratch.names() == ["README", "hardlink.keep"] + (2...7).map { "jit-grant-\($0)" })
    }

    @Test(.enabled(if: isRoot, rootOnly)) func reconcileRepairsOwnership() throws {
        defer { cleanup() }
        let grant = entry(id: 4)
        try directory.install(grant)
        chown(scratch.file("jit-grant-4"), 1000, 0)
        #expect(try directory.reconcile(active: [grant]) == [SudoersDrift(grantID: 4, kind: .repairedAltered)])
        #expect(scratch.lstat("jit-grant-4")?.st_uid == 0)
    }

    @Test func anEntryThatCannotBeWrittenLosesItsAlteredFile() throws {
        defer { cleanup() }
        scratch.write("jit-grant-9", "alice ALL=(ALL) NOPASSWD: ALL\n", mode: 0o440)
        let bad = entry(id: 9, user: "ALL")
        let drifts = try directory.reconcile(active: [bad])
        #expect(drifts.count == 1)
        guard case .failed(let error) = drifts.first?.kind else {
            Issue.record("expected a failure, got \(drifts)")
            return
        }
        #expect(error.code == .invalidUser)
        #expect(scratch.names() == [], "a file nobody can vouch for does not stay in force")
    }

    @Test func aRepairVisudoRefusesRemovesTheAlteredFile() throws {
        defer { cleanup() }
        let good = entry(id: 1, commands: ["/usr/bin/id"])
        let altered = entry(id: 2, commands: ["/usr/bin/id"])
        try directory.install(good)
        scratch.write("jit-grant-2", "alice ALL=(ALL) NOPASSWD: ALL\n", mode: 0o440)
        let failing = FakeVisudo(exitCode: 1, message: "syntax error")
        defer { failing.cleanup() }
        let strict = SudoersDirectory(path: scratch.path, visudo: failing.path)
        let drifts = try strict.reconcile(active: [good, altered])
        #expect(drifts.map(\.grantID) == [2])
        #expect(drifts.first.map { if case .failed(let e) = $0.kind { e.code == .validationFailed } else { false } } == true)
        #expect(scratch.names() == ["jit-grant-1"], "the good file stays, the widened one goes, no temp is left")
    }

    @Test func duplicateAndExpiredEntriesAreReported() throws {
        defer { cleanup() }
        let past = Date().addingTimeInterval(-60)
        let expiredButPresent = entry(id: 1, notAfter: Date().addingTimeInterval(2))
        try directory.install(expiredButPresent)
        let later = Date().addingTimeInterval(10)
        let drifts = try directory.reconcile(
            active: [
                expiredButPresent,  // already right: no drift even though `later` is past its expiry
                entry(id: 2, notAfter: past),  // missing and expired: not written
                entry(id: 3), entry(id: 3, commands: ["/usr/bin/id"]),
            ], now: later)
        #expect(drifts.map(\.grantID) == [2, 3])
        let codes = drifts.compactMap { if case .failed(let e) = $0.kind { e.code } else { nil } }
        #expect(codes == [.expired, .invalidGrantID])
        #expect(scratch.names() == ["jit-grant-1"])
    }
}
