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
    private var subscribers: [String: Subscriber] = [:]
    private var nextID: UInt64 = 0
    /// Moves at every host-row notification (and when the listener comes back): a stream being opened across
    /// one checks its host again before it is registered.
    private var hostEpoch: UInt64 = 0
    private var refreshing: Set<String> = []
    private var dirty: Set<String> = []
    private var sweeper: Task<Void, Never>?
    private(set) var live = false

    init(db: FleetDatabase, limits: StreamLimits, logger: Logger) {
        self.db = db
        self.limits = limits
        self.logger = logger
    }

    var waiting: Int { waiters.count + subscribers.count }

    // MARK: the stream

    /// Answers one `GET /v1/grants/stream`: at once when there are changes for the caller after `cursor`, else when
    /// some come or `wait` seconds pass. The caller is re-checked against PostgreSQL when its row changes.
    func stream(_ caller: CallerHost, cursor start: Int64, wait: Int64) async throws(FleetError) -> StreamAnswer {
        var epoch = hostEpoch
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
                noteCurrent(filter.environment, r.current)
                continue  // the cache may have moved while PostgreSQL answered: look again before waiting
            }
            let left = deadline - ContinuousClock.now
            if left <= .zero { return try await answerStream(FleetWire.GrantStream(cursor: cursor, reset: false, changes: [])) }
            // The host row changed while this call was under way (its notification found no one waiting): check the
            // host again before it waits, as a wait woken by that notification does.
            let wake: Wake = epoch != hostEpoch ? .hostChanged : try await park(filter, serial: caller.serial, cursor: cursor, for: left)
            switch wake {
            case .answer(let a): return try await answer(a)
            case .done: return try await answerStream(FleetWire.GrantStream(cursor: cursor, reset: false, changes: []))
            case .stale: known = false
            case .hostChanged:
                epoch = hostEpoch
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
        try checkRoom()
        nextID += 1
        let id = nextID
        let deadline = ContinuousClock.now + duration
        startSweeper()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Wake, Never>) in
                waiters[name] = Waiter(id: id, filter: filter, serial: serial, cursor: cursor, continuation: c, deadline: deadline)
            }
        } onCancel: {
            Task { await self.finish(name, id: id, with: .done) }
        }
    }

    /// PostgreSQL said the environment is at `current`: start its cache there, or catch the cache up.
    private func noteCurrent(_ environment: String, _ current: Int64) {
        if caches[environment] == nil {
            caches[environment] = EnvironmentCache(at: current, capacity: limits.cachePerEnvironment)
        } else if caches[environment]!.through < current {
            scheduleRefresh(environment)
        }
    }

    private func checkRoom() throws(FleetError) {
        guard waiters.count + subscribers.count < limits.maxWaiters else {
            throw FleetError("busy", "this replica holds \(limits.maxWaiters) streams already; try again in a few seconds (or another replica)")
        }
    }

    private func startSweeper() {
        guard sweeper == nil else { return }
        sweeper = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.sweepEvery)
                guard let self else { return }
                await self.sweep()
            }
        }
    }

    private func finish(_ name: String, id: UInt64, with wake: Wake) {
        guard let w = waiters[name], w.id == id else { return }
        waiters.removeValue(forKey: name)
        w.continuation.resume(returning: wake)
    }

    /// Ends the waits that are due ("nothing new"); pings the event streams that have been quiet, and ends those
    /// past their time.
    private func sweep() {
        let now = ContinuousClock.now
        var due: [(String, UInt64)] = []
        for (name, w) in waiters where w.deadline <= now { due.append((name, w.id)) }
        for (name, id) in due { finish(name, id: id, with: .done) }
        var quiet: [String] = [], over: [(String, UInt64)] = []
        for (name, s) in subscribers {
            if s.endsAt <= now { over.append((name, s.id)) } else if s.lastSent + GrantEvents.pingEvery <= now { quiet.append(name) }
        }
        for (name, id) in over { unsubscribe(name, id: id) }
        for name in quiet { ping(name, now: now) }
    }

    // MARK: the event stream

    private struct Subscriber {
        var id: UInt64
        var filter: StreamFilter
        var serial: String
        /// Everything up to here that concerns the host has been sent (or queued to send).
        var cursor: Int64
        /// The cursor the host was last told (an event's id): a ping with a newer cursor is an empty batch.
        var told: Int64
        var continuation: AsyncStream<ByteBuffer>.Continuation
        var lastSent: ContinuousClock.Instant
        var endsAt: ContinuousClock.Instant
    }

    /// An open `GET /v1/grants/events`: the first events (sent at once), then what the hub pushes.
    struct Subscription: Sendable {
        let name: String
        let id: UInt64
        let first: [ByteBuffer]
        let events: AsyncStream<ByteBuffer>
        let continuation: AsyncStream<ByteBuffer>.Continuation
    }

    /// How long one event stream lasts before the server ends it (the host connects again at once): a bound on
    /// anything a missed notification could hold up, spread so that hosts do not all come back together.
    static let subscriptionLife: ClosedRange<Double> = 240...300
    /// Events queued for one host beyond which it is cut off (it reads too slowly; it comes back from its cursor).
    static let subscriberBuffer = 64

    /// Opens an event stream for the caller from `cursor` (0: a reset first). The first events bring the host up
    /// to date at once (an empty batch when there is nothing); then each change that concerns it is pushed as it
    /// is committed. A host has one event stream per replica: a second ends the first.
    func subscribe(_ caller: CallerHost, cursor start: Int64, now: Date = Date()) async throws(FleetError) -> Subscription {
        var epoch = hostEpoch
        let filter = StreamFilter(caller.record)
        var first: [StreamAnswer] = []
        var cursor = start
        if start == 0 {
            let r = try StreamAnswer(try await reset(filter))
            first.append(r)
            cursor = r.stream.cursor
        }
        var known = false
        while true {
            // The host row changed while this stream was being opened (revoked, renewed, relabelled): the notification
            // found no stream to end, so the host is checked again here, before the stream exists.
            if epoch != hostEpoch {
                epoch = hostEpoch
                let record = try await db.authenticate(name: caller.record.name, serial: caller.serial)
                guard StreamFilter(record) == filter else {
                    throw FleetError("host_changed", "host '\(filter.name)' changed while its grant stream was being opened; connect again")
                }
                continue
            }
            if let cache = caches[filter.environment], cache.covers(cursor) {
                // From here to the registration nothing suspends: no change can fall between the two.
                while let a = cache.answer(filter, after: cursor, limit: limits.batch), !a.changes.isEmpty {
                    first.append(try StreamAnswer(a))
                    cursor = a.cursor
                }
                cursor = max(cursor, cache.through)
                break
            }
            if !known || (caches[filter.environment].map { cursor < $0.from } ?? true) {
                let r = try await db.hostChanges(filter, after: cursor, limit: limits.batch)
                if cursor < r.pruned || cursor > r.current {
                    let reset = try StreamAnswer(try await reset(filter))
                    first = [reset]
                    cursor = reset.stream.cursor
                    known = false
                    continue
                }
                if let last = r.rows.last {
                    let full = r.rows.count == limits.batch
                    first.append(try StreamAnswer(FleetWire.GrantStream(cursor: full ? last.version : r.current, reset: false, changes: r.rows.map(\.grant))))
                    cursor = full ? last.version : r.current
                    if full { continue }
                } else {
                    cursor = r.current
                }
                known = true
                noteCurrent(filter.environment, r.current)
                continue  // the cache may have moved while PostgreSQL answered: look again
            }
            break  // the cache is behind this cursor: its refresh is under way, and pushes from there
        }
        try checkRoom()
        if first.isEmpty || first.last!.stream.cursor != cursor {
            first.append(try StreamAnswer(FleetWire.GrantStream(cursor: cursor, reset: false, changes: [])))
        }
        let name = filter.name
        if let old = subscribers.removeValue(forKey: name) { old.continuation.finish() }
        nextID += 1
        let (events, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingOldest(Self.subscriberBuffer))
        let clock = ContinuousClock.now
        var life = Double.random(in: Self.subscriptionLife)
        if let end = caller.certificateNotAfter { life = min(life, end.timeIntervalSince(now)) }
        subscribers[name] = Subscriber(id: nextID, filter: filter, serial: caller.serial, cursor: cursor, told: cursor, continuation: continuation,
                                       lastSent: clock, endsAt: clock + .milliseconds(Int64(max(0, life) * 1000)))
        startSweeper()
        return Subscription(name: name, id: nextID, first: first.map { Self.event($0) }, events: events, continuation: continuation)
    }

    /// The response that carried the stream has ended (the host went away, or the hub ended it).
    func unsubscribe(_ name: String, id: UInt64) {
        guard let s = subscribers[name], s.id == id else { return }
        subscribers.removeValue(forKey: name)
        s.continuation.finish()
    }

    static func event(_ a: StreamAnswer) -> ByteBuffer {
        ByteBuffer(bytes: GrantEvents.event(json: a.body.readableBytesView, cursor: a.stream.cursor))
    }

    private static let pingBuffer = ByteBuffer(bytes: GrantEvents.ping)

    /// Sends a quiet stream its ping: an empty batch when its cursor moved since it was last told, else a comment.
    private func ping(_ name: String, now: ContinuousClock.Instant) {
        guard var s = subscribers[name] else { return }
        var bytes = Self.pingBuffer
        if s.cursor != s.told, let a = try? StreamAnswer(FleetWire.GrantStream(cursor: s.cursor, reset: false, changes: [])) {
            bytes = Self.event(a)
            s.told = s.cursor
        }
        s.lastSent = now
        subscribers[name] = s
        send(name, s, bytes)
    }

    /// Queues bytes for one stream; a stream that cannot take them (gone, or too far behind) ends.
    private func send(_ name: String, _ s: Subscriber, _ bytes: ByteBuffer) {
        switch s.continuation.yield(bytes) {
        case .enqueued: break
        case .dropped:
            logger.warning("stream: host \(name) reads its grant events too slowly (\(Self.subscriberBuffer) queued); ending its stream (it comes back from its cursor)")
            unsubscribe(name, id: s.id)
        case .terminated: unsubscribe(name, id: s.id)
        @unknown default: unsubscribe(name, id: s.id)
        }
    }

    /// Sends the event streams of an environment what the cache now has for them.
    private func push(_ environment: String, _ cache: EnvironmentCache?) {
        guard !subscribers.isEmpty else { return }
        var encoded: [AnswerKey: ByteBuffer] = [:]
        var updates: [(String, Int64, [ByteBuffer])] = []
        var stale: [(String, UInt64)] = []
        for (name, s) in subscribers where s.filter.environment == environment {
            guard let cache, cache.covers(s.cursor) else {
                if cache == nil || s.cursor < cache!.from { stale.append((name, s.id)) }
                continue
            }
            var cursor = s.cursor
            var out: [ByteBuffer] = []
            while let (a, versions) = cache.answerWithVersions(s.filter, after: cursor, limit: limits.batch) {
                guard !a.changes.isEmpty else {
                    cursor = a.cursor
                    break
                }
                let key = AnswerKey(cursor: a.cursor, versions: versions)
                if let e = encoded[key] {
                    out.append(e)
                } else {
                    do {
                        let e = Self.event(try StreamAnswer(a))
                        encoded[key] = e
                        out.append(e)
                    } catch {
                        logger.error("stream: cannot encode an event for host \(name): \(error.message)")
                        break
                    }
                }
                cursor = a.cursor
            }
            if cursor != s.cursor || !out.isEmpty { updates.append((name, cursor, out)) }
        }
        // The cache no longer covers these streams: they end, and their hosts come back reading PostgreSQL.
        for (name, id) in stale { unsubscribe(name, id: id) }
        let now = ContinuousClock.now
        for (name, cursor, out) in updates {
            guard var s = subscribers[name] else { continue }
            s.cursor = cursor
            if !out.isEmpty {
                s.told = cursor
                s.lastSent = now
            }
            subscribers[name] = s
            for e in out {
                send(name, s, e)
                if subscribers[name]?.id != s.id { break }
            }
        }
    }

    // MARK: wake-ups

    /// `jit_changes` said this environment changed.
    func environmentChanged(_ environment: String) {
        guard caches[environment] != nil else { return }
        scheduleRefresh(environment)
    }

    /// `jit_hosts` said this host's row changed.
    func hostChanged(_ name: String) {
        hostEpoch &+= 1
        if let w = waiters[name] { finish(name, id: w.id, with: .hostChanged) }
        // An event stream ends: the host connects again and is checked like any new call.
        if let s = subscribers[name] { unsubscribe(name, id: s.id) }
    }

    /// The listener is connected (true) or away (false). On coming back everything is read again, and the hosts
    /// waiting are checked against their rows (a revocation while it was away sent no notification).
    func setLive(_ up: Bool) async {
        db.hostCache.setLive(up)
        let was = live
        live = up
        guard up, !was else { return }
        hostEpoch &+= 1
        refreshAll()
        let names = Array(Set(waiters.keys).union(subscribers.keys))
        guard !names.isEmpty else { return }
        do {
            let rows = try await db.hostsNamed(names)
            let byName = Dictionary(rows.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            func changed(_ h: HostRecord?, serial: String, filter: StreamFilter) -> Bool {
                guard let h else { return true }
                return h.revokedAt != nil || (h.serial != serial && h.previousSerial != serial) || StreamFilter(h) != filter
            }
            for n in names {
                if let w = waiters[n], changed(byName[n], serial: w.serial, filter: w.filter) { finish(n, id: w.id, with: .hostChanged) }
                if let s = subscribers[n], changed(byName[n], serial: s.serial, filter: s.filter) { unsubscribe(n, id: s.id) }
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

    /// Answers the waiters of an environment that the cache now has changes for, and sends the changes to its
    /// event streams.
    private func resolve(_ environment: String, _ cache: EnvironmentCache?) {
        push(environment, cache)
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
