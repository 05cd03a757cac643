public import Foundation
public import JITAgent
public import JITCore
public import Logging
import JITFleet
import PostgresNIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The control plane's notifications (`notify:` in server.yaml, the keys of jit.yaml's `notify:`), durable
/// and sent once however many replicas run (migration 6, docs/FLEET.md "Notifications"):
/// - a trigger on `fleet_audit` queues every notifiable event (`NotifyEvent.auditKinds`) in `notify_queue`
///   in the transaction of the decision that wrote it; a trigger on `host_events` queues a host's
///   `breakglass.bypass` in the transaction that stores it (stored once per `(host, seq)`, so queued once);
/// - a replica takes queued events `FOR UPDATE SKIP LOCKED`, renders one `notify_outbox` row per channel with
///   the agent's renderers (the request's page link in each) and deletes the queued event, in one transaction;
/// - a replica takes a due row by leasing it (`leased_until`, taken `FOR UPDATE SKIP LOCKED`; committed
///   before it sends), sends it with the agent's transports, and marks it sent, retried with the agent's
///   back-off (`NotifyBackoff.delay`) or failed (`give_up_after`, `max_attempts`, as on a host). A replica
///   killed mid-send leaves its row leased: another takes it when the lease has passed.
public final class ServerNotifications: Sendable {
    let store: PostgresStore
    let settings: NotifySettings
    /// The server's policy: who approves which rule (the approver groups of a message).
    let policy: @Sendable () -> Config
    let publicURL: String
    /// The public URL's host: the `Message-ID` domain, the SMTP greeting and the webhook id's middle, the
    /// same on every replica, so a message re-sent by another replica carries the same ids.
    let hostname: String
    let transport: any NotifyTransport
    let members: @Sendable (String) -> [String]
    let clock: @Sendable () -> Date
    let logger: Logger
    /// Who holds a lease (this replica): host name, pid and a random part.
    let worker: String
    /// Channels whose delivery thread runs.
    let busy = Mutex<Set<String>>([])
    let stopped = Atomic<Bool>(false)
    let wake = DispatchSemaphore(value: 0)
    let running = Mutex<Void>(())

    /// How often a replica looks for work (another replica's decisions reach it only through the database).
    static let poll = 1.0
    /// Queued events one transaction expands.
    static let batch = 100

    public init(store: PostgresStore, settings: NotifySettings, policy: @escaping @Sendable () -> Config, publicURL: String,
                transport: (any NotifyTransport)? = nil, members: (@Sendable (String) -> [String])? = nil,
                clock: (@Sendable () -> Date)? = nil, logger: Logger) {
        self.store = store
        self.settings = settings
        self.policy = policy
        self.publicURL = publicURL
        let host = URL(string: publicURL)?.host ?? ""
        self.hostname = !host.isEmpty && host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:".contains($0)) }) ? host : "jit-server"
        self.transport = transport ?? LiveTransport(hostname: self.hostname)
        self.members = members ?? Notifications.groupMembers
        self.clock = clock ?? { Date() }
        self.logger = logger
        var h = [UInt8](repeating: 0, count: 256)
        gethostname(&h, 255)
        worker = "\(String(decoding: h.prefix { $0 != 0 }, as: UTF8.self)):\(getpid()):\(UUID().uuidString.prefix(8))"
    }

    // MARK: running

    /// The worker thread: a pass every second (sooner when woken), until `stop()`.
    public func start() {
        let t = Thread { [self] in
            while !stopped.load(ordering: .sequentiallyConsistent) {
                runOnce(wait: false)
                _ = wake.wait(timeout: .now() + Self.poll)
            }
        }
        t.stackSize = 1 << 20
        t.start()
        let names = settings.channels.map { "'\($0.name)' (\($0.kind.rawValue))" }
        logger.info("notify: \(names.isEmpty ? "no channels (notify: in the server config): queued events are dropped" : "channels \(names.joined(separator: ", "))"); page links \(publicURL)/web/requests/ID")
    }

