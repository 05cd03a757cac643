public import Foundation
import GRDB
import Synchronization
public import JITCore

/// Where requests, approvals, grants and sessions live. SQLite through GRDB, WAL mode, `synchronous=FULL`:
/// every state change is one transaction, committed before the caller hears about it, so a SIGKILL at any
/// moment loses nothing that was answered and leaves nothing half-written.
public final class Store: Sendable {
    public let path: String
    let pool: DatabasePool
    /// Poked after every committed change: the audit shipper waits on it.
    public let appended = Waker()
    /// Counts committed changes made through `write`: the active-grant cache is valid for one value.
    let generation = Atomic<UInt64>(0)
    /// Active grants by user, as of a generation: the check path reads this instead of the database.
    let grantCache = Mutex<(gen: UInt64, byUser: [String: [Grant]])?>(nil)
    /// Poked after every committed change too: the notifier waits on it.
    public let outboxWaker = Waker()

    /// Opens (and migrates) the database. Refuses, with a sentence naming the file, a database that is
    /// read-only, corrupt, or not ours.
    public init(path: String) throws(JITError) {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: dir) {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw JITError(.internal, "cannot create the database folder \(dir): \(error.localizedDescription); set 'database' in the config or --database to a writable path")
            }
        }
        try Store.checkFolder(dir, of: path)
        if FileManager.default.fileExists(atPath: path) && access(path, W_OK) != 0 {
            throw JITError(.internal, "the database \(path) is read-only (\(String(cString: strerror(errno)))); fix its permissions or point 'database' at a writable file")
        }
        try Store.secureFiles(path)
        var config = Configuration()
        config.busyMode = .timeout(5)
        // Reads are short and the check path reads a cache: two readers and small page caches keep the
        // agent's memory low.
        config.maximumReaderCount = 2
        config.label = "jit"
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA cache_size = -1024")
            Store.addAuditFunctions(db)
        }
        do {
            pool = try DatabasePool(path: path, configuration: config)
            try Store.migrator.migrate(pool)
            try pool.read { db in _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM requests") }
        } catch let e as DatabaseError {
            throw JITError(.internal, "cannot use the database \(path): \(Store.explain(e)); restore it from a backup or move it away to start afresh")
        } catch {
            throw JITError(.internal, "cannot use the database \(path): \(error)")
        }
    }

    /// The database folder holds TOTP secrets and the trail: it must be owned by the agent's user (root) and
    /// writable by nobody else, whatever created it and wherever jitd runs (inside the unit or not). A folder
    /// of its own that others may only read or enter is closed to 0700; one owned by someone else, that others
    /// may write, or that others may read and that holds other files, is refused with the command that fixes
    /// it (as the sudoers directory is).
    static func checkFolder(_ dir: String, of path: String) throws(JITError) {
        var st = stat()
        guard lstat(dir, &st) == 0 else {
            throw JITError(.internal, "cannot inspect the database folder \(dir) of \(path): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw JITError(.internal, "the database folder \(dir) of \(path) is not a directory (a symbolic link or a file); point 'database' at a file in a real folder")
        }
        let me = geteuid()
        guard st.st_uid == me || st.st_uid == 0 else {
            throw JITError(.internal, "the database folder \(dir) is owned by uid \(st.st_uid), not root; run: chown root:root \(dir) && chmod 700 \(dir)")
        }
        let mode = st.st_mode & 0o7777
        guard mode & 0o022 == 0 else {
            throw JITError(.internal, "the database folder \(dir) is writable by group or others (mode \(String(mode, radix: 8))); run: chmod 700 \(dir)")
        }
        guard mode & 0o077 != 0 else { return }
        // Closed only when it holds nothing but this database: a shared folder (database: /var/lib/jit.db)
        // is never changed under other programs; that is refused instead.
        let base = (path as NSString).lastPathComponent
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix(base) }
        guard others.isEmpty else {
            throw JITError(.internal, "the database folder \(dir) is readable by others (mode \(String(mode, radix: 8))) and holds other files; give the database a folder of its own, or run: chmod 700 \(dir)")
        }
        if chmod(dir, 0o700) != 0 {
            throw JITError(.internal, "the database folder \(dir) of \(path) is readable by others (mode \(String(mode, radix: 8))) and cannot be closed (\(String(cString: strerror(errno)))); run: chmod 700 \(dir)")
        }
    }

    /// The database, its `-wal` and its `-shm` are 0600 and the agent's own. SQLite gives the `-wal` and `-shm`
    /// files the mode of the database file, so a new database is created 0600 before SQLite opens it.
    static func secureFiles(_ path: String) throws(JITError) {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd >= 0 { close(fd) }
        for f in [path, path + "-wal", path + "-shm"] {
            var st = stat()
            guard lstat(f, &st) == 0 else { continue }
            guard st.st_mode & S_IFMT == S_IFREG else {
                throw JITError(.internal, "\(f) is not a regular file (a symbolic link?); move it away and start again")
            }
            guard st.st_uid == geteuid() || st.st_uid == 0 else {
                throw JITError(.internal, "\(f) is owned by uid \(st.st_uid), not root; run: chown root:root \(f)")
            }
            if st.st_mode & 0o077 != 0 && chmod(f, 0o600) != 0 {
                throw JITError(.internal, "\(f) is readable by others and cannot be made 0600 (\(String(cString: strerror(errno)))); run: chmod 600 \(f)")
            }
        }
    }

    static func explain(_ e: DatabaseError) -> String {
        switch e.resultCode {
        case .SQLITE_NOTADB: return "it is not a SQLite database (or it is corrupt)"
        case .SQLITE_CORRUPT: return "it is corrupt"
        case .SQLITE_READONLY: return "it is read-only"
        case .SQLITE_CANTOPEN: return "it cannot be opened"
        case .SQLITE_FULL: return "the disk is full"
        default: return e.message ?? "\(e.resultCode)"
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE requests (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    user TEXT NOT NULL, uid INTEGER NOT NULL, environment TEXT NOT NULL,
                    scope TEXT NOT NULL CHECK (scope IN ('login','sudo','commands')),
                    commands TEXT NOT NULL DEFAULT '', runas TEXT NOT NULL, duration INTEGER NOT NULL CHECK (duration > 0),
                    reason TEXT NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('pending','approved','denied','cancelled','expired')),
                    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                    decided_at INTEGER, decided_by TEXT, comment TEXT,
                    rule TEXT NOT NULL DEFAULT 'default', rhost TEXT NOT NULL DEFAULT '', service TEXT NOT NULL DEFAULT ''
                );
                CREATE INDEX requests_pending ON requests(state, expires_at);
                CREATE INDEX requests_user ON requests(user, state);
                CREATE TABLE approvals (
                    request_id INTEGER NOT NULL REFERENCES requests(id),
                    approver TEXT NOT NULL, at INTEGER NOT NULL, comment TEXT,
                    PRIMARY KEY (request_id, approver)
                );
                CREATE TABLE grants (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    request_id INTEGER NOT NULL UNIQUE REFERENCES requests(id),
                    user TEXT NOT NULL, uid INTEGER NOT NULL, environment TEXT NOT NULL,
                    scope TEXT NOT NULL, commands TEXT NOT NULL DEFAULT '', runas TEXT NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('active','expired','revoked')),
                    starts_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                    ended_at INTEGER, ended_by TEXT, nopasswd INTEGER NOT NULL DEFAULT 1
                );
                CREATE INDEX grants_active ON grants(state, expires_at);
                CREATE INDEX grants_user ON grants(user, state);
                CREATE TABLE sessions (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    grant_id INTEGER, user TEXT NOT NULL, service TEXT NOT NULL, rhost TEXT NOT NULL,
                    tty TEXT NOT NULL, pid INTEGER NOT NULL, opened_at INTEGER NOT NULL, closed_at INTEGER,
                    warned_at INTEGER, ended_by TEXT, start_ticks INTEGER NOT NULL DEFAULT 0
                );
                CREATE INDEX sessions_open ON sessions(grant_id, closed_at);
                """)
        }
        m.registerMigration("v2", migrate: Store.migrateV2)
        Store.registerAuditMigration(&m)
        Store.registerNotifyMigration(&m)
        // Issue 13, finding 7: whether a grant opens login is stored with it, decided by its rule. Grants from
        // before this keep what they had, except command grants, which no longer open ssh.
        m.registerMigration("i13a-grant-login") { db in
            try db.execute(sql: """
                ALTER TABLE grants ADD COLUMN login INTEGER NOT NULL DEFAULT 1;
                UPDATE grants SET login = 0 WHERE scope = 'commands';
                """)
        }
        Store.registerUsesMigration(&m)
        return m
    }

    // MARK: rows

    static let requestColumns = "id, user, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at, decided_at, decided_by, comment, rule, rhost, service, approved_via, ticket, extends, uses, record"

    public static func scope(_ name: String, _ commands: String) -> Scope {
        switch name {
        case "login": .login
        case "sudo": .sudo
        default: .commands(commands.split(separator: "\n").map(String.init))
        }
    }

    func request(from row: Row, _ db: Database) throws -> AccessRequest {
        let id: Int64 = row["id"]
        let approvals = try String.fetchAll(db, sql: "SELECT approver FROM approvals WHERE request_id = ? ORDER BY at, approver", arguments: [id])
        let extends: Int64? = row["extends"]
        let state = RequestState(rawValue: row["state"]) ?? .expired
        let grantID = try Int64.fetchOne(db, sql: "SELECT id FROM grants WHERE request_id = ?", arguments: [id]) ?? (state == .approved ? extends : nil)
        return AccessRequest(
            id: id, user: row["user"], uid: UInt32(truncatingIfNeeded: row["uid"] as Int64), environment: row["environment"],
            scope: Store.scope(row["scope"], row["commands"]), runAs: row["runas"], duration: row["duration"],
            reason: row["reason"], state: RequestState(rawValue: row["state"]) ?? .expired,
            createdAt: Timestamps.date(millis: row["created_at"]), expiresAt: Timestamps.date(millis: row["expires_at"]),
            decidedAt: (row["decided_at"] as Int64?).map(Timestamps.date(millis:)), decidedBy: row["decided_by"],
            comment: row["comment"], rule: row["rule"], rhost: row["rhost"], service: row["service"],
            approvals: approvals, grantID: grantID, approvedVia: (row["approved_via"] as String?).flatMap(ApprovedVia.init(rawValue:)),
            ticket: row["ticket"], extends: extends, uses: (row["uses"] as Int64?).map { Int($0) },
            record: RecordMode(rawValue: row["record"]) ?? .none)
    }

    static let grantColumns = "id, request_id, user, uid, environment, scope, commands, runas, state, starts_at, expires_at, ended_at, ended_by, nopasswd, login, uses, uses_left, record"

    static func grant(from row: Row) -> Grant {
        Grant(
            id: row["id"], requestID: row["request_id"], user: row["user"], uid: UInt32(truncatingIfNeeded: row["uid"] as Int64),
            environment: row["environment"], scope: scope(row["scope"], row["commands"]), runAs: row["runas"],
            state: GrantState(rawValue: row["state"]) ?? .expired,
            startsAt: Timestamps.date(millis: row["starts_at"]), expiresAt: Timestamps.date(millis: row["expires_at"]),
            endedAt: (row["ended_at"] as Int64?).map(Timestamps.date(millis:)), endedBy: row["ended_by"],
            noPassword: (row["nopasswd"] as Int64) != 0, coversLogin: (row["login"] as Int64) != 0, uses: (row["uses"] as Int64?).map { Int($0) },
            usesLeft: (row["uses_left"] as Int64?).map { Int($0) }, record: RecordMode(rawValue: row["record"]) ?? .none)
    }

    /// Runs a write transaction, turning database failures into an `internal` error that changed nothing.
    func write<T>(_ body: (Database) throws -> T) throws(JITError) -> T {
        do {
            // After the commit (or the rollback): the grant cache is stale from now on.
            defer {
                generation.add(1, ordering: .sequentiallyConsistent)
                appended.wake()
                outboxWaker.wake()
            }
            return try pool.write { db in try body(db) }
        } catch let e as JITError {
            throw e
        } catch let e as TransitionError {
            throw JITError(e)
        } catch let e as DatabaseError {
            throw JITError(.internal, "the database \(path) refused the change (\(Store.explain(e))); nothing was changed")
        } catch {
            throw JITError(.internal, "the change failed (\(error)); nothing was changed")
        }
    }

    func read<T>(_ body: (Database) throws -> T) throws(JITError) -> T {
        do {
            return try pool.read { db in try body(db) }
        } catch let e as JITError {
            throw e
        } catch let e as DatabaseError {
            throw JITError(.internal, "the database \(path) could not be read (\(Store.explain(e)))")
        } catch {
            throw JITError(.internal, "reading the database failed (\(error))")
        }
    }

    // MARK: requests

    /// Stores a new pending request.
    public func insert(_ r: AccessRequest) throws(JITError) -> AccessRequest {
        try write { db in
            try db.execute(
                sql: """
                    INSERT INTO requests (user, uid, environment, scope, commands, runas, duration, reason, state, created_at, expires_at, rule, rhost, service)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    r.user, Int64(r.uid), r.environment, r.scope.name, r.scope.commands.joined(separator: "\n"), r.runAs,
                    r.duration, r.reason, Timestamps.millis(r.createdAt), Timestamps.millis(r.expiresAt), r.rule, r.rhost, r.service,
                ])
            var out = r
            out.id = db.lastInsertedRowID
            out.state = .pending
            return out
        }
    }

    public func request(id: Int64) throws(JITError) -> AccessRequest? {
        try read { db in try self.loadRequest(db, id) }
    }

    func loadRequest(_ db: Database, _ id: Int64) throws -> AccessRequest? {
        guard let row = try Row.fetchOne(db, sql: "SELECT \(Store.requestColumns) FROM requests WHERE id = ?", arguments: [id]) else { return nil }
        return try request(from: row, db)
    }

    /// How many rows one listing reply carries at most (the client pages with `before=`).
    public static let pageSize = 200

    /// Requests, newest first; `user` nil means everyone's; `before` pages backwards. Fetches one row more
    /// than a page so the caller knows whether there is more.
    public func requests(user: String?, pendingOnly: Bool, before: Int64? = nil, limit: Int = Store.pageSize + 1) throws(JITError) -> [AccessRequest] {
        try read { db in
            var sql = "SELECT \(Store.requestColumns) FROM requests WHERE 1"
            var args: [any DatabaseValueConvertible] = []
            if let user { sql += " AND user = ?"; args.append(user) }
            if pendingOnly { sql += " AND state = 'pending'" }
            if let before { sql += " AND id < ?"; args.append(before) }
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { try self.request(from: $0, db) }
        }
    }

    /// The user's newest pending request that would cover `kind`, to join instead of filing another.
    public func pendingRequest(user: String, kind: ServiceKind, opensLogin: (AccessRequest) -> Bool = { _ in true }) throws(JITError) -> AccessRequest? {
        try read { db in
            let sql = kind == .sudo
                ? "SELECT \(Store.requestColumns) FROM requests WHERE user = ? AND state = 'pending' AND scope != 'login' AND extends IS NULL ORDER BY id DESC LIMIT 1"
                : "SELECT \(Store.requestColumns) FROM requests WHERE user = ? AND state = 'pending' AND extends IS NULL ORDER BY id DESC LIMIT 20"
            // A login joins only a request whose grant would open login (its rule lists `login`).
            for row in try Row.fetchAll(db, sql: sql, arguments: [user]) {
                let r = try self.request(from: row, db)
                if kind == .sudo || r.scope == .login || opensLogin(r) { return r }
            }
            return nil
        }
    }

    /// What a decision did.
    public struct Decision: Sendable {
        public var request: AccessRequest
        public var grant: Grant?
        /// False when an approval was counted but more are needed.
        public var decided: Bool
        public init(request: AccessRequest, grant: Grant?, decided: Bool) {
            self.request = request
            self.grant = grant
            self.decided = decided
        }
    }

    /// Ends a pending request as denied, cancelled or expired (the transition is checked in `RequestState`).
    public func end(
        id: Int64, as next: RequestState, by who: String?, comment: String?, at now: Date,
        authorize: (AccessRequest) throws(JITError) -> Void
    ) throws(JITError) -> AccessRequest {
        try write { db in
            guard var r = try self.loadRequest(db, id) else { throw JITError(.notFound, "there is no request \(id); list requests with 'jit list'") }
            try authorize(r)
            r.state = try r.state.transition(to: next)
            r.decidedAt = now
            r.decidedBy = who
            r.comment = comment
            try db.execute(sql: "UPDATE requests SET state = ?, decided_at = ?, decided_by = ?, comment = ? WHERE id = ?",
                arguments: [r.state.rawValue, Timestamps.millis(now), who, comment, id])
            return r
        }
    }

    /// Expires every pending request whose time is up; returns them.
    public func expirePending(now: Date) throws(JITError) -> [AccessRequest] {
        try write { db in
            let rows = try Row.fetchAll(db, sql: "SELECT \(Store.requestColumns) FROM requests WHERE state = 'pending' AND expires_at <= ?", arguments: [Timestamps.millis(now)])
            var out: [AccessRequest] = []
            for row in rows {
                var r = try self.request(from: row, db)
                r.state = try r.state.transition(to: .expired)
                r.decidedAt = now
                try db.execute(sql: "UPDATE requests SET state = 'expired', decided_at = ? WHERE id = ?", arguments: [Timestamps.millis(now), r.id])
                out.append(r)
            }
            return out
        }
    }

    // MARK: grants

    public func grant(id: Int64) throws(JITError) -> Grant? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [id]).map(Store.grant(from:))
        }
    }

    public func grants(user: String?, activeOnly: Bool, before: Int64? = nil, limit: Int = Store.pageSize + 1) throws(JITError) -> [Grant] {
        try read { db in
            var sql = "SELECT \(Store.grantColumns) FROM grants WHERE 1"
            var args: [any DatabaseValueConvertible] = []
            if let user { sql += " AND user = ?"; args.append(user) }
            if activeOnly { sql += " AND state = 'active'" }
            if let before { sql += " AND id < ?"; args.append(before) }
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Store.grant(from:))
        }
    }

    /// Every active grant (the expiry scheduler and the sudoers reconciler work from this).
    public func activeGrants() throws(JITError) -> [Grant] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE state = 'active' ORDER BY expires_at").map(Store.grant(from:))
        }
    }

    /// The check path: the user's active, unexpired grant that covers `kind`, latest expiry first. Served
    /// from a cache of the active grants that every committed change through `write` invalidates (jitd is the
    /// database's only writer), so a revocation or expiry is seen by the very next check.
    public func coveringGrant(user: String, kind: ServiceKind, now: Date) throws(JITError) -> Grant? {
        try coveringGrants(user: user, kind: kind, now: now).max { $0.expiresAt < $1.expiresAt }
    }

    /// Every active, unexpired grant of the user that covers `kind` (from the same cache).
    public func coveringGrants(user: String, kind: ServiceKind, now: Date) throws(JITError) -> [Grant] {
        try cachedActiveGrants(user: user)
            .filter { $0.state == .active && $0.expiresAt > now && $0.covers(kind) }
    }

    func cachedActiveGrants(user: String) throws(JITError) -> [Grant] {
        let gen = generation.load(ordering: .sequentiallyConsistent)
        if let mine = grantCache.withLock({ c -> [Grant]? in
            guard let c, c.gen == gen else { return nil }
            return c.byUser[user] ?? []
        }) {
            return mine
        }
        // Read with the generation taken before the query: a change committed meanwhile bumps it, and the
        // next check reloads.
        var byUser: [String: [Grant]] = [:]
        for g in try activeGrants() { byUser[g.user, default: []].append(g) }
        grantCache.withLock { $0 = (gen, byUser) }
        return byUser[user] ?? []
    }

    /// Ends an active grant as expired or revoked.
    public func endGrant(id: Int64, as next: GrantState, by who: String?, at now: Date) throws(JITError) -> Grant {
        try write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE id = ?", arguments: [id]) else {
                throw JITError(.notFound, "there is no grant \(id); list grants with 'jit grants'")
            }
            var g = Store.grant(from: row)
            g.state = try g.state.transition(to: next)
            g.endedAt = now
            g.endedBy = who
            try db.execute(sql: "UPDATE grants SET state = ?, ended_at = ?, ended_by = ? WHERE id = ?",
                arguments: [g.state.rawValue, Timestamps.millis(now), who, id])
            return g
        }
    }

    /// Active grants whose time is up.
    public func dueGrants(now: Date) throws(JITError) -> [Grant] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT \(Store.grantColumns) FROM grants WHERE state = 'active' AND expires_at <= ?", arguments: [Timestamps.millis(now)]).map(Store.grant(from:))
        }
    }

    /// The next moment something is due: a pending request's or an active grant's expiry.
    public func nextDeadline() throws(JITError) -> Date? {
        try read { db in
            let a = try Int64.fetchOne(db, sql: "SELECT min(expires_at) FROM requests WHERE state = 'pending'")
            let b = try Int64.fetchOne(db, sql: "SELECT min(expires_at) FROM grants WHERE state = 'active'")
            return [a, b].compactMap { $0 }.min().map(Timestamps.date(millis:))
        }
    }

    public func counts() throws(JITError) -> (pending: Int, active: Int) {
        try read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM requests WHERE state = 'pending'") ?? 0,
             try Int.fetchOne(db, sql: "SELECT count(*) FROM grants WHERE state = 'active'") ?? 0)
        }
    }

    // MARK: sessions

    public struct Session: Sendable, Equatable {
        public var id: Int64
        public var grantID: Int64?
        public var user: String
        public var service: String
        public var rhost: String
        public var tty: String
        public var pid: Int32
        public var openedAt: Date
        public var closedAt: Date?
        public var warnedAt: Date?
        /// The process's start time in clock ticks since boot (/proc/PID/stat field 22): a reused PID has another.
        public var startTicks: Int64
    }

    static func session(from row: Row) -> Session {
        Session(
            id: row["id"], grantID: row["grant_id"], user: row["user"], service: row["service"], rhost: row["rhost"], tty: row["tty"],
            pid: Int32(truncatingIfNeeded: row["pid"] as Int64), openedAt: Timestamps.date(millis: row["opened_at"]),
            closedAt: (row["closed_at"] as Int64?).map(Timestamps.date(millis:)), warnedAt: (row["warned_at"] as Int64?).map(Timestamps.date(millis:)),
            startTicks: row["start_ticks"])
    }

    public func openSession(grantID: Int64?, user: String, service: String, rhost: String, tty: String, pid: Int32, startTicks: Int64, at now: Date) throws(JITError) -> Int64 {
        try write { db in
            try db.execute(sql: "INSERT INTO sessions (grant_id, user, service, rhost, tty, pid, opened_at, start_ticks) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [grantID, user, service, rhost, tty, Int64(pid), Timestamps.millis(now), startTicks])
            return db.lastInsertedRowID
        }
    }

    /// Closes a session by id, or the newest open one matching user, service and pid. Returns whether one was found.
    public func closeSession(id: Int64?, user: String?, service: String?, pid: Int32?, at now: Date, by: String? = nil) throws(JITError) -> Bool {
        try write { db in
            if let id {
                try db.execute(sql: "UPDATE sessions SET closed_at = ?, ended_by = ? WHERE id = ? AND closed_at IS NULL", arguments: [Timestamps.millis(now), by, id])
            } else {
                try db.execute(sql: """
                    UPDATE sessions SET closed_at = ?, ended_by = ? WHERE id = (SELECT id FROM sessions WHERE user = ? AND service = ? AND pid = ? AND closed_at IS NULL ORDER BY id DESC LIMIT 1)
                    """, arguments: [Timestamps.millis(now), by, user, service, pid.map { Int64($0) }])
            }
            return db.changesCount > 0
        }
    }

    public func openSessions(grantID: Int64) throws(JITError) -> [Session] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sessions WHERE grant_id = ? AND closed_at IS NULL", arguments: [grantID]).map(Store.session(from:))
        }
    }

    /// Open sessions under any grant (for expiry warnings).
    public func openGrantSessions() throws(JITError) -> [Session] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sessions WHERE grant_id IS NOT NULL AND closed_at IS NULL").map(Store.session(from:))
        }
    }

    /// Moves a session to another grant (when the one it ran under ends but another still covers it).
    public func rebindSession(_ id: Int64, to grantID: Int64) throws(JITError) {
        try write { db in try db.execute(sql: "UPDATE sessions SET grant_id = ?, warned_at = NULL WHERE id = ?", arguments: [grantID, id]) }
    }

    public func markWarned(sessionID: Int64, at now: Date) throws(JITError) {
        try write { db in try db.execute(sql: "UPDATE sessions SET warned_at = ? WHERE id = ?", arguments: [Timestamps.millis(now), sessionID]) }
    }
}
