import Foundation
import JITCore
import JITFleet
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// The long-polls one replica holds, and the per-environment caches that answer them.
///
/// A notification on `jit_changes` (payload: an environment) makes the hub read that environment's new rows
/// once, append them to its cache and answer, from memory, every waiting host the rows concern: one query per
/// woken environment, not one per host. The notification carries nothing the hub trusts; it only says "read
/// again". While the listener is away the hub reads every environment it waits on each second instead (and
/// every 15 s even with it), and when it comes back it reads them all and re-checks the waiting hosts
/// (revocations it may have missed).
actor StreamHub {
    enum Wake: Sendable {
        case answer(StreamAnswer)
        /// Wait over (timeout, replaced by the host's newer stream, shutdown): answer "nothing new".
        case done
        /// The cache no longer covers the waiter's cursor: read PostgreSQL again.
        case stale
        /// The host's row changed (revoked, renewed): check who it is again.
        case hostChanged
    }

    private struct Waiter {
        var id: UInt64
        var filter: StreamFilter
        var serial: String
        var cursor: Int64
        var continuation: CheckedContinuation<Wake, Never>
        var deadline: ContinuousClock.Instant
    }

    /// How often the hub ends the waits that are due (one sweep for all, rather than a timer task per host,
    /// which would wake 10,000 tasks after every fan-out just to find their wait already answered).
    static let sweepEvery: Duration = .milliseconds(250)

    let db: FleetDatabase
    let limits: StreamLimits
    let logger: Logger
    private var caches: [String: EnvironmentCache] = [:]
    private var waiters: [String: Waiter] = [:]
    private var nextID: UInt64 = 0
    private var refreshing: Set<String> = []
    private var dirty: Set<String> = []
    private var sweeper: Task<Void, Never>?
    private(set) var live = false

    init(db: FleetDatabase, limits: StreamLimits, logger: Logger) {
        self.db = db
        self.limits = limits
        self.logger = logger
    }

    var waiting: Int { waiters.count }

    // MARK: the stream

    /// Answers one `GET /v1/grants/stream`: at once when there are changes for the caller after `cursor`, else when
    /// some come or `wait` seconds pass. The caller is re-checked against PostgreSQL when its row changes.
    func stream(_ caller: CallerHost, cursor start: Int64, wait: Int64) async throws(FleetError) -> StreamAnswer {
        var filter = StreamFilter(caller.record)
        // Cursor 0: start over. An empty answer at version 0 (nothing was ever granted) would bring the host back
        // at once with 0 again, so that one waits like any poll, and answers with a reset when woken.
        let resetting = start == 0
        if resetting {
            let r = try await reset(filter)
            if !r.changes.isEmpty || r.cursor > 0 || wait == 0 { return try StreamAnswer(r) }
        }
        func answer(_ a: StreamAnswer) async throws(FleetError) -> StreamAnswer {
            resetting ? try StreamAnswer(try await reset(filter)) : a
        }
        func answerStream(_ a: FleetWire.GrantStream) async throws(FleetError) -> StreamAnswer {
            try await answer(try StreamAnswer(a))
        }
        let deadline = ContinuousClock.now + .seconds(wait)
        var cursor = start
        var known = false  // PostgreSQL said: nothing for this host up to `cursor`
        while true {
            if let cache = caches[filter.environment], cache.covers(cursor), let a = cache.answer(filter, after: cursor, limit: limits.batch) {
                if !a.changes.isEmpty { return try await answerStream(a) }
                cursor = a.cursor
            } else if !known || (caches[filter.environment].map { cursor < $0.from } ?? false) {
                let r = try await db.hostChanges(filter, after: cursor, limit: limits.batch)
                if cursor < r.pruned || cursor > r.current { return try StreamAnswer(try await reset(filter)) }
                if let last = r.rows.last {
                    return try await answerStream(FleetWire.GrantStream(cursor: r.rows.count == limits.batch ? last.version : r.current, reset: false, changes: r.rows.map(\.grant)))
                }
                cursor = r.current
                known = true
                if caches[filter.environment] == nil {
                    caches[filter.environment] = EnvironmentCache(at: r.current, capacity: limits.cachePerEnvironment)
                } else if caches[filter.environment]!.through < r.current {
                    scheduleRefresh(filter.environment)
                }
                continue  // the cache may have moved while PostgreSQL answered: look again before waiting
            }
            let left = deadline - ContinuousClock.now
            if left <= .zero { return try await answerStream(FleetWire.GrantStream(cursor: cursor, reset: false, changes: [])) }
            switch try await park(filter, serial: caller.serial, cursor: cursor, for: left) {
            case .answer(let a): return try await answer(a)
            case .done: return try await answerStream(FleetWire.GrantStream(cursor: cursor, reset: false, changes: []))
            case .stale: known = false
            case .hostChanged:
                let record = try await db.authenticate(name: caller.record.name, serial: caller.serial)
                let now = StreamFilter(record)
                if now != filter { filter = now; known = false }
            }
        }
    }

    /// The caller's active grants and the version they are current as of.
    private func reset(_ filter: StreamFilter) async throws(FleetError) -> FleetWire.GrantStream {
        let r = try await db.activeGrants(filter, limit: limits.resetLimit + 1)
        guard r.rows.count <= limits.resetLimit else {
            throw FleetError("too_many_grants", "host '\(filter.name)' is concerned by more than \(limits.resetLimit) active grants; the control plane refuses to send a partial set (end some grants)")
        }
        return FleetWire.GrantStream(cursor: r.current, reset: true, changes: r.rows.map(\.grant))
    }

    /// Holds the caller until a refresh has changes for it, its row changes, or `duration` passes. A host has
    /// one stream per replica: a second replaces the first (which answers "nothing new").
    private func park(_ filter: StreamFilter, serial: String, cursor: Int64, for duration: Duration) async throws(FleetError) -> Wake {
        let name = filter.name
        if let old = waiters.removeValue(forKey: name) {
            old.continuation.resume(returning: .done)
        }
        guard waiters.count < limits.maxWaiters else {
            throw FleetError("busy", "this replica holds \(limits.maxWaiters) streams already; try again in a few seconds (or another replica)")
        }
        nextID += 1
        let id = nextID
        let deadline = ContinuousClock.now + duration
        if sweeper == nil {
            sweeper = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: Self.sweepEvery)
                    guard let self else { return }
                    await self.sweep()
                }
            }
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Wake, Never>) in
                waiters[name] = Waiter(id: id, filter: filter, serial: serial, cursor: cursor, continuation: c, deadline: deadline)
            }
        } onCancel: {
            Task { await self.finish(name, id: id, with: .done) }
        }
    }

    private func finish(_ name: String, id: UInt64, with wake: Wake) {
        guard let w = waiters[name], w.id == id else { return }
        waiters.removeValue(forKey: name)
        w.continuation.resume(returning: wake)
    }

    /// Ends the waits that are due ("nothing new").
    private func sweep() {
        let now = ContinuousClock.now
        let due = waiters.filter { $0.value.deadline <= now }
        for (name, w) in due { finish(name, id: w.id, with: .done) }
    }

    // MARK: wake-ups

    /// `jit_changes` said this environment changed.
    func environmentChanged(_ environment: String) {
        guard caches[environment] != nil else { return }
        scheduleRefresh(environment)
    }

    /// `jit_hosts` said this host's row changed.
    func hostChanged(_ name: String) {
        if let w = waiters[name] { finish(name, id: w.id, with: .hostChanged) }
    }

    /// The listener is connected (true) or away (false). On coming back everything is read again, and the hosts
    /// waiting are checked against their rows (a revocation while it was away sent no notification).
    func setLive(_ up: Bool) async {
        db.hostCache.setLive(up)
        let was = live
        live = up
        guard up, !was else { return }
        refreshAll()
        let names = Array(waiters.keys)
        guard !names.isEmpty else { return }
        do {
            let rows = try await db.hostsNamed(names)
            let byName = Dictionary(rows.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for n in names {
                guard let w = waiters[n] else { continue }
                let h = byName[n]
                if h == nil || h!.revokedAt != nil || (h!.serial != w.serial && h!.previousSerial != w.serial) || StreamFilter(h!) != w.filter {
                    finish(n, id: w.id, with: .hostChanged)
                }
            }
        } catch {
            logger.warning("stream: cannot re-check the waiting hosts: \(error.message)")
        }
    }

    /// Reads every cached environment again (when the listener is away, each second).
    func refreshAll() {
        for env in caches.keys { scheduleRefresh(env) }
    }

    private func scheduleRefresh(_ environment: String) {
        if refreshing.contains(environment) {
            dirty.insert(environment)
            return
        }
        refreshing.insert(environment)
        Task { await self.runRefresh(environment) }
    }

    private func runRefresh(_ environment: String) async {
        repeat {
            dirty.remove(environment)
            do { try await refresh(environment) } catch {
                logger.warning("stream: cannot read the changes of environment \(environment): \(error.message); trying again in a second")
                Task {
                    try? await Task.sleep(for: .seconds(1))
                    self.environmentChanged(environment)
                }
            }
        } while dirty.contains(environment)
        refreshing.remove(environment)
    }

    /// Reads the environment's rows after the cache's `through` (in pages) and answers the hosts they concern.
    private func refresh(_ environment: String) async throws(FleetError) {
        let pageSize = limits.cachePerEnvironment
        for _ in 0..<20 {
            guard let before = caches[environment] else { return }
            let r = try await db.environmentChanges(environment, after: before.through, limit: pageSize)
            guard var cache = caches[environment] else { return }
            let through = r.rows.count == pageSize ? r.rows.last!.version : r.current
            if !cache.append(r.rows, through: through) {
                // The database is behind what this replica saw (restored?): start over from PostgreSQL.
                caches.removeValue(forKey: environment)
                resolve(environment, nil)
                return
            }
            caches[environment] = cache
            resolve(environment, cache)
            if r.rows.count < pageSize { return }
        }
    }

    /// Answers the waiters of an environment that the cache now has changes for.
    private func resolve(_ environment: String, _ cache: EnvironmentCache?) {
        // Hosts at the same cursor concerned by the same changes get the same bytes: encoded once.
        var encoded: [AnswerKey: StreamAnswer] = [:]
        for (name, w) in waiters where w.filter.environment == environment {
            guard let cache, cache.covers(w.cursor) else {
                if cache == nil || w.cursor < cache!.from { finish(name, id: w.id, with: .stale) }
                continue
            }
            guard let (a, versions) = cache.answerWithVersions(w.filter, after: w.cursor, limit: limits.batch), !a.changes.isEmpty else { continue }
            let key = AnswerKey(cursor: a.cursor, versions: versions)
            if let e = encoded[key] {
                finish(name, id: w.id, with: .answer(e))
                continue
            }
            do {
                let e = try StreamAnswer(a)
                encoded[key] = e
                finish(name, id: w.id, with: .answer(e))
            } catch {
                logger.error("stream: cannot encode an answer for host \(name): \(error.message)")
                finish(name, id: w.id, with: .stale)
            }
        }
    }

    private struct AnswerKey: Hashable {
        var cursor: Int64
        var versions: [Int64]
    }
}

