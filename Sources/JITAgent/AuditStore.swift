public import Foundation
import GRDB
public import JITCore

/// The audit trail's storage. Events about state changes are written by triggers in the same transaction
/// as the change (so no code path can change state without recording it); other events (checks, sudoers
/// writes, agent start and stop) are appended with `record`. Every event is chained: its hash covers its
/// content and the previous event's hash. See docs/AUDIT.md.
extension Store {
    /// SQL functions the triggers use. Registered on every connection (readers too, harmlessly).
    static func addAuditFunctions(_ db: Database) {
        db.add(function: DatabaseFunction("jit_audit_hash", argumentCount: 9, pure: true) { v in
            AuditChain.hash(
                id: Int64.fromDatabaseValue(v[0]) ?? 0, at: Int64.fromDatabaseValue(v[1]) ?? 0,
                kind: String.fromDatabaseValue(v[2]) ?? "", actor: String.fromDatabaseValue(v[3]) ?? "",
                user: String.fromDatabaseValue(v[4]) ?? "", requestID: Int64.fromDatabaseValue(v[5]),
                grantID: Int64.fromDatabaseValue(v[6]), data: String.fromDatabaseValue(v[7]) ?? "",
                prevHash: String.fromDatabaseValue(v[8]) ?? "")
        })
        db.add(function: DatabaseFunction("jit_kv", argumentCount: nil, pure: true) { v in
            var pairs: [(String, String)] = []
            var i = 0
            while i + 1 < v.count {
                if let k = String.fromDatabaseValue(v[i]), !v[i + 1].isNull {
                    let value: String
                    switch v[i + 1].storage {
                    case .int64(let n): value = String(n)
                    case .double(let d): value = String(d)
                    case .string(let s): value = s
                    case .blob(let b): value = b.base64EncodedString()
                    case .null: value = ""
                    }
                    if !value.isEmpty { pairs.append((k, value)) }
                }
                i += 2
            }
            return AuditChain.kv(pairs)
        })
    }

