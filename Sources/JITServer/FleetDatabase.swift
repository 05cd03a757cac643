public import Foundation
import JITCore
public import JITFleet
public import Logging
public import PostgresNIO

/// Every SQL statement of the control plane, parameterised (postgres-nio's `\(bind)` interpolation).
///
/// Schema migrations are versioned and run at start inside one transaction that first takes a transaction
/// advisory lock, so that several replicas starting at once against an empty database apply each exactly once.
public struct FleetDatabase: Sendable {
    public let client: PostgresClient
    let logger: Logger
    /// Hosts and certificates this replica has checked (see `HostAuthCache`).
    let hostCache = HostAuthCache()
    /// Hosts seen and not yet written to `last_seen` (see `touch`).
    let seenQueue = SeenQueue()
    let where_: String

    /// An arbitrary constant: the key of the advisory lock that serialises migrations ("jitmigr").
    static let migrationLock: Int64 = 0x6a69_746d_6967_72

    public init(config: ServerConfig, logger: Logger) throws(FleetError) {
        let d = config.database
        let password = try config.databasePassword()
        var pc: PostgresClient.Configuration
        if let dir = d.socketDir {
            pc = .init(unixSocketPath: dir + "/.s.PGSQL.\(d.port)", username: d.user, password: password, database: d.name)
            where_ = "\(dir) (port \(d.port))"
        } else {
            pc = .init(host: d.host, port: d.port, username: d.user, password: password, database: d.name, tls: .disable)
            where_ = "\(d.host):\(d.port)"
        }
        pc.options.connectTimeout = .seconds(10)
        self.client = PostgresClient(configuration: pc, backgroundLogger: logger)
        self.logger = logger
        self.describe = "database '\(d.name)' as '\(d.user)' at \(where_)"
    }

    /// Names the database in messages.
    public let describe: String

    /// Turns a PostgreSQL failure into a sentence that names the database.
    func failure(_ error: any Error, doing what: String) -> FleetError {
        if let e = error as? FleetError { return e }
        if let p = error as? PSQLError {
            if let m = p.serverInfo?[.message] {
                return FleetError("database", "PostgreSQL refused \(what) (\(describe)): \(m)")
            }
            return FleetError("database", "cannot reach PostgreSQL for \(what) (\(describe)): \(p.code)")
        }
        return FleetError("database", "PostgreSQL failed during \(what) (\(describe)): \(String(reflecting: error))")
    }

    /// Runs the client's connection pool on an executor of its own, so that threads blocked in
    /// `PostgresStore`'s synchronous calls (which wait for this pool) can never starve it.
    public func runOffPool() async {
        await withTaskExecutorPreference(QueueExecutor("jit.postgres.pool")) { await client.run() }
    }

    /// Starts the client's connection pool in a task that begins on an executor of its own (not merely moves
    /// there: a task that must first get a cooperative thread never starts while all of them are blocked).
    public func startOffPool() -> Task<Void, Never> {
        Task(executorPreference: QueueExecutor("jit.postgres.pool")) { await self.client.run() }
    }

