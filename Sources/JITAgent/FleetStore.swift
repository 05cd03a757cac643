public import Foundation
import GRDB
public import JITCore
public import JITFleet
import Synchronization

/// The host's side of the fleet in SQLite (GRDB migration "i14-fleet", docs/FLEET.md): grants received from
/// the control plane are rows of the host's own `grants` table with `server_id` (unique), so the check path,
/// sudoers files with NOTAFTER, session ends and local expiry work unchanged; the stream cursor and
/// `last_contact` are one row (`fleet_state`) written in the same transaction as the grants a batch changes;
/// requests filed here wait in `fleet_outbox` until the server has answered; `events_acked` is the highest
/// audit event id the server acknowledged.
extension Store {
    static func registerFleetMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("i14-fleet") { db in
            try db.execute(sql: """
                ALTER TABLE grants ADD COLUMN server_id INTEGER;
                CREATE UNIQUE INDEX grants_server_id ON grants(server_id) WHERE server_id IS NOT NULL;
                ALTER TABLE requests ADD COLUMN server_id INTEGER;
                CREATE UNIQUE INDEX requests_server_id ON requests(server_id) WHERE server_id IS NOT NULL;
                CREATE TABLE fleet_state (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    cursor INTEGER NOT NULL DEFAULT 0, last_contact INTEGER, events_acked INTEGER NOT NULL DEFAULT 0
                );
                INSERT INTO fleet_state (id) VALUES (1);
                CREATE TABLE fleet_outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    request_id INTEGER NOT NULL UNIQUE REFERENCES requests(id),
                    body TEXT NOT NULL, reply TEXT, sent_at INTEGER,
                    attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, last_error TEXT
                );
                CREATE INDEX fleet_outbox_due ON fleet_outbox(sent_at, next_at);
                """)
        }
        // Requests cancelled here that the control plane must be told of (it may have them pending).
        m.registerMigration("i15-fleet-cancels") { db in
            try db.execute(sql: """
                CREATE TABLE fleet_cancels (
                    request_id INTEGER PRIMARY KEY REFERENCES requests(id),
                    at INTEGER NOT NULL, sent_at INTEGER,
                    attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, last_error TEXT
                );
                """)
        }
    }

    // MARK: the stream's mirror

    /// Where the stream stands.
    public struct FleetCursor: Sendable, Equatable {
        public var cursor: Int64
        public var lastContact: Date?
        public var eventsAcked: Int64
    }

    public func fleetCursor() throws(JITError) -> FleetCursor {
        try read { db in try Store.fleetCursor(db) }
    }

    static func fleetCursor(_ db: Database) throws -> FleetCursor {
        guard let row = try Row.fetchOne(db, sql: "SELECT cursor, last_contact, events_acked FROM fleet_state WHERE id = 1") else {
            return FleetCursor(cursor: 0, lastContact: nil, eventsAcked: 0)
        }
        let last: Int64? = row["last_contact"]
        return FleetCursor(cursor: row["cursor"], lastContact: last.map(Timestamps.date(millis:)), eventsAcked: row["events_acked"])
    }

    /// The server answered (any answer from the control plane counts as contact).
    public func touchFleetContact(at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE fleet_state SET last_contact = ? WHERE id = 1", arguments: [Timestamps.millis(now)])
        }
    }

    /// What one batch did, for the effects to follow after the commit.
    public struct FleetApplied: Sendable {
        /// New grants (put them in place).
        public var started: [Grant] = []
        /// Grants whose end moved (rewrite their sudoers NOTAFTER).
        public var changed: [Grant] = []
        /// Grants that ended (remove, end sessions).
        public var ended: [Grant] = []
        /// Local requests the batch decided (wake their waiters).
        public var decided: [Int64] = []
        /// Server grants refused here, and why (recorded in the trail).
        public var refused: [(id: Int64, why: String)] = []
    }

    /// Who this host is, for the second lock on what the server sends (it filters by the same facts).
    public struct FleetHostFacts: Sendable {
        public var name: String
        public var environment: String
        public var labels: Set<String>
        public init(name: String, environment: String, labels: Set<String>) {
            self.name = name
            self.environment = environment
            self.labels = labels
        }
    }

    /// Why a server grant cannot be held here, or nil. `uid` nil: the user is unknown to this host's NSS.
    static func refusal(_ g: FleetWire.Grant, uid: UInt32?, host: FleetHostFacts) -> String? {
        guard let uid else { return "the user '\(g.user)' is not known to this host (NSS); create the account or revoke grant \(g.id) on the control plane" }
        if uid == 0 { return "grants to root are never held" }
        if g.environment != host.environment { return "grant \(g.id) is for environment \(g.environment), this host is in \(host.environment)" }
        if !g.hosts.isEmpty && !g.hosts.contains(host.name) { return "grant \(g.id) names hosts \(g.hosts.joined(separator: ", ")), not \(host.name)" }
        if !Set(g.labels).isSubset(of: host.labels) { return "grant \(g.id) needs labels \(g.labels.joined(separator: ", ")) that this host does not have" }
        guard ["login", "sudo", "commands"].contains(g.scope) else { return "grant \(g.id) has an unknown scope '\(g.scope)'" }
        if g.scope == "commands" && g.commands.isEmpty { return "grant \(g.id) is for commands but names none" }
        guard Timestamps.parse(g.startsAt) != nil, Timestamps.parse(g.expiresAt) != nil else { return "grant \(g.id) has unreadable times" }
        if RecordMode(rawValue: g.record) == nil { return "grant \(g.id) has an unknown record mode '\(g.record)'" }
        return nil
    }

    /// Applies one stream batch in one transaction with the cursor and `last_contact`: a kill at any moment
    /// leaves either all of it or none of it, and the next poll resumes from the cursor that was committed.
    /// `uids`: the batch's users as this host's NSS resolved them (done before, outside the transaction).
    /// `faultAfter`: tests only, fails the transaction after that many changes.
    public func applyFleet(_ batch: FleetWire.GrantStream, uids: [String: UInt32], host: FleetHostFacts, at now: Date,
                           faultAfter: Int? = nil) throws(JITError) -> FleetApplied {
        try write { db in
            var out = FleetApplied()
            let n = Timestamps.millis(now)
            let current = try Store.fleetCursor(db)
            if !batch.reset && batch.cursor < current.cursor {
                throw JITError(.conflict, "the control plane sent cursor \(batch.cursor), behind this host's \(current.cursor), without a reset; ignored")
            }
            if batch.reset {
                // Everything the fleet gave that is not in the reset's list ends now.
                let keep = Set(batch.changes.filter { $0.state == "active" }.map(\.id))
                let rows = try Row.fetchAll(db, sql: "SELECT \(Store.grantColumns), server_id FROM grants WHERE state = 'active' AND server_id IS NOT NULL")
                for r in rows where !keep.contains(r["server_id"] as Int64) {
                    out.ended.append(try Store.endFleetGrant(db, Store.grant(from: r), as: .revoked, by: "control plane (reset)", at: n))
                }
            }
            for (i, g) in batch.changes.enumerated() {
                if let f = faultAfter, i >= f { throw JITError(.internal, "injected fault after \(f) changes") }
                try self.applyOne(db, g, uid: uids[g.user], host: host, now: now, into: &out)
            }
            try db.execute(sql: "UPDATE fleet_state SET cursor = ?, last_contact = ? WHERE id = 1",
                           arguments: [batch.reset ? batch.cursor : max(batch.cursor, current.cursor), n])
            return out
        }
    }

    func applyOne(_ db: Database, _ g: FleetWire.Grant, uid: UInt32?, host: FleetHostFacts, now: Date, into out: inout FleetApplied) throws {
        let n = Timestamps.millis(now)
        let existing = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE server_id = ?", arguments: [g.id]).map(Store.grant(from:))
        let ends = Timestamps.parse(g.expiresAt).map(Timestamps.millis) ?? 0
        if let e = existing {
            guard e.state == .active else { return }  // ended here already: an ended grant never comes back
            if g.state == "active" && ends > n {
                guard ends != Timestamps.millis(e.expiresAt) else { return }
                try db.execute(sql: "UPDATE grants SET expires_at = ? WHERE id = ?", arguments: [ends, e.id])
                var c = e
                c.expiresAt = Timestamps.date(millis: ends)
                out.changed.append(c)
                return
            }
            let next: GrantState = g.state == "revoked" ? .revoked : g.state == "used" ? .used : .expired
            let by = "control plane" + (g.endedBy.map { ": \($0)" } ?? "")
            out.ended.append(try Store.endFleetGrant(db, e, as: next, by: by, at: n))
            return
        }
        guard g.state == "active", ends > n else { return }
        if let why = Store.refusal(g, uid: uid, host: host) {
            try db.execute(sql: "INSERT INTO audit_in VALUES (?, 'fleet.grant_refused', 'jitd', ?, NULL, NULL, ?)", arguments: [
                n, g.user, AuditChain.kv([("server_grant", String(g.id)), ("server_request", String(g.requestID)), ("why", why)]),
            ])
            out.refused.append((g.id, why))
            return
        }
        guard let uid else { return }
        let starts = Timestamps.millis(Timestamps.parse(g.startsAt) ?? now)
        // The local request it answers, or a record of the server's request (filed on another host, or the web).
        // (Of the same user: a grant never approves someone else's request.)
        var requestID = try Int64.fetchOne(db, sql: "SELECT id FROM requests WHERE server_id = ? AND user = ?", arguments: [g.requestID, g.user])
        if let rid = requestID {
            try db.execute(sql: """
                UPDATE requests SET state = 'approved', approved_via = 'approvers', decided_at = ?, decided_by = 'control plane'
                WHERE id = ? AND state = 'pending'
                """, arguments: [n, rid])
            if db.changesCount > 0 { out.decided.append(rid) }
            if try Int64.fetchOne(db, sql: "SELECT id FROM grants WHERE request_id = ?", arguments: [rid]) != nil { requestID = nil }
        }
        let rid: Int64
        if let r = requestID {
            rid = r
        } else {
            try db.execute(sql: """
                INSERT INTO requests (user, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at,
                                      decided_at, decided_by, rule, approved_via, uses, record, server_id)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'approved', ?, ?, ?, 'control plane', 'fleet', 'approvers', ?, ?, ?)
                """, arguments: [
                    g.user, Int64(uid), g.environment, g.scope, g.commands.joined(separator: "\n"), g.runAs, max(1, (ends - starts) / 1000),
                    "granted on the control plane (server request \(g.requestID))", n, n, n, g.uses.map { Int64($0) }, g.record,
                    try Int64.fetchOne(db, sql: "SELECT id FROM requests WHERE server_id = ?", arguments: [g.requestID]) == nil ? g.requestID : nil,
                ])
            rid = db.lastInsertedRowID
        }
        try db.execute(sql: """
            INSERT INTO grants (request_id, user, uid, environment, scope, commands, runas, state, starts_at, expires_at, nopasswd, login,
                                uses, uses_left, record, server_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [
                rid, g.user, Int64(uid), g.environment, g.scope, g.commands.joined(separator: "\n"), g.runAs, starts, ends,
                g.noPassword, g.login, g.uses.map { Int64($0) }, g.uses.map { Int64($0) }, g.record, g.id,
            ])
        let id = db.lastInsertedRowID
        if let row = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [id]) {
            out.started.append(Store.grant(from: row))
        }
    }

    static func endFleetGrant(_ db: Database, _ g: Grant, as next: GrantState, by: String, at n: Int64) throws -> Grant {
        var e = g
        e.state = try g.state.transition(to: next)
        e.endedAt = Timestamps.date(millis: n)
        e.endedBy = by
        try db.execute(sql: "UPDATE grants SET state = ?, ended_at = ?, ended_by = ? WHERE id = ?", arguments: [e.state.rawValue, n, by, g.id])
        return e
    }

    /// The local ids of the grants that came from the control plane and are active.
    public func activeFleetGrantIDs() throws(JITError) -> Set<Int64> {
        try read { db in Set(try Int64.fetchAll(db, sql: "SELECT id FROM grants WHERE state = 'active' AND server_id IS NOT NULL")) }
    }

    /// Whether a grant came from the control plane.
    public func isFleetGrant(_ id: Int64) throws(JITError) -> Bool {
        try read { db in try Int64.fetchOne(db, sql: "SELECT server_id FROM grants WHERE id = ?", arguments: [id]) != nil }
    }

    // MARK: the request outbox

    /// One request waiting to be sent, or sent and answered.
    public struct FleetOutboxRow: Sendable, Equatable {
        public var seq: Int64
        public var requestID: Int64
        public var body: FleetWire.HostRequest
        public var attempts: Int
        public var sentAt: Date?
        public var lastError: String?
    }

    /// Stores a request filed here as pending, with its outbox entry, in one transaction: it is sent
    /// (with its `seq`, the server's idempotency key) however often the agent restarts before the answer.
    public func insertFleetRequest(_ r: AccessRequest, askedDuration: Int64?, hosts: [String], at now: Date) throws(JITError) -> (AccessRequest, Int64) {
        try write { db in
            let stored = try self.insertPending(db, r)
            try db.execute(sql: "INSERT INTO fleet_outbox (request_id, body, next_at) VALUES (?, '', ?)",
                           arguments: [stored.id, Timestamps.millis(now)])
            let seq = db.lastInsertedRowID
            let body = FleetWire.HostRequest(
                seq: seq, user: r.user, scope: r.scope.name, commands: r.scope.commands, runAs: r.runAs.isEmpty ? nil : r.runAs,
                duration: askedDuration, reason: r.reason, ticket: r.ticket, uses: r.uses, hosts: hosts, rhost: r.rhost, service: r.service,
                filedAt: Timestamps.format(r.createdAt))
            try db.execute(sql: "UPDATE fleet_outbox SET body = ? WHERE seq = ?", arguments: [try Store.json(body), seq])
            return (stored, seq)
        }
    }

    static func json<T: Encodable>(_ v: T) throws -> String {
        String(decoding: try JSONEncoder().encode(v), as: UTF8.self)
    }

    static func fleetOutboxRow(_ r: Row) throws -> FleetOutboxRow {
        FleetOutboxRow(seq: r["seq"], requestID: r["request_id"],
                       body: try JSONDecoder().decode(FleetWire.HostRequest.self, from: Data((r["body"] as String).utf8)),
                       attempts: r["attempts"], sentAt: (r["sent_at"] as Int64?).map(Timestamps.date(millis:)), lastError: r["last_error"])
    }

    /// Entries not yet answered whose time has come, oldest first; a request that ended here meanwhile
    /// (expired unsent, cancelled) is not sent.
    public func dueFleetOutbox(now: Date, limit: Int = 50) throws(JITError) -> [FleetOutboxRow] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT o.* FROM fleet_outbox o JOIN requests r ON r.id = o.request_id
                WHERE o.sent_at IS NULL AND o.next_at <= ?
                  AND (r.state = 'pending'
                       -- cancelled here after a try whose answer was lost: the server may hold it; send it again
                       -- (the same seq: idempotent) to learn its id, then the cancel follows
                       OR (o.attempts > 0 AND EXISTS (SELECT 1 FROM fleet_cancels c WHERE c.request_id = o.request_id)))
                ORDER BY o.seq LIMIT ?
                """, arguments: [Timestamps.millis(now), limit]).map(Store.fleetOutboxRow)
        }
    }

    public func fleetOutbox() throws(JITError) -> [FleetOutboxRow] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM fleet_outbox ORDER BY seq").map(Store.fleetOutboxRow) }
    }

    /// The server answered: the reply and the server's request id are stored with the contact time.
    public func markFleetSent(seq: Int64, reply: FleetWire.RequestStatus, at now: Date) throws(JITError) {
        try write { db in
            guard let rid = try Int64.fetchOne(db, sql: "SELECT request_id FROM fleet_outbox WHERE seq = ?", arguments: [seq]) else { return }
            try db.execute(sql: "UPDATE fleet_outbox SET sent_at = ?, reply = ?, attempts = attempts + 1, last_error = NULL WHERE seq = ?",
                           arguments: [Timestamps.millis(now), try Store.json(reply), seq])
            try db.execute(sql: "UPDATE requests SET server_id = ? WHERE id = ? AND server_id IS NULL", arguments: [reply.id, rid])
            try db.execute(sql: "UPDATE fleet_state SET last_contact = ? WHERE id = 1", arguments: [Timestamps.millis(now)])
        }
    }

    public func markFleetRetry(seq: Int64, next: Date, error: String) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE fleet_outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE seq = ?",
                           arguments: [Timestamps.millis(next), error, seq])
        }
    }

    /// The control plane's id of a request filed here, once the server has answered its outbox entry.
    public func fleetServerID(request id: Int64) throws(JITError) -> Int64? {
        try read { db in try Int64.fetchOne(db, sql: "SELECT server_id FROM requests WHERE id = ?", arguments: [id]) }
    }

    /// A request cancelled here that the control plane may hold: sent (it has the server's id) or tried
    /// (the answer may have been lost). One that never left the host needs nothing.
    public func queueFleetCancel(request id: Int64, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO fleet_cancels (request_id, at, next_at)
                SELECT r.id, ?, ? FROM requests r LEFT JOIN fleet_outbox o ON o.request_id = r.id
                WHERE r.id = ? AND (r.server_id IS NOT NULL OR o.attempts > 0)
                """, arguments: [Timestamps.millis(now), Timestamps.millis(now), id])
        }
    }

    public struct FleetCancelRow: Sendable, Equatable {
        public var requestID: Int64
        public var serverID: Int64
        public var attempts: Int
    }

    /// Cancels to tell whose time has come and whose server id is known, oldest first.
    public func dueFleetCancels(now: Date, limit: Int = 50) throws(JITError) -> [FleetCancelRow] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT c.request_id, r.server_id, c.attempts FROM fleet_cancels c JOIN requests r ON r.id = c.request_id
                WHERE c.sent_at IS NULL AND c.next_at <= ? AND r.server_id IS NOT NULL ORDER BY c.at LIMIT ?
                """, arguments: [Timestamps.millis(now), limit]).map {
                FleetCancelRow(requestID: $0["request_id"], serverID: $0["server_id"], attempts: $0["attempts"])
            }
        }
    }

    /// The control plane answered (or refused for good, `error` says why).
    public func markFleetCancelSent(requestID: Int64, error: String?, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE fleet_cancels SET sent_at = ?, attempts = attempts + 1, last_error = ? WHERE request_id = ?",
                           arguments: [Timestamps.millis(now), error, requestID])
        }
    }

    public func markFleetCancelRetry(requestID: Int64, next: Date, error: String) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE fleet_cancels SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE request_id = ?",
                           arguments: [Timestamps.millis(next), error, requestID])
        }
    }

    /// Pending local requests the server has (their server id), oldest first: the ones to ask about.
    public func openFleetRequests(limit: Int = 50) throws(JITError) -> [(local: Int64, server: Int64)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT id, server_id FROM requests WHERE state = 'pending' AND server_id IS NOT NULL ORDER BY id LIMIT ?",
                             arguments: [limit]).map { (local: $0["id"] as Int64, server: $0["server_id"] as Int64) }
        }
    }

    // MARK: event shipping

    /// Audit events after the acknowledged id, oldest first.
    public func fleetEvents(after id: Int64, limit: Int) throws(JITError) -> [AuditEvent] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map(Store.event)
        }
    }

    /// Records in the trail that the control plane refused event `ev` on its own (`fleet.event_unshipped`:
    /// its id, kind, the server's code and reason) and moves the shipping cursor past it, in one transaction: the
    /// cursor never passes an event without that record. The record is a new event and ships like any other;
    /// a refused record of this kind is stepped over without another (no record of a record, no loop).
    public func markEventUnshipped(_ ev: AuditEvent, code: String, reason: String, at now: Date) throws(JITError) {
        let data: [(String, String)] = [("event", String(ev.id)), ("event_kind", ev.kind), ("code", String(code.prefix(64))),
                                        ("reason", String(reason.unicodeScalars.filter { $0.properties.generalCategory != .control }.prefix(300).map(Character.init)))]
        try write { db in
            if ev.kind != "fleet.event_unshipped" {
                try db.execute(sql: "INSERT INTO audit_in VALUES (?, ?, ?, ?, ?, ?, ?)",
                               arguments: [Timestamps.millis(now), "fleet.event_unshipped", "jitd", ev.user, ev.requestID, ev.grantID, AuditChain.kv(data)])
            }
            try db.execute(sql: "UPDATE fleet_state SET events_acked = max(events_acked, ?), last_contact = ? WHERE id = 1",
                           arguments: [ev.id, Timestamps.millis(now)])
        }
        appended.wake()
        outboxWaker.wake()
    }

    /// The server stored events up to `acked` (never moves back).
    public func markEventsAcked(_ acked: Int64, at now: Date) throws(JITError) {
        try write { db in
            try db.execute(sql: "UPDATE fleet_state SET events_acked = max(events_acked, ?), last_contact = ? WHERE id = 1",
                           arguments: [acked, Timestamps.millis(now)])
        }
    }
}

