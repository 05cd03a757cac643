public import Foundation
import GRDB
public import JITCore

/// Use-limited and recorded grants (#17): migration "i17-uses-record" adds `uses`/`record` to requests and
/// grants and the grant end state `used`; `spendUse` is the account stage's admission of one use, in one
/// transaction with its audit event, so two concurrent first uses of a one-shot grant admit at most one.
extension Store {
    static func registerUsesMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("i17-uses-record") { db in
            try db.execute(sql: """
                ALTER TABLE requests ADD COLUMN uses INTEGER CHECK (uses IS NULL OR uses > 0);
                ALTER TABLE requests ADD COLUMN record TEXT NOT NULL DEFAULT '';
                """)
            // SQLite cannot change a CHECK in place: rebuild `grants` from its own definition with `used`
            // allowed, then put back its indexes and the audit/notify triggers exactly as they were.
            guard let table = try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'grants'") else {
                throw JITError(.internal, "the grants table is missing")
            }
            let oldCheck = "CHECK (state IN ('active','expired','revoked'))"
            guard table.contains(oldCheck) else { throw JITError(.internal, "the grants table has an unexpected state check") }
            let others = try String.fetchAll(db, sql: "SELECT sql FROM sqlite_master WHERE tbl_name = 'grants' AND type IN ('index', 'trigger') AND sql IS NOT NULL")
            let rebuilt = table
                .replacingOccurrences(of: "CREATE TABLE grants", with: "CREATE TABLE grants_i17")
                .replacingOccurrences(of: oldCheck, with: "CHECK (state IN ('active','expired','revoked','used'))")
            try db.execute(sql: rebuilt)
            try db.execute(sql: "INSERT INTO grants_i17 SELECT * FROM grants; DROP TABLE grants; ALTER TABLE grants_i17 RENAME TO grants;")
            for sql in others { try db.execute(sql: sql) }
            try db.execute(sql: """
                ALTER TABLE grants ADD COLUMN uses INTEGER CHECK (uses IS NULL OR uses > 0);
                ALTER TABLE grants ADD COLUMN uses_left INTEGER CHECK (uses_left IS NULL OR uses_left >= 0);
                ALTER TABLE grants ADD COLUMN record TEXT NOT NULL DEFAULT '';
                """)
        }
    }

    /// What admitting one sudo use did.
    public enum Spend: Sendable, Equatable {
        /// Admitted; the grant as it is now (state `used` when that was its last use).
        case admitted(Grant)
        /// The grant had no use left (a concurrent use took it) or is no longer active.
        case spent(Grant)
    }

    /// Admits one use of a use-limited grant: one fewer left, and at zero the grant ends as `used`, with
    /// the use's audit event (`sudo.use`, naming the command) in the same transaction.
    public func spendUse(grantID: Int64, command: String, runAs: String, data: [(String, String)], at now: Date) throws(JITError) -> Spend {
        try write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [grantID]) else {
                throw JITError(.notFound, "there is no grant \(grantID)")
            }
            var g = Store.grant(from: row)
            guard g.state == .active, g.expiresAt > now, let left = g.usesLeft, left > 0 else { return .spent(g) }
            g.usesLeft = left - 1
            try db.execute(sql: "UPDATE grants SET uses_left = ? WHERE id = ? AND state = 'active' AND uses_left = ?",
                           arguments: [Int64(left - 1), grantID, Int64(left)])
            guard db.changesCount == 1 else { return .spent(g) }
            let used = (g.uses ?? 0) - (left - 1)
            try self.recordInside(db, "sudo.use", actor: "pam", user: g.user, requestID: g.requestID, grantID: g.id,
                                  data: [("command", command), ("runas", runAs), ("use", "\(used) of \(g.uses ?? 0)")] + data, at: now)
            if left - 1 == 0 {
                g.state = try g.state.transition(to: .used)
                g.endedAt = now
                g.endedBy = "jitd (its last use was admitted)"
                try db.execute(sql: "UPDATE grants SET state = 'used', ended_at = ?, ended_by = ? WHERE id = ?",
                               arguments: [Timestamps.millis(now), g.endedBy, grantID])
            }
            return .admitted(g)
        }
    }

    /// The user's grants that were spent (`used`) and would still be within their window: to say why a
    /// later use is refused.
    public func spentGrants(user: String, now: Date) throws(JITError) -> [Grant] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE user = ? AND state = 'used' AND expires_at > ? ORDER BY id DESC LIMIT 20",
                             arguments: [user, Timestamps.millis(now)]).map(Store.grant(from:))
        }
    }
}

extension Store {
    /// One audit event inside a write transaction already open (the chain trigger links it).
    func recordInside(_ db: Database, _ kind: String, actor: String, user: String, requestID: Int64?, grantID: Int64?,
                      data: [(String, String)], at: Date) throws {
        try db.execute(sql: "INSERT INTO audit_in VALUES (?, ?, ?, ?, ?, ?, ?)",
                       arguments: [Timestamps.millis(at), kind, actor, user, requestID, grantID, AuditChain.kv(data)])
    }
}

extension Store {
    /// Recorded grants that are active or ended since `since`.
    public func recordedGrants(since: Date) throws(JITError) -> [Grant] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE record != '' AND (state = 'active' OR ended_at >= ? OR expires_at >= ?)",
                             arguments: [Timestamps.millis(since), Timestamps.millis(since)]).map(Store.grant(from:))
        }
    }
}
