public import Foundation
public import JITAgent
public import JITCore
import JITFleet
public import Logging
import PostgresNIO

/// The control plane's `DecisionStore`: requests, approvals, grants and one-time codes in PostgreSQL
/// (migration 2), with the same outcomes as the SQLite `Store` for the same calls (the conformance suite
/// checks both). Every value is bound (`\(bind)`); every method is one transaction; every change writes its
/// `fleet_audit` event in that transaction.
///
/// Concurrency across replicas: a decision locks its request row (`SELECT ... FOR UPDATE`) before reading
/// it, so two replicas approving the same request serialise and the second sees it decided; the unique keys
/// `grants.request_id` and the approvals' primary key are the second lock. Timed work takes its rows with
/// `FOR UPDATE SKIP LOCKED`, so every due row is ended by exactly one replica.
///
/// The protocol is synchronous (the host's check path is, and must stay fast). This store bridges by blocking
/// the calling thread until the async query ends: call it only from plain threads (the Unix socket server's
/// workers, `ServerEngine`'s pool), never from an NIO event loop or a Swift concurrency task.
public final class PostgresStore: DecisionStore, Sendable {
    public let db: FleetDatabase
    let logger: Logger
    /// The most rows one timed batch takes (docs/FLEET.md).
    static let batch = 100

    public init(db: FleetDatabase, logger: Logger) {
        self.db = db
        self.logger = logger
    }

    public var describe: String { "PostgreSQL \(db.describe)" }

    // MARK: bridging

    /// The work and its outcome, handed to the task. The task drops the work before it signals, so the
    /// closure does not outlive `withoutActuallyEscaping`.
    final class Handoff<T>: @unchecked Sendable {
        var work: (() async throws -> T)?
        var value: Result<T, JITError>?
        init(_ work: @escaping () async throws -> T) { self.work = work }
    }
    struct Unchecked<T>: @unchecked Sendable { let value: T }

    /// Runs `body` to its end on an executor of its own (`QueueExecutor`, never the cooperative pool) while
    /// this thread waits; its errors become a sentence naming the database. Safe because the caller's closures
    /// outlive the task: we wait for it. The work never needs a cooperative thread, so callers that block
    /// cooperative threads (tests, two suites at once on two cores) cannot starve it; the database client's
    /// own run loop must not be on that pool either (`FleetDatabase.runOffPool`).
    func blocking<T>(_ what: String, _ body: () async throws -> T) throws(JITError) -> T {
        let done = DispatchSemaphore(value: 0)
        let executor = QueueExecutor("jit.postgres.call")
        let out: Result<T, JITError> = withoutActuallyEscaping(body) { body in
            let h = Handoff(body)
            Task.detached(executorPreference: executor) { [self] in
                do { h.value = .success(try await h.work!()) } catch { h.value = .failure(self.jitError(error, doing: what)) }
                h.work = nil
                done.signal()
            }
            done.wait()
            return h.value!
        }
        return try out.get()
    }

    /// Runs `body` in one transaction (committed before it returns; rolled back on any throw).
    func transaction<T>(_ what: String, _ body: (PostgresConnection) async throws -> T) throws(JITError) -> T {
        let logger = self.logger
        return try blocking(what) {
            try await self.db.client.withTransaction(logger: logger) { c in Unchecked(value: try await body(c)) }.value
        }
    }

    func jitError(_ error: any Error, doing what: String) -> JITError {
        if let e = error as? JITError { return e }
        if let e = error as? TransitionError { return JITError(e) }
        if let t = error as? PostgresTransactionError {
            if let e = t.closureError { return jitError(e, doing: what) }
            if let e = t.beginError ?? t.commitError { return jitError(e, doing: what) }
        }
        if let p = error as? PSQLError, p.serverInfo?[.sqlState] == "23505" {
            return JITError(.conflict, "\(what) conflicts with a change made at the same moment (\(p.serverInfo?[.message] ?? "unique key")); nothing was changed, try again")
        }
        return JITError(.internal, db.failure(error, doing: what).message + "; nothing was changed")
    }