/// What the check path knows about the fleet, in memory (never the network): whether this is a fleet host,
/// when the server was last heard from, and which active grants came from it. `strict` hides those grants
/// once the server has been silent for longer than the grace; they come back when it answers again.
public final class FleetStatus: Sendable {
    struct State: Sendable {
        var settings: FleetSettings? = nil
        var server = ""
        var lastContact: Date? = nil
        var reachable = true
        var shipping = false
        var fleetGrants: Set<Int64> = []
    }
    let state = Mutex(State())

    public init() {}

    public var settings: FleetSettings? { state.withLock { $0.settings } }
    public var server: String { state.withLock { $0.server } }
    public var reachable: Bool { state.withLock { $0.reachable } }
    /// The outbox is being sent (the agent's `FleetSync` runs): a filing may wait a moment for its server id.
    public var shipping: Bool { state.withLock { $0.shipping } }
    public func setShipping(_ on: Bool) { state.withLock { $0.shipping = on } }
    public var lastContact: Date? { state.withLock { $0.lastContact } }

    public func configure(_ s: FleetSettings?, server: String) {
        state.withLock { $0.settings = s; $0.server = server }
    }

    public func heard(at now: Date) {
        state.withLock { $0.lastContact = now; $0.reachable = true }
    }

    public func unreachable() {
        state.withLock { $0.reachable = false }
    }

