import Foundation
public import JITCore
public import JITSudoers
public import Logging
import Synchronization

/// Grants of a sudo scope become one file each in `sudoers_dir`, through `JITSudoers` (the only code that
/// writes sudoers). Calls are serialised by a lock: an install and a reconcile never interleave.
public final class SudoersEffects: GrantEffects {
    public let directory: SudoersDirectory
    let logger: Logger
    let lock = Mutex<Void>(())
    let clock: any JITClock
    /// Records an audit event: kind, grant, details.
    let record: @Sendable (String, Int64?, [(String, String)]) -> Void

    /// Where recorded grants' I/O logs go: `ioLogRoot/GRANT`.
    public let ioLogRoot: String

    public init(path: String, visudo: String = "/usr/sbin/visudo", clock: any JITClock = SystemClock(), logger: Logger,
                ioLogRoot: String = "/var/log/jit/sudo-io",
                record: @escaping @Sendable (String, Int64?, [(String, String)]) -> Void = { _, _, _ in }) {
        directory = SudoersDirectory(path: path, visudo: visudo)
        self.ioLogRoot = ioLogRoot
        self.logger = logger
        self.clock = clock
        self.record = record
        let n = lock.withLock { _ in directory.removeTempFiles() }
        if n > 0 {
            logger.warning("removed \(n) temporary sudoers file(s) left by an interrupted write in \(path)")
            record("sudoers.temp_removed", nil, [("count", String(n)), ("dir", path)])
        }
    }

    func entry(_ g: Grant) -> SudoersEntry? {
        guard g.scope.includesSudo else { return nil }
        var e = SudoersEntry(grantID: g.id, user: g.user, runAs: g.runAs.isEmpty ? "root" : g.runAs,
                             commands: g.scope == .sudo ? nil : g.scope.commands, noPassword: g.noPassword, notAfter: g.expiresAt)
        if g.record != .none {
            e.logOutput = true
            e.logInput = g.record.logsInput
            e.ioLogDir = SudoersEffects.ioLogDir(root: ioLogRoot, grantID: g.id)
        }
        return e
    }

    /// The folder sudo writes grant `id`'s I/O logs to.
    public static func ioLogDir(root: String, grantID: Int64) -> String {
        (root.hasSuffix("/") ? String(root.dropLast()) : root) + "/" + String(grantID)
    }

    /// Refuses, before anything is stored, a request whose sudoers rendering would be refused later.
    public func validate(user: String, scope: Scope, runAs: String) throws(JITError) {
        guard scope.includesSudo else { return }
        let e = SudoersEntry(grantID: 1, user: user, runAs: runAs.isEmpty ? "root" : runAs,
                             commands: scope == .sudo ? nil : scope.commands, noPassword: true, notAfter: clock.now().addingTimeInterval(60))
        do { _ = try SudoersRenderer.render(e) } catch { throw JITError(.invalid, error.message) }
    }

    public func started(_ g: Grant) throws(JITError) {
        guard let e = entry(g) else { return }
        do {
            try lock.withLock { _ throws(SudoersError) in try directory.install(e, now: clock.now()) }
            logger.info("sudoers: wrote \(directory.path)/\(directory.fileName(for: g.id)) for grant \(g.id), until \(Timestamps.format(g.expiresAt))")
            record("sudoers.written", g.id, [("file", "\(directory.path)/\(directory.fileName(for: g.id))"), ("notafter", Timestamps.format(g.expiresAt))])
        } catch {
            record("sudoers.write_failed", g.id, [("dir", directory.path), ("why", error.message)])
            throw JITError(.internal, "writing sudoers for grant \(g.id) in \(directory.path) failed: \(error.message)")
        }
    }

    public func ended(_ g: Grant) {
        guard g.scope.includesSudo else { return }
        do {
            try lock.withLock { _ throws(SudoersError) in try directory.remove(grantID: g.id) }
            logger.info("sudoers: removed \(directory.fileName(for: g.id)) (grant \(g.id) \(g.state.rawValue))")
            record("sudoers.removed", g.id, [("file", "\(directory.path)/\(directory.fileName(for: g.id))")])
        } catch {
            logger.error("sudoers: could not remove the file of grant \(g.id): \(error.message); sudo still refuses it after its NOTAFTER")
        }
    }

    public func reconcile(active: [Grant]) {
        let entries = active.compactMap(entry)
        do {
            let drifts = try lock.withLock { _ throws(SudoersError) in try directory.reconcile(active: entries, now: clock.now()) }
            for d in drifts {
                logger.warning("sudoers drift: \(d.description)")
                let kind: String
                switch d.kind {
                case .removedStale: kind = "sudoers.stale_removed"
                case .restoredMissing: kind = "sudoers.restored"
                case .repairedAltered: kind = "sudoers.repaired"
                case .failed: kind = "sudoers.repair_failed"
                }
                record(kind, d.grantID, [("what", d.description)])
            }
        } catch {
            logger.error("sudoers reconcile of \(directory.path) failed: \(error.message)")
        }
    }
}