    /// Registered after "v2" (the policy columns: approved_via, ticket, extends, approvals.mfa), which the
    /// triggers record.
    static func registerAuditMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("audit-v1") { db in
            try db.execute(sql: """
                CREATE TABLE audit (
                    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, user TEXT NOT NULL,
                    request_id INTEGER, grant_id INTEGER, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
                );
                CREATE INDEX audit_at ON audit(at);
                CREATE INDEX audit_user ON audit(user, id);
                CREATE INDEX audit_grant ON audit(grant_id, id);
                -- Where archived events ended: the live chain continues from here.
                CREATE TABLE audit_anchor (last_id INTEGER PRIMARY KEY, hash TEXT NOT NULL, file TEXT NOT NULL, at INTEGER NOT NULL, count INTEGER NOT NULL);
                -- How far syslog has been fed, so a restart neither loses nor repeats events.
                CREATE TABLE audit_cursor (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
                CREATE VIEW audit_in AS SELECT at, kind, actor, user, request_id, grant_id, data FROM audit;
                CREATE TRIGGER audit_in_insert INSTEAD OF INSERT ON audit_in BEGIN
                    INSERT INTO audit (id, at, kind, actor, user, request_id, grant_id, data, prev_hash, hash)
                    SELECT c.id, NEW.at, NEW.kind, NEW.actor, NEW.user, NEW.request_id, NEW.grant_id, NEW.data, c.prev,
                           jit_audit_hash(c.id, NEW.at, NEW.kind, NEW.actor, NEW.user, NEW.request_id, NEW.grant_id, NEW.data, c.prev)
                    FROM (SELECT COALESCE((SELECT max(id) FROM audit), (SELECT max(last_id) FROM audit_anchor), 0) + 1 AS id,
                                 COALESCE((SELECT hash FROM audit ORDER BY id DESC LIMIT 1),
                                          (SELECT hash FROM audit_anchor ORDER BY last_id DESC LIMIT 1),
                                          '\(AuditChain.genesis)') AS prev) AS c;
                END;
                CREATE TRIGGER audit_request_filed AFTER INSERT ON requests BEGIN
                    INSERT INTO audit_in VALUES (NEW.created_at, 'request.filed', NEW.user, NEW.user, NEW.id, NULL,
                        jit_kv('environment', NEW.environment, 'scope', NEW.scope, 'commands', NEW.commands, 'runas', NEW.runas,
                               'duration', NEW.duration, 'reason', NEW.reason, 'rhost', NEW.rhost, 'service', NEW.service,
                               'rule', NEW.rule, 'ticket', NEW.ticket, 'extends', NEW.extends, 'expires_at', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.expires_at / 1000, 'unixepoch')));
                END;
                CREATE TRIGGER audit_request_decided AFTER UPDATE OF state ON requests WHEN NEW.state != OLD.state BEGIN
                    INSERT INTO audit_in VALUES (COALESCE(NEW.decided_at, NEW.created_at), 'request.' || NEW.state,
                        COALESCE(NEW.decided_by, 'jitd'), NEW.user, NEW.id, NULL,
                        jit_kv('comment', NEW.comment, 'rule', NEW.rule, 'approved_via', NEW.approved_via,
                               'bypass', CASE WHEN NEW.approved_via = 'break-glass' THEN 'break-glass' END));
                END;
                CREATE TRIGGER audit_break_glass AFTER UPDATE OF state ON requests
                    WHEN NEW.state = 'approved' AND OLD.state != 'approved' AND NEW.approved_via = 'break-glass' BEGIN
                    INSERT INTO audit_in VALUES (COALESCE(NEW.decided_at, NEW.created_at), 'breakglass.bypass', NEW.user, NEW.user, NEW.id, NULL,
                        jit_kv('reason', NEW.reason, 'scope', NEW.scope, 'rule', NEW.rule));
                END;
                CREATE TRIGGER audit_request_escalated AFTER UPDATE OF escalated ON requests WHEN NEW.escalated > OLD.escalated BEGIN
                    INSERT INTO audit_in VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'request.escalated', 'jitd',
                        NEW.user, NEW.id, NULL, jit_kv('tier', NEW.escalated, 'rule', NEW.rule));
                END;
                CREATE TRIGGER audit_approval AFTER INSERT ON approvals BEGIN
                    INSERT INTO audit_in VALUES (NEW.at, 'approval.recorded', NEW.approver,
                        COALESCE((SELECT user FROM requests WHERE id = NEW.request_id), ''), NEW.request_id, NULL,
                        jit_kv('comment', NEW.comment, 'mfa', CASE WHEN NEW.mfa = 1 THEN 'yes' END, 'groups', NEW.groups));
                END;
                CREATE TRIGGER audit_grant_started AFTER INSERT ON grants BEGIN
                    INSERT INTO audit_in VALUES (NEW.starts_at, 'grant.started',
                        COALESCE((SELECT decided_by FROM requests WHERE id = NEW.request_id), 'jitd'), NEW.user, NEW.request_id, NEW.id,
                        jit_kv('environment', NEW.environment, 'scope', NEW.scope, 'commands', NEW.commands, 'runas', NEW.runas,
                               'starts_at', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.starts_at / 1000, 'unixepoch'), 'expires_at', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.expires_at / 1000, 'unixepoch')));
                END;
                CREATE TRIGGER audit_grant_ended AFTER UPDATE OF state ON grants WHEN NEW.state != OLD.state BEGIN
                    INSERT INTO audit_in VALUES (COALESCE(NEW.ended_at, NEW.expires_at), 'grant.' || NEW.state,
                        COALESCE(NEW.ended_by, 'jitd'), NEW.user, NEW.request_id, NEW.id, jit_kv('expires_at', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.expires_at / 1000, 'unixepoch')));
                END;
                CREATE TRIGGER audit_grant_extended AFTER UPDATE OF expires_at ON grants
                    WHEN NEW.expires_at != OLD.expires_at AND NEW.state = 'active' BEGIN
                    INSERT INTO audit_in VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'grant.extended', 'jitd',
                        NEW.user, NEW.request_id, NEW.id, jit_kv('from', strftime('%Y-%m-%dT%H:%M:%SZ', OLD.expires_at / 1000, 'unixepoch'), 'to', strftime('%Y-%m-%dT%H:%M:%SZ', NEW.expires_at / 1000, 'unixepoch')));
                END;
                CREATE TRIGGER audit_session_opened AFTER INSERT ON sessions BEGIN
                    INSERT INTO audit_in VALUES (NEW.opened_at, 'session.opened', NEW.user, NEW.user, NULL, NEW.grant_id,
                        jit_kv('service', NEW.service, 'rhost', NEW.rhost, 'tty', NEW.tty, 'pid', NEW.pid));
                END;
                CREATE TRIGGER audit_session_closed AFTER UPDATE OF closed_at ON sessions
                    WHEN NEW.closed_at IS NOT NULL AND OLD.closed_at IS NULL BEGIN
                    INSERT INTO audit_in VALUES (NEW.closed_at, 'session.closed', COALESCE(NEW.ended_by, NEW.user), NEW.user, NULL, NEW.grant_id,
                        jit_kv('service', NEW.service, 'rhost', NEW.rhost, 'tty', NEW.tty, 'pid', NEW.pid));
                END;
                """)
        }
    }

    /// Appends one event that is not a state change (a check, a sudoers write, the agent starting).
    /// `durable: false` commits without waiting for fsync: the event survives the agent being killed (it is
    /// in the WAL file), and only a power cut right after could lose it. The check path uses it.
    public func record(_ kind: String, actor: String, user: String, requestID: Int64? = nil, grantID: Int64? = nil,
                       data: [(String, String)] = [], at: Date, durable: Bool = true) throws(JITError) {
        let sql = "INSERT INTO audit_in VALUES (?, ?, ?, ?, ?, ?, ?)"
        let args: StatementArguments = [Timestamps.millis(at), kind, actor, user, requestID, grantID, AuditChain.kv(data)]
        defer { appended.wake(); if durable { outboxWaker.wake() } }
        do {
            if durable {
                try pool.write { db in try db.cachedStatement(sql: sql).execute(arguments: args) }
            } else {
                try pool.writeWithoutTransaction { db in
                    try db.cachedStatement(sql: "PRAGMA synchronous = NORMAL").execute()
                    defer { try? db.cachedStatement(sql: "PRAGMA synchronous = FULL").execute() }
                    try db.inTransaction {
                        try db.cachedStatement(sql: sql).execute(arguments: args)
                        return .commit
                    }
                }
            }
        } catch let e as DatabaseError {
            throw JITError(.internal, "recording the audit event failed (\(Store.explain(e)))")
        } catch {
            throw JITError(.internal, "recording the audit event failed (\(error))")
        }
    }

    static func event(_ row: Row) -> AuditEvent {
        AuditEvent(id: row["id"], at: row["at"], kind: row["kind"], actor: row["actor"], user: row["user"],
                   requestID: row["request_id"], grantID: row["grant_id"], data: row["data"], prevHash: row["prev_hash"], hash: row["hash"])
    }

    /// A filter over the trail; `after` pages forwards.
    public struct AuditQuery: Sendable {
        public var since: Date?
        public var until: Date?
        public var user: String?
        public var grantID: Int64?
        public var after: Int64?
        public var limit: Int = 500
        public init(since: Date? = nil, until: Date? = nil, user: String? = nil, grantID: Int64? = nil, after: Int64? = nil, limit: Int = 500) {
            self.since = since
            self.until = until
            self.user = user
            self.grantID = grantID
            self.after = after
            self.limit = limit
        }
    }

    /// Events in id order matching the query.
    public func events(_ q: AuditQuery) throws(JITError) -> [AuditEvent] {
        try read { db in
            var sql = "SELECT * FROM audit WHERE 1"
            var args: [any DatabaseValueConvertible] = []
            if let s = q.since { sql += " AND at >= ?"; args.append(Timestamps.millis(s)) }
            if let u = q.until { sql += " AND at < ?"; args.append(Timestamps.millis(u)) }
            if let u = q.user { sql += " AND user = ?"; args.append(u) }
            if let g = q.grantID { sql += " AND grant_id = ?"; args.append(g) }
            if let a = q.after { sql += " AND id > ?"; args.append(a) }
            sql += " ORDER BY id LIMIT ?"
            args.append(q.limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Store.event)
        }
    }

    /// The newest event's id and hash (the head of the chain), or the anchor's when everything is archived.
    public func auditHead() throws(JITError) -> (id: Int64, hash: String) {
        try read { db in try Store.head(db) }
    }

    static func head(_ db: Database) throws -> (id: Int64, hash: String) {
        if let r = try Row.fetchOne(db, sql: "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1") { return (r["id"], r["hash"]) }
        if let r = try Row.fetchOne(db, sql: "SELECT last_id, hash FROM audit_anchor ORDER BY last_id DESC LIMIT 1") { return (r["last_id"], r["hash"]) }
        return (0, AuditChain.genesis)
    }

    /// Walks the whole live chain from its anchor. Reads in batches inside one read transaction (a snapshot).
    public func verifyAudit() throws(JITError) -> AuditChain.Walk {
        try read { db in
            var walk = AuditChain.Walk()
            if let a = try Row.fetchOne(db, sql: "SELECT last_id, hash FROM audit_anchor ORDER BY last_id DESC LIMIT 1") {
                walk = AuditChain.Walk(anchorID: a["last_id"], anchorHash: a["hash"])
            }
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM audit ORDER BY rowid")
            while let row = try cursor.next() {
                if !walk.step(Store.event(row)) { break }
            }
            return walk
        }
    }

    public func cursor(_ name: String) throws(JITError) -> Int64? {
        try read { db in try Int64.fetchOne(db, sql: "SELECT last_id FROM audit_cursor WHERE name = ?", arguments: [name]) }
    }

    public func setCursor(_ name: String, _ id: Int64) throws(JITError) {
        try write { db in try Store.putCursor(db, name, id) }
    }

    static func putCursor(_ db: Database, _ name: String, _ value: Int64) throws {
        try db.execute(sql: "INSERT INTO audit_cursor (name, last_id) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last_id = excluded.last_id",
                       arguments: [name, value])
    }

    /// Removes events up to `lastID` once they are safely archived, leaving an anchor so the chain still verifies.
    public func cutAudit(through lastID: Int64, hash: String, file: String, count: Int64, at now: Date) throws(JITError) {
        try write { db in
            guard let h = try String.fetchOne(db, sql: "SELECT hash FROM audit WHERE id = ?", arguments: [lastID]), h == hash else {
                throw JITError(.conflict, "event \(lastID) changed while it was being archived; nothing was removed")
            }
            try db.execute(sql: "INSERT INTO audit_anchor (last_id, hash, file, at, count) VALUES (?, ?, ?, ?, ?)",
                           arguments: [lastID, hash, file, Timestamps.millis(now), count])
            try db.execute(sql: "DELETE FROM audit WHERE id <= ?", arguments: [lastID])
        }
    }

    public func anchors() throws(JITError) -> [(lastID: Int64, hash: String, file: String)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT last_id, hash, file FROM audit_anchor ORDER BY last_id").map { ($0["last_id"], $0["hash"], $0["file"]) }
        }
    }
}