    public func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        wake.signal()
        transport.shutdown()
    }

    /// One pass: notice grants about to end, expand queued events, send what is due (one thread per channel,
    /// so a slow channel never holds another's messages). `wait`: until this pass's sends are done (tests).
    public func runOnce(wait: Bool = true) {
        running.withLock { _ in
            do {
                try noticeExpiring()
                while try expand() == Self.batch {}
            } catch {
                logger.error("notify: \(Self.say(error))")
            }
            let group = DispatchGroup()
            let channels: [String]
            do { channels = try dueChannels() } catch {
                logger.error("notify: \(Self.say(error))")
                return
            }
            for name in channels {
                guard busy.withLock({ $0.insert(name).inserted }) else { continue }
                group.enter()
                let t = Thread { [self] in
                    defer {
                        busy.withLock { _ = $0.remove(name) }
                        group.leave()
                    }
                    while !stopped.load(ordering: .sequentiallyConsistent) {
                        do {
                            guard let row = try take(channel: name) else { return }
                            deliver(row)
                        } catch {
                            logger.error("notify: channel '\(name)': \(Self.say(error))")
                            return
                        }
                    }
                }
                t.stackSize = 512 * 1024
                t.start()
            }
            if wait { group.wait() }
        }
    }

    // MARK: expiring

    /// Grants ending within `expiry_notice` get a `grant.expiring` event once per end time (an extended grant
    /// is told again): `notify_expiring`'s key makes it once across replicas.
    func noticeExpiring() throws(JITError) {
        guard settings.wantsExpiring, settings.expiryNotice > 0 else { return }
        let now = PostgresStore.ms(clock()), until = PostgresStore.ms(clock().addingTimeInterval(Double(settings.expiryNotice)))
        try store.transaction("noticing grants about to end") { c in
            _ = try await c.query("""
                WITH due AS (
                    INSERT INTO notify_expiring (grant_id, expires_at)
                    SELECT id, expires_at FROM grants WHERE state = 'active' AND expires_at > \(now) AND expires_at <= \(until)
                    ON CONFLICT DO NOTHING RETURNING grant_id, expires_at)
                INSERT INTO fleet_audit (event, actor, data)
                SELECT 'grant.expiring', 'jitd server',
                       jsonb_build_object('user', g.user_name, 'request', g.request_id::text, 'grant', g.id::text,
                                          'expires_at', to_char(due.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                FROM due JOIN grants g ON g.id = due.grant_id
                """, logger: self.logger)
        }
    }

    // MARK: expanding

    struct Queued: Sendable {
        var id: Int64
        var auditID: Int64?
        var host: String?
        var hostSeq: Int64?
        var kind: String
        var at: Date
    }

    /// Expands up to `batch` queued events into messages; returns how many it took.
    @discardableResult
    func expand() throws(JITError) -> Int {
        let now = PostgresStore.ms(clock())
        let cfg = policy()
        return try store.transaction("expanding queued notifications") { c in
            var queued: [Queued] = []
            let q: PostgresQuery = "SELECT id, audit_id, host, host_seq, kind, at FROM notify_queue ORDER BY id LIMIT \(Self.batch) FOR UPDATE SKIP LOCKED"
            for try await (id, a, h, s, k, at) in try await c.query(q, logger: self.logger).decode((Int64, Int64?, String?, Int64?, String, Date).self) {
                queued.append(Queued(id: id, auditID: a, host: h, hostSeq: s, kind: k, at: at))
            }
            for e in queued {
                if let f = try await self.facts(e, c, cfg) {
                    let messages = Notifications.render(f, channels: self.settings.channels, messageID: "jit-\(e.id)", hostname: self.hostname,
                                                        members: self.members) { self.logger.error("notify: \($0)") }
                    let rid = f.request?.id
                    for m in messages {
                        try await c.query("""
                            INSERT INTO notify_outbox (queue_id, channel, kind, request_id, payload, recipients, state, created_at, next_at)
                            VALUES (\(e.id), \(m.channel), \(m.kind), \(rid), \(m.payload), \(m.recipients), 'pending', \(e.at), \(now))
                            ON CONFLICT (queue_id, channel) DO NOTHING
                            """, logger: self.logger)
                    }
                }
                try await c.query("DELETE FROM notify_queue WHERE id = \(e.id)", logger: self.logger)
            }
            return queued.count
        }
    }

    /// What a message says about one queued event, or nil when nobody is to be told (as on a host: a request a
    /// rule or break-glass approved at once is told as the break-glass, or not at all).
    func facts(_ e: Queued, _ c: PostgresConnection, _ cfg: Config) async throws -> NotifyFacts? {
        guard let ev = NotifyEvent.of(auditKind: e.kind) else { return nil }
        if let aid = e.auditID { return try await auditFacts(aid, ev, e, c, cfg) }
        guard let host = e.host, let seq = e.hostSeq, ev == .breakGlass else { return nil }
        return try await hostFacts(host, seq, e, c, cfg)
    }

    func auditFacts(_ aid: Int64, _ ev: NotifyEvent, _ e: Queued, _ c: PostgresConnection, _ cfg: Config) async throws -> NotifyFacts? {
        var row: (String, String, Date)? = nil
        for try await r in try await c.query("SELECT actor, data::text, at FROM fleet_audit WHERE id = \(aid)", logger: logger).decode((String, String, Date).self) {
            row = r
        }
        guard let (actor, dataText, at) = row else { return nil }
        let data = (try? JSONDecoder().decode([String: String].self, from: Data(dataText.utf8))) ?? [:]
        var r: AccessRequest? = nil
        if let rid = data["request"].flatMap({ Int64($0) }) { r = try await store.loadRequest(c, rid, lock: false) }
        if let via = r?.approvedVia, via == .auto || via == .breakGlass, e.kind == "request.filed" || e.kind == "request.approved" { return nil }
        let rule = r.flatMap { cfg.policy.rule(named: $0.rule) }
        var groups: [String] = []
        var tier: Int? = nil
        switch ev {
        case .request: groups = rule?.tiers.first?.groups ?? []
        case .escalation:
            tier = data["tiers"].flatMap { Int($0) }
            if let t = tier, let rule, t >= 1, t <= rule.tiers.count { groups = rule.tiers[t - 1].groups }
        case .breakGlass: groups = Self.allApprovers(cfg)
        default: break
        }
        var grantID = data["grant"].flatMap { Int64($0) } ?? r?.grantID
        var expires: Date? = nil
        if ev == .expiring || ev == .decision || ev == .breakGlass, let gid = grantID, let g = try await store.loadGrant(c, gid, lock: false) {
            expires = g.expiresAt
            grantID = g.id
        }
        if ev == .expiring, let s = data["expires_at"], let d = Timestamps.parse(s) { expires = d }
        if ev == .decision && e.kind != "request.approved" { grantID = nil }
        let user = data["user"] ?? r?.user ?? ""
        return NotifyFacts(eventID: e.id, event: ev, kind: e.kind, at: at, host: r.map(Self.where_) ?? "control plane",
                           environment: r?.environment ?? "fleet", actor: actor, user: user, request: r, grantID: grantID, grantExpiresAt: expires,
                           approverGroups: groups, tier: tier, pageURL: r.flatMap { WebRoutes.requestURL(publicURL: publicURL, id: $0.id) })
    }

    /// A fleet host's own break-glass (its trail, `POST /v1/events`). The host and its environment are the
    /// database's (the host's certificate); what the host says (user, reason, scope, its request id) is its
    /// claim, shown as such and escaped by each channel. The request is the host's, so there is no page.
    func hostFacts(_ host: String, _ seq: Int64, _ e: Queued, _ c: PostgresConnection, _ cfg: Config) async throws -> NotifyFacts? {
        var row: (String, String, String, Date, String)? = nil
        let q: PostgresQuery = """
            SELECT coalesce(h.environment, ''), ev.actor, ev.user_name, ev.at, ev.data::text FROM host_events ev LEFT JOIN hosts h ON h.name = ev.host
            WHERE ev.host = \(host) AND ev.seq = \(seq)
            """
        for try await r in try await c.query(q, logger: logger).decode((String, String, String, Date, String).self) { row = r }
        guard let (env, actor, user, at, dataText) = row, !env.isEmpty else { return nil }
        let data = (try? JSONDecoder().decode([String: String].self, from: Data(dataText.utf8))) ?? [:]
        var details: [(String, String)] = [("host_request", data["request_id"].flatMap { Int64($0) }.map { String($0) } ?? "?")]
        if let s = data["scope"] { details.append(("what", s)) }
        if let w = data["reason"] { details.append(("why", w)) }
        let who = Names.isValid(user) ? user : "(an invalid user name)"
        return NotifyFacts(eventID: e.id, event: .breakGlass, kind: e.kind, at: at, host: host, environment: env,
                           actor: Names.isValid(actor) ? actor : who, user: who, approverGroups: Self.allApprovers(cfg), details: details)
    }

    static func say(_ e: any Error) -> String { (e as? JITError)?.message ?? (e as? FleetError)?.message ?? "\(e)" }

    static func allApprovers(_ cfg: Config) -> [String] { Array(Set(cfg.policy.effectiveRules.flatMap(\.allApproverGroups))).sorted() }

    /// Where a request applies, for the headline: the host that filed it, else the hosts it names.
    static func where_(_ r: AccessRequest) -> String {
        if let h = r.filedByHost { return h }
        return r.hosts.isEmpty ? "any host" : r.hosts.joined(separator: ", ")
    }

    // MARK: delivering

    static let outboxColumns = "id, queue_id, channel, kind, request_id, payload, recipients, attempts, created_at, next_at, last_error"

    /// One taken row: the message, and the request it is about (for the log line).
    struct Taken: Sendable {
        var row: Store.OutboxRow
        var requestID: Int64?
    }

    func dueChannels() throws(JITError) -> [String] {
        let now = PostgresStore.ms(clock())
        return try store.read("reading the notification outbox") { c in
            var out: [String] = []
            let q: PostgresQuery = """
                SELECT DISTINCT channel FROM notify_outbox
                WHERE state = 'pending' AND next_at <= \(now) AND (leased_until IS NULL OR leased_until <= \(now)) ORDER BY channel
                """
            for try await n in try await c.query(q, logger: self.logger).decode(String.self) { out.append(n) }
            return out
        }
    }

    /// Takes the oldest due row of a channel: leased to this replica, committed before anything is sent.
    func take(channel: String) throws(JITError) -> Taken? {
        let now = PostgresStore.ms(clock()), me = worker, t = max(1, settings.timeout)
        return try store.transaction("taking a notification of channel '\(channel)'") { c in
            let q: PostgresQuery = """
                UPDATE notify_outbox SET leased_by = \(me),
                    leased_until = \(now)::timestamptz + make_interval(secs => greatest(120, (16 + cardinality(recipients)) * \(t)))
                WHERE id = (SELECT id FROM notify_outbox
                            WHERE state = 'pending' AND channel = \(channel) AND next_at <= \(now) AND (leased_until IS NULL OR leased_until <= \(now))
                            ORDER BY next_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING \(unescaped: Self.outboxColumns)
                """
            var out: Taken? = nil
            for try await (id, qid, ch, kind, rid, payload, to, attempts, created, next, err) in try await c.query(q, logger: self.logger)
                .decode((Int64, Int64, String, String, Int64?, String, [String], Int, Date, Date, String?).self)
            {
                out = Taken(row: Store.OutboxRow(id: id, auditID: qid, channel: ch, kind: kind, payload: payload, recipients: to, attempts: attempts,
                                                 createdAt: created, nextAt: next, lastError: err), requestID: rid)
            }
            return out
        }
    }

    func deliver(_ t: Taken) {
        let row = t.row
        let attempts = row.attempts + 1
        let channel = settings.channel(named: row.channel)
        let result: DeliveryResult = channel.map { transport.deliver(row, via: $0, timeout: settings.timeout) } ?? .failed("the channel '\(row.channel)' is no longer in the server config's notify:")
        let now = PostgresStore.ms(clock())
        let about = t.requestID.map { "request \($0)" } ?? "event \(row.auditID)"
        do {
            switch result {
            case .sent:
                try markSent(row.id, attempts: attempts, at: now)
                logger.info("notify: \(row.kind) (\(about)) sent to '\(row.channel)'\(attempts > 1 ? " after \(attempts) attempts" : "")")
            case .failed(let why):
                switch NotifyBackoff.next(attempts: attempts, age: now.timeIntervalSince(row.createdAt), channelKnown: channel != nil, settings) {
                case .giveUp:
                    try markFailed(t, attempts: attempts, error: why, at: now)
                    logger.error("notify: gave up on \(row.kind) (\(about)) to '\(row.channel)' after \(attempts) attempts: \(why)")
                case .retry(let wait):
                    try markRetry(row.id, attempts: attempts, next: now.addingTimeInterval(Double(wait)), error: why)
                    logger.warning("notify: \(row.kind) (\(about)) to '\(row.channel)' failed (attempt \(attempts)): \(why); retrying in \(wait) s")
                }
            }
        } catch {
            logger.error("notify: \(row.kind) (\(about)) to '\(row.channel)': \(Self.say(error))")
        }
    }

    /// Sent: never sent again (whoever holds the lease now: the receiver has it).
    func markSent(_ id: Int64, attempts: Int, at now: Date) throws(JITError) {
        try store.transaction("marking notification \(id) sent") { c in
            _ = try await c.query("""
                UPDATE notify_outbox SET state = 'sent', attempts = \(attempts), sent_at = \(now), last_error = NULL, leased_until = NULL
                WHERE id = \(id) AND state = 'pending'
                """, logger: self.logger)
        }
    }

    func markRetry(_ id: Int64, attempts: Int, next: Date, error: String) throws(JITError) {
        let me = worker
        try store.transaction("scheduling notification \(id) again") { c in
            _ = try await c.query("""
                UPDATE notify_outbox SET attempts = \(attempts), next_at = \(next), last_error = \(error), leased_until = NULL
                WHERE id = \(id) AND state = 'pending' AND leased_by = \(me)
                """, logger: self.logger)
        }
    }

    /// Gives up on a message, and records `notify.failed` in the central trail in the same transaction.
    func markFailed(_ t: Taken, attempts: Int, error: String, at now: Date) throws(JITError) {
        let row = t.row
        try store.transaction("marking notification \(row.id) failed") { c in
            var changed = false
            for try await _ in try await c.query("""
                UPDATE notify_outbox SET state = 'failed', attempts = \(attempts), last_error = \(error), leased_until = NULL
                WHERE id = \(row.id) AND state = 'pending' RETURNING id
                """, logger: self.logger) { changed = true }
            guard changed else { return }
            var data = ["channel": row.channel, "event": row.kind, "outbox_id": String(row.id), "attempts": String(attempts), "why": error]
            if let r = t.requestID { data["request"] = String(r) }
            try await self.store.db.audit("notify.failed", actor: "jitd server", data: data, on: c)
        }
    }

    // MARK: migration 6

    /// Migration 6 of `FleetDatabase.migrations`: the queue, the outbox, and the grant ends already told.
    static var schema: [String] {
        let kinds = NotifyEvent.allAuditKinds.map { "'\($0)'" }.joined(separator: ", ")
        return [
            """
            CREATE TABLE notify_queue (
                id bigserial PRIMARY KEY,
                audit_id bigint UNIQUE,
                host text,
                host_seq bigint,
                kind text NOT NULL,
                at timestamptz NOT NULL,
                UNIQUE (host, host_seq),
                CHECK ((audit_id IS NULL) <> (host IS NULL AND host_seq IS NULL)))
            """,
            """
            CREATE FUNCTION jit_notify_from_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO notify_queue (audit_id, kind, at) VALUES (NEW.id, NEW.event, NEW.at);
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER fleet_audit_notify AFTER INSERT ON fleet_audit FOR EACH ROW WHEN (NEW.event IN (\(kinds))) EXECUTE FUNCTION jit_notify_from_audit()",
            """
            CREATE FUNCTION jit_notify_from_host() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO notify_queue (host, host_seq, kind, at) VALUES (NEW.host, NEW.seq, NEW.kind, NEW.at);
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER host_events_notify AFTER INSERT ON host_events FOR EACH ROW WHEN (NEW.kind = 'breakglass.bypass') EXECUTE FUNCTION jit_notify_from_host()",
            """
            CREATE TABLE notify_outbox (
                id bigserial PRIMARY KEY,
                queue_id bigint NOT NULL,
                channel text NOT NULL,
                kind text NOT NULL,
                request_id bigint,
                payload text NOT NULL,
                recipients text[] NOT NULL DEFAULT '{}',
                state text NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
                attempts integer NOT NULL DEFAULT 0,
                created_at timestamptz NOT NULL,
                next_at timestamptz NOT NULL,
                leased_until timestamptz,
                leased_by text,
                sent_at timestamptz,
                last_error text,
                UNIQUE (queue_id, channel))
            """,
            "CREATE INDEX notify_outbox_due ON notify_outbox (channel, next_at) WHERE state = 'pending'",
            """
            CREATE TABLE notify_expiring (
                grant_id bigint NOT NULL,
                expires_at timestamptz NOT NULL,
                noticed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (grant_id, expires_at))
            """,
        ]
    }
}