    // MARK: rows

    static let requestColumns = """
        id, user_name, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at, decided_at, \
        decided_by, comment, rule, rhost, service, approved_via, ticket, extends, uses, record, hosts, labels, filed_by_host, host_seq, \
        (SELECT coalesce(array_agg(a.approver ORDER BY a.at, a.approver), '{}') FROM approvals a WHERE a.request_id = requests.id) AS approvals, \
        (SELECT g.id FROM grants g WHERE g.request_id = requests.id) AS grant_id
        """
    static let grantColumns = "id, request_id, user_name, uid, environment, scope, commands, runas, state, starts_at, expires_at, ended_at, ended_by, nopasswd, login, uses, uses_left, record, hosts, labels"

    static func request(_ row: PostgresRow) throws -> AccessRequest {
        let c = row.makeRandomAccess()
        let state = RequestState(rawValue: try c["state"].decode(String.self)) ?? .expired
        let extends = try c["extends"].decode(Int64?.self)
        var r = AccessRequest(
            id: try c["id"].decode(Int64.self), user: try c["user_name"].decode(String.self),
            uid: UInt32(truncatingIfNeeded: try c["uid"].decode(Int64.self)), environment: try c["environment"].decode(String.self),
            scope: Store.scope(try c["scope"].decode(String.self), try c["commands"].decode(String.self)), runAs: try c["runas"].decode(String.self),
            duration: try c["duration"].decode(Int64.self), reason: try c["reason"].decode(String.self), state: state,
            createdAt: try c["created_at"].decode(Date.self), expiresAt: try c["expires_at"].decode(Date.self),
            decidedAt: try c["decided_at"].decode(Date?.self), decidedBy: try c["decided_by"].decode(String?.self),
            comment: try c["comment"].decode(String?.self), rule: try c["rule"].decode(String.self), rhost: try c["rhost"].decode(String.self),
            service: try c["service"].decode(String.self), approvals: try c["approvals"].decode([String].self),
            grantID: try c["grant_id"].decode(Int64?.self) ?? (state == .approved ? extends : nil),
            approvedVia: try c["approved_via"].decode(String?.self).flatMap(ApprovedVia.init(rawValue:)), ticket: try c["ticket"].decode(String?.self),
            extends: extends, uses: try c["uses"].decode(Int?.self), record: RecordMode(rawValue: try c["record"].decode(String.self)) ?? .none)
        r.hosts = try c["hosts"].decode([String].self)
        r.labels = try c["labels"].decode([String].self)
        r.filedByHost = try c["filed_by_host"].decode(String?.self)
        r.hostSeq = try c["host_seq"].decode(Int64?.self)
        return r
    }

    static func grant(_ row: PostgresRow) throws -> Grant {
        let c = row.makeRandomAccess()
        var g = Grant(
            id: try c["id"].decode(Int64.self), requestID: try c["request_id"].decode(Int64.self), user: try c["user_name"].decode(String.self),
            uid: UInt32(truncatingIfNeeded: try c["uid"].decode(Int64.self)), environment: try c["environment"].decode(String.self),
            scope: Store.scope(try c["scope"].decode(String.self), try c["commands"].decode(String.self)), runAs: try c["runas"].decode(String.self),
            state: GrantState(rawValue: try c["state"].decode(String.self)) ?? .expired,
            startsAt: try c["starts_at"].decode(Date.self), expiresAt: try c["expires_at"].decode(Date.self),
            endedAt: try c["ended_at"].decode(Date?.self), endedBy: try c["ended_by"].decode(String?.self),
            noPassword: try c["nopasswd"].decode(Bool.self), coversLogin: try c["login"].decode(Bool.self), uses: try c["uses"].decode(Int?.self),
            usesLeft: try c["uses_left"].decode(Int?.self), record: RecordMode(rawValue: try c["record"].decode(String.self)) ?? .none)
        g.hosts = try c["hosts"].decode([String].self)
        g.labels = try c["labels"].decode([String].self)
        return g
    }

