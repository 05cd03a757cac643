import Foundation
import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// The sudo side of the PAM question (#13 finding 2, #17): a sudo use is admitted only by a grant that
/// covers its command line and run-as user (`SudoUse`), and a use-limited grant is spent by the check that
/// admits it, in one transaction, its sudoers file removed when it is spent.
extension Engine {
    /// The reply for a sudo check when some grant decides it (allowed, or refused because the user's grants
    /// do not cover this use or were spent); nil when the user holds no sudo grant at all (the caller goes on
    /// to the pending request and filing, as before).
    func checkSudoUse(_ m: Message, _ c: Identity, user: String, now: Date) throws(JITError) -> Message? {
        let use = sudoUse(m)
        let grants = try store.coveringGrants(user: user, kind: .sudo, now: now)
        let admitting = grants.filter { use.admitted(by: $0.scope, runAs: $0.runAs, runAsName: runAsName) }
        // A grant without a use limit first (never spend a one-shot grant when another covers the use),
        // then the one that lasts longest.
        let pick = admitting.min { a, b in
            if (a.usesLeft == nil) != (b.usesLeft == nil) { return a.usesLeft == nil }
            return a.expiresAt > b.expiresAt
        }
        guard let g = pick else {
            let spent = try store.spentGrants(user: user, now: now).filter { use.admitted(by: $0.scope, runAs: $0.runAs, runAsName: runAsName) }
            if let s = spent.first {
                return deny("grant \(s.id) was spent: its \(s.uses.map { $0 == 1 ? "one use" : "\($0) uses" } ?? "uses") were admitted already; request a new grant (jit run ... or jit request)")
            }
            guard !grants.isEmpty else { return nil }
            let held = grants.map { "grant \($0.id): \($0.scope.summary) as \($0.runAs)" }.joined(separator: "; ")
            return deny("\(use.refusal) (\(held))")
        }
        guard g.usesLeft != nil, use.what != .nothing, c.isRoot else { return allow(g, "access granted by grant \(g.id) until \(Timestamps.format(g.expiresAt))") }
        switch try store.spendUse(grantID: g.id, command: use.commandForTrail, runAs: use.runAs ?? "", data: [("service", m["service"] ?? "")], at: now) {
        case .spent(let s):
            return deny("grant \(s.id) was spent: its uses were admitted already; request a new grant (jit run ... or jit request)")
        case .admitted(let now):
            guard now.state == .used else {
                return allow(now, "access granted by grant \(now.id) (\(now.usesLeft ?? 0) of \(now.uses ?? 0) uses left) until \(Timestamps.format(now.expiresAt))")
            }
            effects.ended(now)
            logger.info("grant \(now.id) of \(now.user) spent by its last use: \(use.commandForTrail)")
            schedulerWaker.wake()
            return allow(now, "access granted by grant \(now.id): this was its last use, the grant is now spent")
        }
    }

    func sudoUse(_ m: Message) -> SudoUse {
        SudoUse.from(m, isExecutable: Engine.isExecutableFile)
    }

    /// The scope a request filed by the PAM module for this sudo use asks for: exactly the command when it
    /// is known, else all commands (as before).
    func sudoDraftScope(_ m: Message) -> (Scope, String?) {
        let use = sudoUse(m)
        if case .command(let line) = use.what, let r = use.runAs, !r.hasPrefix("#") { return (.commands([line]), r) }
        return (.sudo, nil)
    }

    var runAsName: (String) -> String? {
        { [directory] r in UInt32(r.dropFirst()).flatMap { directory.user(uid: $0)?.name } }
    }

    static func isExecutableFile(_ path: String) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        return (st.st_mode & S_IFMT) == S_IFREG && (st.st_mode & 0o111) != 0
    }

    private func allow(_ g: Grant, _ text: String) -> Message {
        Message("ok", [("decision", "allow"), ("grant", String(g.id)), ("expires_at", Timestamps.format(g.expiresAt)), ("message", text)])
    }

    private func deny(_ text: String) -> Message {
        Message("ok", [("decision", "deny"), ("message", text)])
    }
}
