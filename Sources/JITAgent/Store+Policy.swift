public import Foundation
import GRDB
public import JITCore

/// What the policy engine adds to the store (migration "v2"): how a request was approved and under
/// which rule, tickets, extensions, escalation progress, the groups an approval counted for, and the
/// approvers' TOTP secrets. Every decision is still one transaction; the audit trail hooks in beside
/// each write here.
extension Store {
    static func migrateV2(_ db: Database) throws {
        try db.execute(sql: """
            ALTER TABLE requests ADD COLUMN approved_via TEXT CHECK (approved_via IN ('approvers','auto','break-glass'));
            ALTER TABLE requests ADD COLUMN ticket TEXT;
            ALTER TABLE requests ADD COLUMN extends INTEGER REFERENCES grants(id);
            ALTER TABLE requests ADD COLUMN escalated INTEGER NOT NULL DEFAULT 1;
            UPDATE requests SET approved_via = 'approvers' WHERE state = 'approved';
            ALTER TABLE approvals ADD COLUMN groups TEXT NOT NULL DEFAULT '';
            ALTER TABLE approvals ADD COLUMN mfa INTEGER NOT NULL DEFAULT 0;
            CREATE TABLE mfa (
                user TEXT PRIMARY KEY,
                secret TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                last_step INTEGER NOT NULL DEFAULT 0,
                failures INTEGER NOT NULL DEFAULT 0,
                failed_at INTEGER NOT NULL DEFAULT 0
            );
            """)
    }