    func requests(_ c: PostgresConnection, _ q: PostgresQuery) async throws -> [AccessRequest] {
        var out: [AccessRequest] = []
        for try await row in try await c.query(q, logger: logger) { out.append(try Self.request(row)) }
        return out
    }

    func grants(_ c: PostgresConnection, _ q: PostgresQuery) async throws -> [Grant] {
        var out: [Grant] = []
        for try await row in try await c.query(q, logger: logger) { out.append(try Self.grant(row)) }
        return out
    }

    /// The request as it is now, its row locked until the transaction ends (`lock`).
    func loadRequest(_ c: PostgresConnection, _ id: Int64, lock: Bool) async throws -> AccessRequest? {
        if lock {
            var found = false
            for try await _ in try await c.query("SELECT id FROM requests WHERE id = \(id) FOR UPDATE", logger: logger) { found = true }
            guard found else { return nil }
        }
        return try await requests(c, "SELECT \(unescaped: Self.requestColumns) FROM requests WHERE id = \(id)").first
    }

    func loadGrant(_ c: PostgresConnection, _ id: Int64, lock: Bool) async throws -> Grant? {
        try await grants(c, "SELECT \(unescaped: Self.grantColumns) FROM grants WHERE id = \(id)\(unescaped: lock ? " FOR UPDATE" : "")").first
    }

    /// The lock order for writers of `grants` (docs/FLEET.md): a transaction that locks grant rows and then
    /// writes them takes the stream's change lock first, as the grants trigger would at its first write.
    func lockChanges(_ c: PostgresConnection) async throws {
        try await c.query("SELECT pg_advisory_xact_lock(\(FleetDatabase.changeLock))", logger: logger)
    }

    /// Rounds to the millisecond, as the SQLite store keeps times, so both give the same answers.
    static func ms(_ d: Date) -> Date { Timestamps.date(millis: Timestamps.millis(d)) }

    /// One event of the central trail, in the caller's transaction.
    func audit(_ c: PostgresConnection, _ event: String, actor: String?, user: String, request: Int64? = nil, grant: Int64? = nil,
               data: [String: String] = [:]) async throws {
        var d = data
        d["user"] = user
        if let request { d["request"] = String(request) }
        if let grant { d["grant"] = String(grant) }
        try await db.audit(event, actor: actor ?? "jitd server", data: d, on: c)
    }

    // MARK: requests

    func insertPending(_ c: PostgresConnection, _ r: AccessRequest) async throws -> AccessRequest {
        let commands = r.scope.commands.joined(separator: "\n"), uid = Int64(r.uid), scope = r.scope.name
        let created = Self.ms(r.createdAt), expires = Self.ms(r.expiresAt), record = r.record.rawValue
        let q: PostgresQuery = """
            INSERT INTO requests (user_name, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at, rule, rhost,
                                  service, ticket, extends, uses, record, hosts, labels, filed_by_host, host_seq)
            VALUES (\(r.user), \(uid), \(r.environment), \(scope), \(commands), \(r.runAs), \(r.duration), \(r.reason), 'pending', \(created),
                    \(expires), \(r.rule), \(r.rhost), \(r.service), \(r.ticket), \(r.extends), \(r.uses), \(record), \(r.hosts), \(r.labels),
                    \(r.filedByHost), \(r.hostSeq))
            RETURNING id
            """
        var out = r
        for try await id in try await c.query(q, logger: logger).decode(Int64.self) { out.id = id }
        out.state = .pending
        out.createdAt = created
        out.expiresAt = expires
        var data = ["rule": r.rule, "scope": r.scope.summary, "environment": r.environment]
        if let h = r.filedByHost { data["filed_by_host"] = h }
        if !r.hosts.isEmpty { data["hosts"] = r.hosts.joined(separator: ",") }
        try await audit(c, "request.filed", actor: r.filedByHost.map { "host:\($0)" } ?? r.user, user: r.user, request: out.id, data: data)
        return out
    }

    public func insertRequest(_ r: AccessRequest) throws(JITError) -> AccessRequest {
        try transaction("storing request of \(r.user)") { c in try await self.insertPending(c, r) }
    }