extension Store {
    /// Where the check journal has been ingested up to.
    public func journalCursor() throws(JITError) -> (gen: Int64, offset: Int64) {
        try read { db in
            let gen = try Int64.fetchOne(db, sql: "SELECT last_id FROM audit_cursor WHERE name = 'journal_gen'") ?? 0
            let off = try Int64.fetchOne(db, sql: "SELECT last_id FROM audit_cursor WHERE name = 'journal_offset'") ?? 0
            return (gen, off)
        }
    }

    public func setJournalCursor(gen: Int64, offset: Int64) throws(JITError) {
        try write { db in try Store.putJournalCursor(db, gen, offset) }
    }

    static func putJournalCursor(_ db: Database, _ gen: Int64, _ offset: Int64) throws {
        try putCursor(db, "journal_gen", gen)
        try putCursor(db, "journal_offset", offset)
    }

    /// Appends journal events to the chain and records how far the journal was read, in one transaction.
    func ingestChecks(_ events: [(Int64, String, String, String, Int64?, Int64?, String)], gen: Int64, offset: Int64) throws(JITError) {
        try write { db in
            let stmt = try db.cachedStatement(sql: "INSERT INTO audit_in VALUES (?, ?, ?, ?, ?, ?, ?)")
            for e in events {
                try stmt.execute(arguments: [e.0, e.1, e.2, e.3, e.4, e.5, e.6])
            }
            try Store.putJournalCursor(db, gen, offset)
        }
    }
}