    func insertPending(_ db: Database, _ r: AccessRequest) throws -> AccessRequest {
        try db.execute(
            sql: """
                INSERT INTO requests (user, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at, rule, rhost, service, ticket, extends, uses, record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                r.user, Int64(r.uid), r.environment, r.scope.name, r.scope.commands.joined(separator: "\n"), r.runAs,
                r.duration, r.reason, Timestamps.millis(r.createdAt), Timestamps.millis(r.expiresAt), r.rule, r.rhost, r.service,
                r.ticket, r.extends, r.uses.map { Int64($0) }, r.record.rawValue,
            ])
        var out = r
        out.id = db.lastInsertedRowID
        out.state = .pending
        return out
    }

    /// Stores a new pending request (with its rule, ticket and the grant it extends).
    public func insertRequest(_ r: AccessRequest) throws(JITError) -> AccessRequest {
        try write { db in try self.insertPending(db, r) }
    }

    /// Stores a request that is approved as it is filed (an automatic rule, or break-glass), with its
    /// grant (or the extended grant), in one transaction. `end` gives the grant's end from the grant
    /// being extended, if any.
    public func insertApproved(
        _ r: AccessRequest, via: ApprovedVia, by: String, at now: Date, noPassword: Bool, login: Bool, end: (Grant?) -> Date
    ) throws(JITError) -> Decision {
        try write { db in
            var req = try self.insertPending(db, r)
            return try self.approveInside(db, &req, via: via, by: by, comment: nil, at: now, noPassword: noPassword, login: login, end: end)
        }
    }

    /// Approves `r` inside a transaction: marks it, and creates its grant or extends the one it names.
    func approveInside(
        _ db: Database, _ r: inout AccessRequest, via: ApprovedVia, by: String, comment: String?, at now: Date, noPassword: Bool,
        login: Bool, end: (Grant?) -> Date
    ) throws -> Decision {
        r.state = try r.state.transition(to: .approved)
        r.decidedAt = now
        r.decidedBy = by
        r.comment = comment
        r.approvedVia = via
        try db.execute(sql: "UPDATE requests SET state = ?, decided_at = ?, decided_by = ?, comment = ?, approved_via = ? WHERE id = ?",
            arguments: [r.state.rawValue, Timestamps.millis(now), by, comment, via.rawValue, r.id])
        if let gid = r.extends {
            guard let row = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [gid]) else {
                throw JITError(.notFound, "grant \(gid) does not exist")
            }
            var g = Store.grant(from: row)
            guard g.state == .active, g.expiresAt > now else {
                throw JITError(.conflict, "grant \(gid) has ended, so request \(r.id) cannot extend it; deny it and ask for a new grant")
            }
            g.expiresAt = end(g)
            try db.execute(sql: "UPDATE grants SET expires_at = ? WHERE id = ?", arguments: [Timestamps.millis(g.expiresAt), gid])
            r.grantID = gid
            return Decision(request: r, grant: g, decided: true)
        }
        var g = Grant(
            requestID: r.id, user: r.user, uid: r.uid, environment: r.environment, scope: r.scope, runAs: r.runAs,
            startsAt: now, expiresAt: end(nil), noPassword: noPassword, coversLogin: login || r.scope == .login, uses: r.uses, record: r.record)
        try db.execute(
            sql: "INSERT INTO grants (request_id, user, uid, environment, scope, commands, runas, state, starts_at, expires_at, nopasswd, login, uses, uses_left, record) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)",
            arguments: [g.requestID, g.user, Int64(g.uid), g.environment, g.scope.name, g.scope.commands.joined(separator: "\n"), g.runAs,
                        Timestamps.millis(g.startsAt), Timestamps.millis(g.expiresAt), noPassword ? 1 : 0, g.coversLogin ? 1 : 0,
                        g.uses.map { Int64($0) }, g.usesLeft.map { Int64($0) }, g.record.rawValue])
        g.id = db.lastInsertedRowID
        r.grantID = g.id
        return Decision(request: r, grant: g, decided: true)
    }

    func approvalRecords(_ db: Database, _ id: Int64) throws -> [ApprovalRecord] {
        try Row.fetchAll(db, sql: "SELECT approver, groups, at FROM approvals WHERE request_id = ? ORDER BY at, approver", arguments: [id]).map { row in
            ApprovalRecord(approver: row["approver"], groups: Set((row["groups"] as String).split(separator: "\n").map(String.init)),
                           at: Timestamps.date(millis: row["at"]))
        }
    }

    /// The approvals of a request as the policy counts them.
    public func approvalRecords(id: Int64) throws(JITError) -> [ApprovalRecord] {
        try read { db in try self.approvalRecords(db, id) }
    }

    /// Records one approval under the rules, in one transaction: `authorize` re-checks the approver on the
    /// request as it is now; `complete` looks at every approval (this one included) and returns the grant's
    /// end when they decide the request, nil when more are needed.
    public func approveByRule(
        id: Int64, approver: String, groups: [String], mfa: Bool, comment: String?, at now: Date, noPassword: Bool, login: Bool,
        authorize: (AccessRequest) throws(JITError) -> Void,
        complete: (AccessRequest, [ApprovalRecord], Grant?) throws(JITError) -> Date?
    ) throws(JITError) -> Decision {
        try write { db in
            guard var r = try self.loadRequest(db, id) else { throw JITError(.notFound, "there is no request \(id); list requests with 'jit list'") }
            try authorize(r)
            guard r.state == .pending else { _ = try r.state.transition(to: .approved); fatalError("unreachable") }
            if r.approvals.contains(approver) {
                throw JITError(.conflict, "\(approver) has already approved request \(id); another approver must approve it too")
            }
            try db.execute(sql: "INSERT INTO approvals (request_id, approver, at, comment, groups, mfa) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, approver, Timestamps.millis(now), comment, groups.joined(separator: "\n"), mfa ? 1 : 0])
            r.approvals.append(approver)
            let records = try self.approvalRecords(db, id)
            var current: Grant? = nil
            if let gid = r.extends {
                current = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [gid]).map(Store.grant(from:))
            }
            guard let end = try complete(r, records, current) else { return Decision(request: r, grant: nil, decided: false) }
            return try self.approveInside(db, &r, via: .approvers, by: approver, comment: comment, at: now, noPassword: noPassword, login: login) { _ in end }
        }
    }

    // MARK: escalation

    /// Pending requests with how many approval tiers have been opened (and notified) so far.
    public func pendingWithEscalation() throws(JITError) -> [(request: AccessRequest, escalated: Int)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.requestColumns), escalated FROM requests WHERE state = 'pending'").map { row in
                (try self.request(from: row, db), row["escalated"] as Int)
            }
        }
    }

    @discardableResult
    public func markEscalated(id: Int64, tiers: Int) throws(JITError) -> Bool {
        try write { db in
            try db.execute(sql: "UPDATE requests SET escalated = ? WHERE id = ? AND state = 'pending' AND escalated < ?", arguments: [tiers, id, tiers])
            return db.changesCount > 0
        }
    }

    // MARK: MFA

    /// Whether `user` has a TOTP secret.
    public func hasMFA(user: String) throws(JITError) -> Bool {
        try read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM mfa WHERE user = ?", arguments: [user]) ?? 0 > 0 }
    }

    /// Stores a new secret for `user`. Replacing one needs a valid code of the current secret (`verify`).
    public func enrollMFA(user: String, secret: [UInt8], at now: Date, replacing code: String?) throws(JITError) {
        if try hasMFA(user: user) {
            guard let code else {
                throw JITError(.conflict, "\(user) is already enrolled; to replace the secret give a current code: jit mfa enroll --otp CODE (or ask root to run: jit mfa reset \(user))")
            }
            try consumeOTP(user: user, code: code, at: now)
        }
        try write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO mfa (user, secret, created_at, last_step) VALUES (?, ?, ?, ?)",
                arguments: [user, Base32.encode(secret), Timestamps.millis(now), TOTP.step(at: now) - 2])
        }
    }

    public func resetMFA(user: String) throws(JITError) -> Bool {
        try write { db in
            try db.execute(sql: "DELETE FROM mfa WHERE user = ?", arguments: [user])
            return db.changesCount > 0
        }
    }

    public static let maxOTPFailures = 5
    public static let otpLockout: Int64 = 300

    /// Checks a TOTP code of `user` and uses it up: a code (and any older one) is good once. Wrong codes are
    /// counted (committed even though the call fails); after 5 in a row, codes are refused for 5 minutes.
    public func consumeOTP(user: String, code: String, at now: Date) throws(JITError) {
        let nowMs = Timestamps.millis(now)
        let outcome: Result<Void, JITError> = try write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT secret, last_step, failures, failed_at FROM mfa WHERE user = ?", arguments: [user]) else {
                return .failure(JITError(.unauthorized, "\(user) has no one-time code enrolled; run 'jit mfa enroll' first"))
            }
            let failures: Int = row["failures"]
            let failedAt: Int64 = row["failed_at"]
            if failures >= Store.maxOTPFailures && nowMs - failedAt < Store.otpLockout * 1000 {
                return .failure(JITError(.unauthorized, "too many wrong one-time codes for \(user); wait 5 minutes and try again"))
            }
            guard let secret = Base32.decode(row["secret"]) else {
                return .failure(JITError(.internal, "the stored secret of \(user) is unreadable; root can reset it with: jit mfa reset \(user)"))
            }
            let last: Int64 = row["last_step"]
            if let step = TOTP.verify(code, secret: secret, at: now, after: last) {
                try db.execute(sql: "UPDATE mfa SET last_step = ?, failures = 0 WHERE user = ?", arguments: [step, user])
                return .success(())
            }
            let replay = (last - 1...last).contains { TOTP.code(secret: secret, step: $0) == code }
            try db.execute(sql: "UPDATE mfa SET failures = failures + 1, failed_at = ? WHERE user = ?", arguments: [nowMs, user])
            return .failure(JITError(.unauthorized, replay
                ? "that one-time code was already used; wait for the next one and try again"
                : "the one-time code is wrong or too old; use the current code from your authenticator app"))
        }
        if case .failure(let e) = outcome { throw e }
    }
}