    public func insertApproved(_ r: AccessRequest, via: ApprovedVia, by: String, at now: Date, noPassword: Bool, login: Bool,
                               end: (Grant?) -> Date) throws(JITError) -> Store.Decision {
        try transaction("storing request of \(r.user)") { c in
            var req = try await self.insertPending(c, r)
            return try await self.approveInside(c, &req, via: via, by: by, comment: nil, at: now, noPassword: noPassword, login: login, end: end)
        }
    }

    /// Marks `r` approved and creates its grant, or extends the grant it names (locked), in the caller's transaction.
    func approveInside(_ c: PostgresConnection, _ r: inout AccessRequest, via: ApprovedVia, by: String, comment: String?, at now: Date,
                       noPassword: Bool, login: Bool, end: (Grant?) -> Date) async throws -> Store.Decision {
        let now = Self.ms(now)
        r.state = try r.state.transition(to: .approved)
        r.decidedAt = now
        r.decidedBy = by
        r.comment = comment
        r.approvedVia = via
        let id = r.id, viaRaw = via.rawValue
        try await c.query("UPDATE requests SET state = 'approved', decided_at = \(now), decided_by = \(by), comment = \(comment), approved_via = \(viaRaw) WHERE id = \(id)", logger: logger)
        try await audit(c, "request.approved", actor: by, user: r.user, request: id, data: ["via": viaRaw])
        if via == .breakGlass {
            // As the SQLite trail records it (and the control plane's notifier tells every approver).
            try await audit(c, "breakglass.bypass", actor: by, user: r.user, request: id, data: ["reason": r.reason, "scope": r.scope.name, "rule": r.rule])
        }
        if let gid = r.extends {
            try await lockChanges(c)
            guard var g = try await loadGrant(c, gid, lock: true) else { throw JITError(.notFound, "grant \(gid) does not exist") }
            guard g.state == .active, g.expiresAt > now else {
                throw JITError(.conflict, "grant \(gid) has ended, so request \(r.id) cannot extend it; deny it and ask for a new grant")
            }
            g.expiresAt = Self.ms(end(g))
            let e = g.expiresAt
            try await c.query("UPDATE grants SET expires_at = \(e) WHERE id = \(gid)", logger: logger)
            try await audit(c, "grant.extended", actor: by, user: g.user, request: id, grant: gid, data: ["expires_at": Timestamps.format(e)])
            r.grantID = gid
            return Store.Decision(request: r, grant: g, decided: true)
        }
        var g = Grant(
            requestID: r.id, user: r.user, uid: r.uid, environment: r.environment, scope: r.scope, runAs: r.runAs,
            startsAt: now, expiresAt: Self.ms(end(nil)), noPassword: noPassword, coversLogin: login || r.scope == .login, uses: r.uses, record: r.record)
        g.hosts = r.hosts
        g.labels = r.labels
        let commands = g.scope.commands.joined(separator: "\n"), uid = Int64(g.uid), scope = g.scope.name, record = g.record.rawValue
        let q: PostgresQuery = """
            INSERT INTO grants (request_id, user_name, uid, environment, hosts, labels, scope, commands, runas, state, starts_at, expires_at,
                                nopasswd, login, uses, uses_left, record)
            VALUES (\(g.requestID), \(g.user), \(uid), \(g.environment), \(g.hosts), \(g.labels), \(scope), \(commands), \(g.runAs), 'active',
                    \(g.startsAt), \(g.expiresAt), \(noPassword), \(g.coversLogin), \(g.uses), \(g.usesLeft), \(record))
            RETURNING id
            """
        for try await gid in try await c.query(q, logger: logger).decode(Int64.self) { g.id = gid }
        try await audit(c, "grant.started", actor: by, user: g.user, request: id, grant: g.id,
                        data: ["scope": g.scope.summary, "expires_at": Timestamps.format(g.expiresAt), "environment": g.environment])
        r.grantID = g.id
        return Store.Decision(request: r, grant: g, decided: true)
    }