    public func setContact(_ d: Date?) { state.withLock { $0.lastContact = d } }

    public func setFleetGrants(_ ids: Set<Int64>) { state.withLock { $0.fleetGrants = ids } }

    /// Strict mode past the grace: the fleet's grants are not honoured.
    public func isStrictOffline(now: Date) -> Bool {
        state.withLock { s in
            guard let set = s.settings, set.offline == .strict else { return false }
            guard let last = s.lastContact else { return true }
            return now.timeIntervalSince(last) > Double(set.offlineGrace)
        }
    }

    /// Whether the check path may use this grant now.
    public func usable(_ grantID: Int64, now: Date) -> Bool {
        state.withLock { s in
            guard let set = s.settings, set.offline == .strict, s.fleetGrants.contains(grantID) else { return true }
            guard let last = s.lastContact else { return false }
            return now.timeIntervalSince(last) <= Double(set.offlineGrace)
        }
    }
}

extension Store {
    /// The server refused an entry for good: it is not sent again and its request ends as denied.
    public func markFleetRefused(seq: Int64, error: String, at now: Date) throws(JITError) {
        try write { db in
            guard let rid = try Int64.fetchOne(db, sql: "SELECT request_id FROM fleet_outbox WHERE seq = ?", arguments: [seq]) else { return }
            let n = Timestamps.millis(now)
            try db.execute(sql: "UPDATE fleet_outbox SET sent_at = ?, attempts = attempts + 1, last_error = ? WHERE seq = ?", arguments: [n, error, seq])
            try db.execute(sql: "UPDATE requests SET state = 'denied', decided_at = ?, decided_by = 'control plane', comment = ? WHERE id = ? AND state = 'pending'",
                           arguments: [n, "refused by the control plane: \(error)", rid])
            try db.execute(sql: "UPDATE fleet_state SET last_contact = ? WHERE id = 1", arguments: [n])
        }
    }
}
