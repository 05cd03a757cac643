public import Foundation
import GRDB
public import JITCore

/// The notification outbox. Notifications are derived from the audit trail: a trigger on `audit` puts
/// every notifiable event (see `NotifyEvent.auditKinds`) in `notify_queue` in the same transaction as the
/// event, which is the same transaction as the state change itself. The notifier expands a queued event
/// into one `outbox` row per channel (rendered once, so a retry sends the same bytes) and delivers the
/// rows with back-off; a row acknowledged by its receiver is marked `sent` and never sent again.
extension Store {
    static func registerNotifyMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("notify-v1") { db in
            let kinds = NotifyEvent.allAuditKinds.map { "'\($0)'" }.joined(separator: ", ")
            try db.execute(sql: """
                CREATE TABLE notify_queue (audit_id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at INTEGER NOT NULL);
                CREATE TABLE outbox (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, audit_id INTEGER NOT NULL, channel TEXT NOT NULL, kind TEXT NOT NULL,
                    payload TEXT NOT NULL, recipients TEXT NOT NULL DEFAULT '',
                    state TEXT NOT NULL CHECK (state IN ('pending','sent','failed')),
                    attempts INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, next_at INTEGER NOT NULL,
                    sent_at INTEGER, last_error TEXT,
                    UNIQUE (audit_id, channel)
                );
                CREATE INDEX outbox_due ON outbox(state, next_at);
                CREATE TRIGGER notify_from_audit AFTER INSERT ON audit WHEN NEW.kind IN (\(kinds)) BEGIN
                    INSERT OR IGNORE INTO notify_queue (audit_id, kind, at) VALUES (NEW.id, NEW.kind, NEW.at);
                END;
                -- The expiry a requester was told about (a grant extended later is told again).
                ALTER TABLE grants ADD COLUMN expiry_noticed INTEGER;
                CREATE TRIGGER audit_grant_expiring AFTER UPDATE OF expiry_noticed ON grants
                    WHEN NEW.expiry_noticed IS NOT NULL AND NEW.expiry_noticed IS NOT OLD.expiry_noticed BEGIN
                    INSERT INTO audit_in VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'grant.expiring', 'jitd',
                        NEW.user, NEW.request_id, NEW.id, jit_kv('expires_at', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.expires_at / 1000, 'unixepoch')));
                END;
                """)
        }
    }

    /// One message for one channel.
    public struct OutboxRow: Sendable, Equatable {
        public var id: Int64
        public var auditID: Int64
        public var channel: String
        public var kind: String
        public var payload: String
        public var recipients: [String]
        public var state: String
        public var attempts: Int
        public var createdAt: Date
        public var nextAt: Date
        public var lastError: String?

        public init(id: Int64, auditID: Int64, channel: String, kind: String, payload: String, recipients: [String], state: String = "pending",
                    attempts: Int = 0, createdAt: Date, nextAt: Date, lastError: String? = nil) {
            self.id = id
            self.auditID = auditID
            self.channel = channel
            self.kind = kind
            self.payload = payload
            self.recipients = recipients
            self.state = state
            self.attempts = attempts
            self.createdAt = createdAt
            self.nextAt = nextAt
            self.lastError = lastError
        }
    }

    static func outboxRow(_ r: Row) -> OutboxRow {
        OutboxRow(id: r["id"], auditID: r["audit_id"], channel: r["channel"], kind: r["kind"], payload: r["payload"],
                  recipients: (r["recipients"] as String).split(separator: "\n").map(String.init), state: r["state"],
                  attempts: r["attempts"], createdAt: Timestamps.date(millis: r["created_at"]), nextAt: Timestamps.date(millis: r["next_at"]),
                  lastError: r["last_error"])
    }

    /// Queued events not yet expanded into messages, oldest first.
    public func notifyQueue(limit: Int = 200) throws(JITError) -> [AuditEvent] {
        try read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT audit_id, kind, at FROM notify_queue ORDER BY audit_id LIMIT ?", arguments: [limit])
            return try rows.map { q in
                if let e = try Row.fetchOne(db, sql: "SELECT * FROM audit WHERE id = ?", arguments: [q["audit_id"] as Int64]) { return Store.event(e) }
                // Archived before it was expanded: keep what the queue knows.
                return AuditEvent(id: q["audit_id"], at: q["at"], kind: q["kind"], actor: "", user: "", requestID: nil, grantID: nil, data: "", prevHash: "", hash: "")
            }
        }
    }

    /// Replaces a queued event with its messages, in one transaction: a crash leaves either the queued
    /// event or all of its messages.
    public func expand(auditID: Int64, into messages: [(channel: String, kind: String, payload: String, recipients: [String])], createdAt: Date, now: Date) throws(JITError) {
        try write { db in
            for m in messages {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO outbox (audit_id, channel, kind, payload, recipients, state, created_at, next_at)
                    VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)
                    """, arguments: [auditID, m.channel, m.kind, m.payload, m.recipients.joined(separator: "\n"), Timestamps.millis(createdAt), Timestamps.millis(now)])
            }
            try db.execute(sql: "DELETE FROM notify_queue WHERE audit_id = ?", arguments: [auditID])
        }
    }

    /// Pending messages whose time has come, oldest first (of one channel when given).
    public func dueOutbox(now: Date, channel: String? = nil, limit: Int = 100) throws(JITError) -> [OutboxRow] {
        try read { db in
            if let channel {
                return try Row.fetchAll(db, sql: "SELECT * FROM outbox WHERE state = 'pending' AND channel = ? AND next_at <= ? ORDER BY next_at, id LIMIT ?",
                                        arguments: [channel, Timestamps.millis(now), limit]).map(Store.outboxRow)
            }
            return try Row.fetchAll(db, sql: "SELECT * FROM outbox WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?",
                                    arguments: [Timestamps.millis(now), limit]).map(Store.outboxRow)
        }
    }

    /// The channels that have messages due now.
    public func dueChannels(now: Date) throws(JITError) -> [String] {
        try read { db in
            try String.fetchAll(db, sql: "SELECT DISTINCT channel FROM outbox WHERE state = 'pending' AND next_at <= ? ORDER BY channel",
                                arguments: [Timestamps.millis(now)])
        }
    }

    public func outbox(id: Int64) throws(JITError) -> OutboxRow? {
        try read { db in try Row.fetchOne(db, sql: "SELECT * FROM outbox WHERE id = ?", arguments: [id]).map(Store.outboxRow) }
    }

    public func outboxRows() throws(JITError) -> [OutboxRow] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM outbox ORDER BY id").map(Store.outboxRow) }
    }

    /// The receiver acknowledged it: never sent again.
    public func markSent(_ id: Int64, attempts: Int, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE outbox SET state = 'sent', attempts = ?, sent_at = ?, last_error = NULL WHERE id = ? AND state = 'pending'",
                           arguments: [attempts, Timestamps.millis(now), id])
        }
    }

    public func markRetry(_ id: Int64, attempts: Int, next: Date, error: String) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                           arguments: [attempts, Timestamps.millis(next), error, id])
        }
    }

    /// Gives up on a message, and records `notify.failed` in the audit trail in the same transaction.
    public func markFailed(_ row: OutboxRow, attempts: Int, error: String, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE outbox SET state = 'failed', attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                           arguments: [attempts, error, row.id])
            guard db.changesCount > 0 else { return }
            let ev = try Row.fetchOne(db, sql: "SELECT user, request_id, grant_id FROM audit WHERE id = ?", arguments: [row.auditID])
            try db.execute(sql: "INSERT INTO audit_in VALUES (?, ?, ?, ?, ?, ?, ?)", arguments: [
                Timestamps.millis(now), "notify.failed", "jitd", (ev?["user"] as String?) ?? "", ev?["request_id"] as Int64?, ev?["grant_id"] as Int64?,
                AuditChain.kv([("channel", row.channel), ("event", row.kind), ("event_id", String(row.auditID)), ("outbox_id", String(row.id)),
                               ("attempts", String(attempts)), ("why", error)]),
            ])
        }
    }

    /// When the next pending message is due.
    /// `excluding`: channels whose worker is still busy (it wakes the notifier when it is done).
    public func nextOutboxDue(excluding: Set<String> = []) throws(JITError) -> Date? {
        try read { db in
            let skip = Array(excluding)
            let marks = skip.map { _ in "?" }.joined(separator: ", ")
            let sql = "SELECT min(next_at) FROM outbox WHERE state = 'pending'" + (skip.isEmpty ? "" : " AND channel NOT IN (\(marks))")
            return try Int64.fetchOne(db, sql: sql, arguments: StatementArguments(skip)).map(Timestamps.date(millis:))
        }
    }

    public func outboxCounts() throws(JITError) -> (pending: Int, failed: Int, sent: Int) {
        try read { db in
            let queued = try Int.fetchOne(db, sql: "SELECT count(*) FROM notify_queue") ?? 0
            return (queued + (try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE state = 'pending'") ?? 0),
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE state = 'failed'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE state = 'sent'") ?? 0)
        }
    }

    /// Marks active grants ending within `window` as noticed (a trigger records `grant.expiring`, which
    /// queues the notification). Returns when the next notice falls due.
    public func noticeExpiring(window: Int64, now: Date) throws(JITError) -> Date? {
        let n = Timestamps.millis(now), w = window * 1000
        // Read first: a write wakes the notifier, so it writes only when there is something to mark.
        let due = try read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM grants WHERE state = 'active' AND expires_at > ? AND expires_at <= ? AND expiry_noticed IS NOT expires_at",
                             arguments: [n, n + w]) ?? 0
        }
        if due > 0 {
            try write { db in
                try db.execute(sql: """
                    UPDATE grants SET expiry_noticed = expires_at
                    WHERE state = 'active' AND expires_at > ? AND expires_at <= ? AND expiry_noticed IS NOT expires_at
                    """, arguments: [n, n + w])
            }
        }
        return try read { db in
            try Int64.fetchOne(db, sql: """
                SELECT min(expires_at) - ? FROM grants WHERE state = 'active' AND expires_at > ? AND expiry_noticed IS NOT expires_at
                """, arguments: [w, n + w]).map(Timestamps.date(millis:))
        }
    }
}