    func approvalRecords(_ c: PostgresConnection, _ id: Int64) async throws -> [ApprovalRecord] {
        var out: [ApprovalRecord] = []
        let rows = try await c.query("SELECT approver, groups, at FROM approvals WHERE request_id = \(id) ORDER BY at, approver", logger: logger)
        for try await (who, groups, at) in rows.decode((String, String, Date).self) {
            out.append(ApprovalRecord(approver: who, groups: Set(groups.split(separator: "\n").map(String.init)), at: at))
        }
        return out
    }

    public func approvalRecords(id: Int64) throws(JITError) -> [ApprovalRecord] {
        try blocking("reading the approvals of request \(id)") { try await self.db.client.withConnection { c in try await self.approvalRecords(c, id) } }
    }

    public func approveByRule(
        id: Int64, approver: String, groups: [String], mfa: Bool, comment: String?, at now: Date, noPassword: Bool, login: Bool,
        authorize: (AccessRequest) throws(JITError) -> Void,
        complete: (AccessRequest, [ApprovalRecord], Grant?) throws(JITError) -> Date?
    ) throws(JITError) -> Store.Decision {
        try transaction("approving request \(id)") { c in
            guard var r = try await self.loadRequest(c, id, lock: true) else {
                throw JITError(.notFound, "there is no request \(id); list requests with 'jit list'")
            }
            try authorize(r)
            guard r.state == .pending else { _ = try r.state.transition(to: .approved); throw JITError(.conflict, "request \(id) is \(r.state.rawValue)") }
            if r.approvals.contains(approver) {
                throw JITError(.conflict, "\(approver) has already approved request \(id); another approver must approve it too")
            }
            let at = Self.ms(now), g = groups.joined(separator: "\n")
            try await c.query("INSERT INTO approvals (request_id, approver, at, comment, groups, mfa) VALUES (\(id), \(approver), \(at), \(comment), \(g), \(mfa))",
                              logger: self.logger)
            try await self.audit(c, "request.approval", actor: approver, user: r.user, request: id, data: ["groups": groups.joined(separator: ","), "mfa": mfa ? "1" : "0"])
            r.approvals.append(approver)
            let records = try await self.approvalRecords(c, id)
            var current: Grant? = nil
            if let gid = r.extends { current = try await self.loadGrant(c, gid, lock: false) }
            guard let end = try complete(r, records, current) else { return Store.Decision(request: r, grant: nil, decided: false) }
            return try await self.approveInside(c, &r, via: .approvers, by: approver, comment: comment, at: now, noPassword: noPassword, login: login) { _ in end }
        }
    }

    public func end(id: Int64, as next: RequestState, by who: String?, comment: String?, at now: Date,
                    authorize: (AccessRequest) throws(JITError) -> Void) throws(JITError) -> AccessRequest {
        try transaction("ending request \(id)") { c in
            guard var r = try await self.loadRequest(c, id, lock: true) else {
                throw JITError(.notFound, "there is no request \(id); list requests with 'jit list'")
            }
            try authorize(r)
            let at = Self.ms(now)
            r.state = try r.state.transition(to: next)
            r.decidedAt = at
            r.decidedBy = who
            r.comment = comment
            let s = r.state.rawValue
            try await c.query("UPDATE requests SET state = \(s), decided_at = \(at), decided_by = \(who), comment = \(comment) WHERE id = \(id)", logger: self.logger)
            try await self.audit(c, "request.\(s)", actor: who, user: r.user, request: id, data: comment.map { ["comment": $0] } ?? [:])
            return r
        }
    }