    /// Runs `body` with a client that runs for exactly that long (for one-shot commands).
    public static func with<T: Sendable>(config: ServerConfig, logger: Logger, _ body: @Sendable (FleetDatabase) async throws -> T) async throws -> T {
        let db = try FleetDatabase(config: config, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { g in
            g.addTask { await db.runOffPool() }
            defer { g.cancelAll() }
            return try await body(db)
        }
    }

    // MARK: migrations

    /// Version → statements. Append new versions; never edit an applied one.
    static let migrations: [(Int, [String])] = [
        (1, [
            """
            CREATE TABLE fleet_ca (
                id integer PRIMARY KEY CHECK (id = 1),
                fingerprint text NOT NULL,
                certificate text NOT NULL,
                not_after timestamptz NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())
            """,
            """
            CREATE TABLE join_tokens (
                id text PRIMARY KEY,
                secret_hash text NOT NULL,
                environment text NOT NULL,
                labels text[] NOT NULL DEFAULT '{}',
                host_name text,
                created_by text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL,
                used_at timestamptz,
                used_by_host text,
                revoked_at timestamptz)
            """,
            """
            CREATE TABLE hosts (
                name text PRIMARY KEY,
                environment text NOT NULL,
                labels text[] NOT NULL DEFAULT '{}',
                cert_serial text NOT NULL,
                previous_serial text,
                not_after timestamptz NOT NULL,
                enrolled_at timestamptz NOT NULL DEFAULT now(),
                token_id text REFERENCES join_tokens(id),
                revoked_at timestamptz,
                last_seen timestamptz)
            """,
            """
            CREATE TABLE fleet_audit (
                id bigserial PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT now(),
                event text NOT NULL,
                actor text NOT NULL,
                host text,
                token_id text,
                data jsonb NOT NULL DEFAULT '{}')
            """,
            "CREATE INDEX fleet_audit_at ON fleet_audit (at)",
        ]),
        (2, PostgresStore.schema),
        (3, streamMigration),
        (4, peopleSchema),
        // 5 — the web page's one-time links and sessions (issue #15; versions are taken by part, see docs/FLEET.md).
        (5, PostgresWebSessions.schema),
        // 6 — notifications sent by the control plane (the queue, the outbox, grant ends told).
        (6, ServerNotifications.schema),
        // 7 — the central trail read a page at a time through indexes (`jit audit` against the control plane).
        (7, CentralAudit.schema),
    ]

    /// Applies the migrations this database lacks; returns the versions applied now.
    @discardableResult
    public func migrate() async throws(FleetError) -> [Int] {
        let logger = self.logger
        do {
            return try await client.withConnection { conn in
                try await conn.withTransaction(logger: logger) { c in
                    try await c.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
                    try await c.query(
                        "CREATE TABLE IF NOT EXISTS jit_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                        logger: logger)
                    var have = Set<Int>()
                    for try await v in try await c.query("SELECT version FROM jit_schema_migrations", logger: logger).decode(Int.self) { have.insert(v) }
                    var applied: [Int] = []
                    for (version, statements) in Self.migrations where !have.contains(version) {
                        for s in statements { try await c.query(PostgresQuery(unsafeSQL: s), logger: logger) }
                        try await c.query("INSERT INTO jit_schema_migrations (version) VALUES (\(version))", logger: logger)
                        applied.append(version)
                    }
                    return applied
                }
            }
        } catch {
            throw failure(error, doing: "the schema migrations")
        }
    }

    /// Records the fleet CA on first start; refuses a database that belongs to another CA.
    public func bind(ca: FleetCA) async throws(FleetError) {
        let fp = Hex.encode(ca.fingerprint), pem = ca.pem, na = ca.certificate.notValidAfter
        let stored: String?
        do {
            try await client.query(
                "INSERT INTO fleet_ca (id, fingerprint, certificate, not_after) VALUES (1, \(fp), \(pem), \(na)) ON CONFLICT (id) DO NOTHING",
                logger: logger)
            var got: String? = nil
            for try await f in try await client.query("SELECT fingerprint FROM fleet_ca WHERE id = 1", logger: logger).decode(String.self) { got = f }
            stored = got
        } catch {
            throw failure(error, doing: "recording the fleet CA")
        }
        guard stored == fp else {
            throw FleetError("ca_mismatch", "the \(describe) belongs to fleet CA sha256:\(stored ?? "?"), but this server's CA is sha256:\(fp): point ca.certificate and ca.key at that fleet's CA, or use another database")
        }
    }

    // MARK: audit

    /// One event of the central trail. `data` is a flat map of strings (stored as jsonb).
    public func audit(_ event: String, actor: String, host: String? = nil, token: String? = nil, data: [String: String] = [:], on conn: PostgresConnection? = nil) async throws(FleetError) {
        let json = String(decoding: (try? JSONEncoder().encode(data)) ?? Data("{}".utf8), as: UTF8.self)
        let q: PostgresQuery = "INSERT INTO fleet_audit (event, actor, host, token_id, data) VALUES (\(event), \(actor), \(host), \(token), \(json)::jsonb)"
        do {
            if let conn { try await conn.query(q, logger: logger) } else { try await client.query(q, logger: logger) }
        } catch {
            throw failure(error, doing: "recording '\(event)' in the audit trail")
        }
    }

    public struct AuditEvent: Sendable, Codable {
        public var id: Int64
        public var at: Date
        public var event: String
        public var actor: String
        public var host: String?
        public var token: String?
        public var data: String
    }

    public func auditEvents(limit: Int = 1000) async throws(FleetError) -> [AuditEvent] {
        do {
            var out: [AuditEvent] = []
            let rows = try await client.query("SELECT id, at, event, actor, host, token_id, data::text FROM fleet_audit ORDER BY id DESC LIMIT \(limit)", logger: logger)
            for try await (id, at, ev, actor, host, tok, data) in rows.decode((Int64, Date, String, String, String?, String?, String).self) {
                out.append(AuditEvent(id: id, at: at, event: ev, actor: actor, host: host, token: tok, data: data))
            }
            return out.reversed()
        } catch {
            throw failure(error, doing: "reading the audit trail")
        }
    }
}