/// One answer of the stream and its JSON, encoded once (`FleetAPI.json`'s encoding) and shared by every host
/// it is for.
struct StreamAnswer: Sendable {
    let stream: FleetWire.GrantStream
    let body: ByteBuffer

    init(_ stream: FleetWire.GrantStream) throws(FleetError) {
        self.stream = stream
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        do { body = ByteBuffer(bytes: try enc.encode(stream)) } catch {
            throw FleetError("internal", "cannot encode the grant stream's answer: \(error)")
        }
    }
}

struct ListenEnded: Error, CustomStringConvertible {
    var description: String { "the notifications from PostgreSQL ended" }
}

/// The replica's one `LISTEN` connection (`jit_changes`, `jit_hosts`), reconnected when PostgreSQL goes away,
/// and the pruning of old changes. Runs in the application's service group.
struct StreamListener: Service {
    let hub: StreamHub
    let db: FleetDatabase
    let retention: Int64
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { g in
                g.addTask { await self.listen() }
                g.addTask { await self.pollWhileAway() }
                g.addTask { await self.prune() }
                g.addTask { await self.markSeen() }
            }
        }
    }

    private func listen() async {
        var backoff = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                try await db.client.withConnection { conn in
                    try await conn.listen(on: "jit_changes") { changes in
                        try await conn.listen(on: "jit_hosts") { hosts in
                            await hub.setLive(true)
                            backoff = .milliseconds(200)
                            try await withThrowingDiscardingTaskGroup { g in
                                // A notification stream that ends (without an error) ends the group all the same, so
                                // that the heartbeats stop and the replica reconnects.
                                g.addTask {
                                    for try await n in changes { await hub.environmentChanged(n.payload) }
                                    throw ListenEnded()
                                }
                                g.addTask {
                                    for try await n in hosts {
                                        if db.hostCache.heartbeat(n.payload) { continue }
                                        db.hostCache.invalidate(n.payload)
                                        await hub.hostChanged(n.payload)
                                    }
                                    throw ListenEnded()
                                }
                                g.addTask { await self.heartbeats() }
                            }
                        }
                    }
                }
            } catch {
                if Task.isCancelled { break }
                logger.warning("stream: the LISTEN connection to PostgreSQL is gone (\(String(describing: error).prefix(200))); reconnecting")
            }
            await hub.setLive(false)
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// Sends this replica's heartbeats on `jit_hosts` while the listener runs (see `HostAuthCache`): one at once,
    /// then every `heartbeatEvery`. A heartbeat that cannot be sent is only logged: the rows stop answering
    /// from memory by themselves when none comes back.
    private func heartbeats() async {
        var failing = false
        while !Task.isCancelled {
            let payload = db.hostCache.nextHeartbeat()
            do {
                try await FleetDatabase.within(.seconds(5)) {
                    _ = try await db.client.query("SELECT pg_notify('jit_hosts', \(payload))", logger: logger)
                }
                failing = false
            } catch {
                if !failing { logger.warning("stream: cannot send the host cache's heartbeat to PostgreSQL (\(String(describing: error).prefix(200))); hosts are checked against PostgreSQL until one comes back") }
                failing = true
            }
            try? await Task.sleep(for: HostAuthCache.heartbeatEvery)
        }
    }

    /// Without the listener, a notification may be lost: read every environment waited on each second. With it,
    /// every 15 seconds all the same (one query per environment), so nothing can be held up longer than that.
    private func pollWhileAway() async {
        var tick = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            tick += 1
            if await !hub.live || tick % 15 == 0 { await hub.refreshAll() }
        }
    }

    /// Writes the hosts seen since the last round to `last_seen`, in one statement every few seconds.
    private func markSeen() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: FleetDatabase.seenEvery)
            await db.flushSeen()
        }
    }

    private func prune() async {
        while !Task.isCancelled {
            do {
                let n = try await db.pruneChanges(retention: retention)
                if n > 0 { logger.info("stream: pruned \(n) grant changes older than \(Durations.format(retention))") }
            } catch {
                logger.warning("stream: pruning grant changes failed: \(error.message)")
            }
            try? await Task.sleep(for: .seconds(600))
        }
    }
}