    public func expirePending(now: Date) throws(JITError) -> [AccessRequest] {
        let at = Self.ms(now), n = Self.batch
        return try transaction("expiring pending requests") { c in
            var ids: [Int64] = []
            let q: PostgresQuery = "SELECT id FROM requests WHERE state = 'pending' AND expires_at <= \(at) ORDER BY expires_at LIMIT \(n) FOR UPDATE SKIP LOCKED"
            for try await id in try await c.query(q, logger: self.logger).decode(Int64.self) { ids.append(id) }
            guard !ids.isEmpty else { return [] }
            try await c.query("UPDATE requests SET state = 'expired', decided_at = \(at) WHERE id = ANY(\(ids))", logger: self.logger)
            let out = try await self.requests(c, "SELECT \(unescaped: Self.requestColumns) FROM requests WHERE id = ANY(\(ids)) ORDER BY id")
            for r in out { try await self.audit(c, "request.expired", actor: nil, user: r.user, request: r.id) }
            return out
        }
    }

    public func expireDueGrants(now: Date) throws(JITError) -> [Grant] {
        let at = Self.ms(now), n = Self.batch
        return try transaction("expiring grants") { c in
            try await self.lockChanges(c)
            var ids: [Int64] = []
            let q: PostgresQuery = "SELECT id FROM grants WHERE state = 'active' AND expires_at <= \(at) ORDER BY expires_at LIMIT \(n) FOR UPDATE SKIP LOCKED"
            for try await id in try await c.query(q, logger: self.logger).decode(Int64.self) { ids.append(id) }
            guard !ids.isEmpty else { return [] }
            try await c.query("UPDATE grants SET state = 'expired', ended_at = \(at) WHERE id = ANY(\(ids))", logger: self.logger)
            let out = try await self.grants(c, "SELECT \(unescaped: Self.grantColumns) FROM grants WHERE id = ANY(\(ids)) ORDER BY id")
            for g in out { try await self.audit(c, "grant.expired", actor: nil, user: g.user, request: g.requestID, grant: g.id) }
            return out
        }
    }

    public func request(id: Int64) throws(JITError) -> AccessRequest? {
        try read("reading request \(id)") { c in try await self.loadRequest(c, id, lock: false) }
    }

    func read<T>(_ what: String, _ body: (PostgresConnection) async throws -> T) throws(JITError) -> T {
        try blocking(what) {
            try await self.db.client.withConnection { c in Unchecked(value: try await body(c)) }.value
        }
    }

    public func requests(user: String?, pendingOnly: Bool, before: Int64?, limit: Int) throws(JITError) -> [AccessRequest] {
        let pending = pendingOnly ? "pending" : nil as String?
        return try read("listing requests") { c in
            try await self.requests(c, """
                SELECT \(unescaped: Self.requestColumns) FROM requests
                WHERE (\(user)::text IS NULL OR user_name = \(user)) AND (\(pending)::text IS NULL OR state = \(pending))
                  AND (\(before)::bigint IS NULL OR id < \(before))
                ORDER BY id DESC LIMIT \(limit)
                """)
        }
    }

    /// The request a host filed under its sequence number, if any (idempotency of `POST /v1/requests`).
    public func request(filedBy host: String, seq: Int64) throws(JITError) -> AccessRequest? {
        try read("reading request \(seq) of host \(host)") { c in
            try await self.requests(c, "SELECT \(unescaped: Self.requestColumns) FROM requests WHERE filed_by_host = \(host) AND host_seq = \(seq)").first
        }
    }

    // MARK: grants

    public func grant(id: Int64) throws(JITError) -> Grant? {
        try read("reading grant \(id)") { c in try await self.loadGrant(c, id, lock: false) }
    }

    public func grants(user: String?, activeOnly: Bool, before: Int64?, limit: Int) throws(JITError) -> [Grant] {
        let active = activeOnly ? "active" : nil as String?
        return try read("listing grants") { c in
            try await self.grants(c, """
                SELECT \(unescaped: Self.grantColumns) FROM grants
                WHERE (\(user)::text IS NULL OR user_name = \(user)) AND (\(active)::text IS NULL OR state = \(active))
                  AND (\(before)::bigint IS NULL OR id < \(before))
                ORDER BY id DESC LIMIT \(limit)
                """)
        }
    }

    public func activeGrants() throws(JITError) -> [Grant] {
        try read("listing active grants") { c in
            try await self.grants(c, "SELECT \(unescaped: Self.grantColumns) FROM grants WHERE state = 'active' ORDER BY expires_at")
        }
    }

