import Foundation
public import JITCore

/// What one user may take of the agent (`limits:` in jit.yaml). Every budget is keyed by who the kernel
/// says asks (a peer uid) or by the user a request is for, never by a field of the message, so nobody can
/// spend someone else's budget: a flood only ever slows the user who sends it.
extension Engine {
    /// Free disk kept for what must be recorded (grant uses, state changes): below this, only events that let
    /// someone in are still written; the others are refused (or, from the module, answered unrecorded) and counted.
    static let auditHeadroomBytes: Int64 = 32 << 20

    /// A check from a non-root peer (a user asking about themselves): rate-limited per uid, and refused while
    /// the check journal is over its size or the disk under its headroom. The module's checks (root) are never
    /// refused here: they are what lets people in.
    func admitCheck(from c: Identity, user: String) throws(JITError) {
        guard !c.isRoot else { return }
        let l = config.limits
        let now = clock.now()
        let ok = checkBudget.withLock { $0.take(c.uid, burst: l.checksPerSecond, perSecond: Double(l.checksPerSecond), now: now) }
        guard ok else {
            journal?.countDropped(user: c.name, why: "check rate limit (limits.checks_per_second: \(l.checksPerSecond))")
            throw JITError(.busy, "too many checks from \(c.name) (limit \(l.checksPerSecond) a second); slow down")
        }
        if let j = journal {
            if j.backlogBytes > l.journalBytes || (j.freeBytes.map { $0 < Engine.auditHeadroomBytes } ?? false) {
                j.countDropped(user: c.name, why: "check journal full (limits.journal_size or disk headroom)")
                throw JITError(.busy, "jitd's check journal is full; try again in a minute")
            }
        }
    }

    /// True when a check event that does not let anyone in should not be written: the disk is under its
    /// headroom, kept for the events that must be (allow decisions fail closed if they cannot be recorded).
    func dropUnrecorded(decision: String, user: String) -> Bool {
        guard decision != "allow", let j = journal, let free = j.freeBytes, free < Engine.auditHeadroomBytes else { return false }
        j.countDropped(user: user, why: "disk under the audit headroom")
        return true
    }

    /// Filing: at most `requests_per_minute` per user (a burst of that many, then one every 60/N s), counted
    /// per filing host on a control plane (`host`: the enrolled host a request came through, nil for the
    /// person's own filing). Break-glass never comes through here.
    func admitFiling(for who: Identity, via host: String? = nil) throws(JITError) {
        let l = config.limits
        let now = clock.now()
        let key = host.map { "\(who.name)\u{0}\($0)" } ?? who.name
        let ok = filingBudget.withLock { $0.take(key, burst: l.requestsPerMinute, perSecond: Double(l.requestsPerMinute) / 60, now: now) }
        guard ok else {
            let from = host.map { " through host \($0)" } ?? ""
            throw JITError(.busy, "\(who.name) filed \(l.requestsPerMinute) requests\(from) in the last minute (limits.requests_per_minute); wait a minute, or cancel some with jit cancel ID")
        }
    }

    /// At most `pending_per_user` pending requests per user (on a control plane: per user and filing host, see
    /// `DecisionStore.pendingCount`). Call under `filingLock`.
    func admitPending(for who: Identity, via host: String? = nil, cap: Int) throws(JITError) {
        let n = try decisions.pendingCount(user: who.name, filedBy: host)
        guard n < cap else {
            let from = host.map { " filed through host \($0)" } ?? ""
            throw JITError(.busy, "\(who.name) already has \(n) pending requests\(from) (limits.pending_per_user: \(cap)); cancel one with jit cancel ID, or wait for a decision")
        }
    }
}

extension Store {
    /// How many requests of `user` are pending. A host's own store holds no other host's filings, so `host`
    /// does not narrow the count here (it never undercounts).
    public func pendingCount(user: String, filedBy host: String? = nil) throws(JITError) -> Int {
        try read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM requests WHERE user = ? AND state = 'pending'", arguments: [user]) ?? 0 }
    }
}
