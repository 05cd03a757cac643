import Foundation
import JITCore
import JITSudoers
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
        // Only the PAM account stage (root, stage=account) spends a use: the auth stage, and a user's own
        // check, only look.
        guard g.usesLeft != nil, use.what != .nothing, c.isRoot, (m["stage"] ?? "account") == "account" else {
            return allow(g, "access granted by grant \(g.id) until \(Timestamps.format(g.expiresAt))")
        }
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
        SudoUse.from(m, isExecutable: Engine.isExecutableFile, isTrustedDir: Engine.isTrustedDir)
    }

    /// Folders jitd cannot vouch for in a caller's PATH: home and temporary folders (the unit's ProtectHome
    /// hides homes from jitd, so what is there cannot be seen), and anything not root's or writable by
    /// others. A folder that does not exist is vouched for only when its nearest existing parent is.
    static func isTrustedDir(_ path: String) -> Bool {
        for prefix in ["/home", "/root", "/run/user", "/tmp", "/var/tmp", "/dev/shm"] where path == prefix || path.hasPrefix(prefix + "/") {
            return false
        }
        var p = path
        while true {
            var st = stat()
            if stat(p, &st) == 0 {
                return (st.st_mode & S_IFMT) == S_IFDIR && st.st_uid == 0 && (st.st_mode & 0o022) == 0
            }
            guard errno == ENOENT, p != "/" else { return false }
            p = (p as NSString).deletingLastPathComponent
            if p.isEmpty { p = "/" }
        }
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

extension Engine {
    /// `recordings`: the sudo sessions recorded under a grant (`record:`), or one session's playback. Root,
    /// approvers and the grant's owner. Every session listed is linked into the trail once (`sudo.recording`,
    /// with its TSID and the command sudo ran).
    func recordings(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        let gid = try id(m, "grant")
        guard let g = try store.grant(id: gid) else { throw JITError(.notFound, "there is no grant \(gid); list grants with 'jit grants'") }
        guard g.user == c.name || c.isRoot || config.policy.isApprover(c) else {
            throw JITError(.unauthorized, "grant \(gid) is not yours; only its owner, root and approvers may replay its recordings")
        }
        guard g.record != .none else {
            throw JITError(.notFound, "grant \(gid) is not recorded (its rule has no 'record:'); nothing to replay")
        }
        let dir = SudoersEffects.ioLogDir(root: config.sudoIODir, grantID: gid)
        let sessions: [SudoReplay.Session]
        do { sessions = try SudoReplay.list(dir: dir) } catch { throw JITError(.internal, error.message) }
        try linkRecordings(g, sessions, dir: dir)
        if let t = m["session"] {
            guard let s = sessions.first(where: { $0.tsid == t }) else {
                throw JITError(.notFound, "grant \(gid) has no recorded session '\(t)'; list them with: jit replay \(gid)")
            }
            let out: String
            do { out = try SudoReplay.replay(dir: dir, tsid: s.tsid) } catch { throw JITError(.internal, error.message) }
            return Message("ok", [("grant", String(gid)), ("session", s.tsid), ("command", s.command), ("runas", s.runAs),
                                  ("output", Engine.fitting(out, bytes: Wire.maxFrame / 2))])
        }
        var reply = Message("ok", [("grant", String(gid)), ("dir", dir), ("count", String(sessions.count))])
        var size = 256
        for (i, s) in sessions.enumerated() {
            let r = [("session", s.tsid), ("at", s.when), ("user", s.user), ("runas", s.runAs), ("command", s.command), ("cwd", s.cwd)]
            size += r.reduce(2) { $0 + $1.0.utf8.count + $1.1.utf8.count * 3 + 2 }
            guard size < Wire.maxFrame - 4096 else {
                // Every reply fits one frame: the newest sessions are the ones left out, and the reply says so.
                reply.add("left_out", String(sessions.count - i))
                break
            }
            reply.records.append(r)
        }
        return reply
    }

    /// The longest prefix of `text` whose wire form (control bytes percent-encoded: 3 bytes each) fits.
    static func fitting(_ text: String, bytes limit: Int) -> String {
        var n = 0
        var out = String.UnicodeScalarView()
        for u in text.unicodeScalars {
            let cost = u.value < 0x20 || u.value == 0x7f || u == "%" ? 3 : String(u).utf8.count
            if n + cost > limit { break }
            n += cost
            out.append(u)
        }
        return String(out)
    }

    /// Records, once per session, that a use of grant `g` was recorded: its TSID, folder and command.
    func linkRecordings(_ g: Grant, _ sessions: [SudoReplay.Session], dir: String) throws(JITError) {
        guard !sessions.isEmpty else { return }
        var q = Store.AuditQuery(limit: 10_000)
        q.grantID = g.id
        let known = Set(try store.events(q).filter { $0.kind == "sudo.recording" }.compactMap { $0.pairs.first { $0.0 == "tsid" }?.1 })
        for s in sessions where !known.contains(s.tsid) {
            try store.record("sudo.recording", actor: "jitd", user: g.user, requestID: g.requestID, grantID: g.id,
                             data: [("tsid", s.tsid), ("dir", dir), ("command", s.command), ("runas", s.runAs), ("started", s.when)], at: clock.now())
        }
    }

    /// Links the recordings of recorded grants that are active or ended within the last hour (called by
    /// the periodic reconcile, so the trail links uses even when nobody replays them).
    public func linkRecentRecordings() {
        do {
            let now = clock.now()
            for g in try store.recordedGrants(since: now.addingTimeInterval(-3600)) {
                let dir = SudoersEffects.ioLogDir(root: config.sudoIODir, grantID: g.id)
                if let sessions = try? SudoReplay.list(dir: dir) { try linkRecordings(g, sessions, dir: dir) }
            }
        } catch {
            logger.warning("linking sudo recordings: \(error.message)")
        }
    }
}