    public func endGrant(id: Int64, as next: GrantState, by who: String?, at now: Date) throws(JITError) -> Grant {
        try transaction("ending grant \(id)") { c in
            try await self.lockChanges(c)
            guard var g = try await self.loadGrant(c, id, lock: true) else {
                throw JITError(.notFound, "there is no grant \(id); list grants with 'jit grants'")
            }
            let at = Self.ms(now)
            g.state = try g.state.transition(to: next)
            g.endedAt = at
            g.endedBy = who
            let s = g.state.rawValue
            try await c.query("UPDATE grants SET state = \(s), ended_at = \(at), ended_by = \(who) WHERE id = \(id)", logger: self.logger)
            try await self.audit(c, "grant.\(s)", actor: who, user: g.user, request: g.requestID, grant: id)
            return g
        }
    }

    public func nextDeadline() throws(JITError) -> Date? {
        try read("reading the next deadline") { c in
            let q: PostgresQuery = """
                SELECT least((SELECT min(expires_at) FROM requests WHERE state = 'pending'), (SELECT min(expires_at) FROM grants WHERE state = 'active'))
                """
            var out: Date? = nil
            for try await d in try await c.query(q, logger: self.logger).decode(Date?.self) { out = d }
            return out
        }
    }

    public func counts() throws(JITError) -> (pending: Int, active: Int) {
        try read("counting requests and grants") { c in
            var out = (pending: 0, active: 0)
            let q: PostgresQuery = "SELECT (SELECT count(*) FROM requests WHERE state = 'pending'), (SELECT count(*) FROM grants WHERE state = 'active')"
            for try await (p, a) in try await c.query(q, logger: self.logger).decode((Int, Int).self) { out = (p, a) }
            return out
        }
    }

    public func pendingCount(user: String, filedBy host: String?) throws(JITError) -> Int {
        try read("counting pending requests of \(user)") { c in
            var n = 0
            let q: PostgresQuery = "SELECT count(*) FROM requests WHERE user_name = \(user) AND state = 'pending' AND filed_by_host IS NOT DISTINCT FROM \(host)"
            for try await v in try await c.query(q, logger: self.logger).decode(Int.self) { n = v }
            return n
        }
    }

    // MARK: escalation

    public func pendingWithEscalation() throws(JITError) -> [(request: AccessRequest, escalated: Int)] {
        try read("reading pending requests") { c in
            var out: [(request: AccessRequest, escalated: Int)] = []
            let rows = try await c.query("SELECT \(unescaped: Self.requestColumns), escalated FROM requests WHERE state = 'pending' ORDER BY id", logger: self.logger)
            for try await row in rows {
                out.append((try Self.request(row), try row.makeRandomAccess()["escalated"].decode(Int.self)))
            }
            return out
        }
    }

    @discardableResult
    public func markEscalated(id: Int64, tiers: Int) throws(JITError) -> Bool {
        try transaction("marking request \(id) escalated") { c in
            var changed = false
            let q: PostgresQuery = "UPDATE requests SET escalated = \(tiers) WHERE id = \(id) AND state = 'pending' AND escalated < \(tiers) RETURNING user_name"
            for try await user in try await c.query(q, logger: self.logger).decode(String.self) {
                changed = true
                try await self.audit(c, "request.escalated", actor: nil, user: user, request: id, data: ["tiers": String(tiers)])
            }
            return changed
        }
    }

    // MARK: MFA

    public func checkTargets(_ names: [String], environment: String) throws(JITError) {
        guard !names.isEmpty else { return }
        let known: Set<String> = try read("looking up the requested hosts") { c in
            var out = Set<String>()
            let q: PostgresQuery = "SELECT name FROM hosts WHERE name = ANY(\(names)) AND environment = \(environment) AND revoked_at IS NULL"
            for try await n in try await c.query(q, logger: self.logger).decode(String.self) { out.insert(n) }
            return out
        }
        let missing = names.filter { !known.contains($0) }
        guard missing.isEmpty else {
            throw JITError(.invalid, "no enrolled host of environment '\(environment)' is named \(missing.joined(separator: ", ")); see 'jitd server host list'")
        }
    }

    public func hasMFA(user: String) throws(JITError) -> Bool {
        try read("reading the one-time code secret of \(user)") { c in
            var n = 0
            for try await v in try await c.query("SELECT count(*) FROM mfa WHERE user_name = \(user)", logger: self.logger).decode(Int.self) { n = v }
            return n > 0
        }
    }

    public func enrollMFA(user: String, secret: [UInt8], at now: Date, replacing code: String?) throws(JITError) {
        if try hasMFA(user: user) {
            guard let code else {
                throw JITError(.conflict, "\(user) is already enrolled; to replace the secret give a current code: jit mfa enroll --otp CODE (or ask root to run: jit mfa reset \(user))")
            }
            try consumeOTP(user: user, code: code, at: now)
        }
        let s = Base32.encode(secret), at = Self.ms(now), step = TOTP.step(at: now) - 2
        try transaction("storing the one-time code secret of \(user)") { c in
            try await c.query("""
                INSERT INTO mfa (user_name, secret, created_at, last_step) VALUES (\(user), \(s), \(at), \(step))
                ON CONFLICT (user_name) DO UPDATE SET secret = EXCLUDED.secret, created_at = EXCLUDED.created_at, last_step = EXCLUDED.last_step,
                                                     failures = 0, failed_at = 'epoch'
                """, logger: self.logger)
            try await self.audit(c, "mfa.enrolled", actor: user, user: user)
        }
    }

    public func resetMFA(user: String) throws(JITError) -> Bool {
        try transaction("removing the one-time code secret of \(user)") { c in
            var n = 0
            for try await _ in try await c.query("DELETE FROM mfa WHERE user_name = \(user) RETURNING user_name", logger: self.logger) { n += 1 }
            if n > 0 { try await self.audit(c, "mfa.reset", actor: nil, user: user) }
            return n > 0
        }
    }

    /// As `Store.consumeOTP`, with the secret's row locked, so two replicas never accept the same code.
    public func consumeOTP(user: String, code: String, at now: Date) throws(JITError) {
        let nowMs = Timestamps.millis(now), failedNow = Self.ms(now)
        let outcome: Result<Void, JITError> = try transaction("checking a one-time code of \(user)") { c in
            let q: PostgresQuery = "SELECT secret, last_step, failures, failed_at FROM mfa WHERE user_name = \(user) FOR UPDATE"
            var row: (String, Int64, Int, Date)? = nil
            for try await r in try await c.query(q, logger: self.logger).decode((String, Int64, Int, Date).self) { row = r }
            guard let (stored, last, failures, failedAt) = row else {
                return .failure(JITError(.unauthorized, "\(user) has no one-time code enrolled; run 'jit mfa enroll' first"))
            }
            if failures >= Store.maxOTPFailures && nowMs - Timestamps.millis(failedAt) < Store.otpLockout * 1000 {
                return .failure(JITError(.unauthorized, "too many wrong one-time codes for \(user); wait 5 minutes and try again"))
            }
            guard let secret = Base32.decode(stored) else {
                return .failure(JITError(.internal, "the stored secret of \(user) is unreadable; root can reset it with: jit mfa reset \(user)"))
            }
            if let step = TOTP.verify(code, secret: secret, at: now, after: last) {
                try await c.query("UPDATE mfa SET last_step = \(step), failures = 0 WHERE user_name = \(user)", logger: self.logger)
                return .success(())
            }
            let replay = (last - 1...last).contains { TOTP.code(secret: secret, step: $0) == code }
            try await c.query("UPDATE mfa SET failures = failures + 1, failed_at = \(failedNow) WHERE user_name = \(user)", logger: self.logger)
            return .failure(JITError(.unauthorized, replay
                ? "that one-time code was already used; wait for the next one and try again"
                : "the one-time code is wrong or too old; use the current code from your authenticator app"))
        }
        if case .failure(let e) = outcome { throw e }
    }
}
