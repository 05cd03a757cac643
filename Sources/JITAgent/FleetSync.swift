public import Foundation
public import JITCore
public import JITFleet
import Logging
import Synchronization

/// The calls the host agent makes to the control plane. `LiveControlPlane` speaks HTTPS with mutual TLS;
/// tests give a fake (no network).
public protocol ControlPlane: Sendable {
    var url: String { get }
    func file(_ r: FleetWire.HostRequest) async throws(FleetError) -> FleetWire.RequestStatus
    func status(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus
    func cancel(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus
    func stream(cursor: Int64, wait: Int) async throws(FleetError) -> FleetWire.GrantStream
    /// The grant stream as server-sent events (`FleetSession.events`); `.unsupported`: long-poll instead.
    func events(cursor: Int64, _ onItem: @escaping @Sendable (GrantStreamItem) async throws -> Void) async throws -> GrantEventsEnd
    func send(_ b: FleetWire.EventBatch) async throws(FleetError) -> FleetWire.EventAck
    /// Renews the host certificate when less than a third of its life is left; returns the new end if it did.
    func renewIfDue(now: Date) async throws(FleetError) -> Date?
}

extension ControlPlane {
    /// A control plane without an event stream: the host long-polls.
    public func events(cursor: Int64, _ onItem: @escaping @Sendable (GrantStreamItem) async throws -> Void) async throws -> GrantEventsEnd { .unsupported }
}

/// The control plane over HTTPS: the fleet file names the server, the host key and certificate and the CA.
public final class LiveControlPlane: ControlPlane {
    let client: FleetClient
    let fleetPath: String
    /// One session (connections, TLS context) per certificate: replaced after a renewal.
    let session: Mutex<FleetSession>
    public var url: String { client.server }

    public init(fleet: FleetFile, path: String) throws(FleetError) {
        client = try FleetClient(server: fleet.server)
        fleetPath = path
        session = Mutex(try FleetSession(fleet: fleet))
    }

    var current: FleetSession { session.withLock { $0 } }

    public func file(_ r: FleetWire.HostRequest) async throws(FleetError) -> FleetWire.RequestStatus { try await current.file(r) }
    public func status(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus { try await current.requestStatus(id: id) }
    public func cancel(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus { try await current.cancelRequest(id: id) }
    public func stream(cursor: Int64, wait: Int) async throws(FleetError) -> FleetWire.GrantStream {
        try await current.stream(cursor: cursor, wait: wait)
    }
    public func events(cursor: Int64, _ onItem: @escaping @Sendable (GrantStreamItem) async throws -> Void) async throws -> GrantEventsEnd {
        try await current.events(cursor: cursor, onItem)
    }
    public func send(_ b: FleetWire.EventBatch) async throws(FleetError) -> FleetWire.EventAck { try await current.send(events: b) }

    public func renewIfDue(now: Date) async throws(FleetError) -> Date? {
        let old = current
        let (from, to) = try FleetClient.validity(fleet: old.fleet)
        guard FleetSync.renewalDue(notBefore: from, notAfter: to, now: now) else { return nil }
        // The files are replaced atomically (write to a temporary file, fsync, rename), key first.
        let renewed = try await client.renew(fleet: old.fleet, fleetPath: fleetPath, newKey: false)
        let fresh = try FleetSession(fleet: renewed)
        session.withLock { $0 = fresh }
        // Calls already under way on the old session finish first (a long-poll: within its wait; the event stream
        // at its next ping).
        old.retire()
        Task { try? await Task.sleep(nanoseconds: 90_000_000_000); await old.shutdown() }
        return try FleetClient.validity(fleet: renewed).notAfter
    }
}

/// The host agent's fleet worker: holds the grant stream (server-sent events from the stored cursor; long-poll
/// against a server without them), sends the
/// request outbox with back-off, asks about open requests, ships the audit trail, renews the certificate.
/// Everything it learns is committed to SQLite before it acts; the check path never waits for it.
public final class FleetSync: Sendable {
    public let engine: Engine
    public let plane: any ControlPlane
    public let host: Store.FleetHostFacts
    let stopped = Atomic<Bool>(false)
    /// Long-poll wait asked of the server, in seconds.
    let wait: Int
    /// How often open requests are asked about, and how many at most per pass.
    let pollEvery: Double
    static let pollLimit = 50
    static let eventBatch = 500
    /// Events stepped over in a row (refused alone, none accepted since): past `maxSkipsInARow` the host stops
    /// stepping over and waits, so a server that refuses everything (a bug, a version mismatch) cannot make it
    /// skip its whole trail.
    let skipsInARow = Atomic<Int>(0)
    static let maxSkipsInARow = 10

    public init(engine: Engine, plane: any ControlPlane, host: Store.FleetHostFacts, wait: Int = 25, pollEvery: Double = 5) {
        self.engine = engine
        self.plane = plane
        self.host = host
        self.wait = wait
        self.pollEvery = pollEvery
    }

    var store: Store { engine.store }
    var logger: Logger { engine.logger }

    /// Renew when less than a third of the certificate's life is left.
    public static func renewalDue(notBefore: Date, notAfter: Date, now: Date) -> Bool {
        let life = notAfter.timeIntervalSince(notBefore)
        return notAfter.timeIntervalSince(now) < life / 3
    }

    /// Back-off after `attempts` failures: 1 s doubling to 60 s.
    public static func backoff(_ attempts: Int) -> Double { min(60, pow(2, Double(min(attempts, 6)))) }

    /// Loads what the check path needs from SQLite (contact time, the fleet's grants).
    public func prime() throws(JITError) {
        store.fleet.setContact(try store.fleetCursor().lastContact)
        store.fleet.setFleetGrants(try store.activeFleetGrantIDs())
    }

    public func stop() { stopped.store(true, ordering: .sequentiallyConsistent) }
    var isStopped: Bool { stopped.load(ordering: .sequentiallyConsistent) }

    func contact() { store.fleet.heard(at: engine.clock.now()) }

    func lost(_ e: FleetError, _ what: String) {
        if store.fleet.reachable { logger.warning("the control plane \(plane.url) cannot be reached (\(what)): \(e.message); cached grants stay in force (offline: \(engine.config.server?.offline.rawValue ?? "best_effort"))") }
        store.fleet.unreachable()
    }

    /// A stream error that means "the server is not there" rather than "the server said no".
    static func isTransient(_ e: FleetError) -> Bool {
        e.code == "unreachable" || e.code.hasPrefix("http_5") || e.code == "bad_answer" || e.code == "unavailable" || e.code == "internal"
    }

    // MARK: the stream

    /// Applies one batch: the users resolved in NSS first, then one transaction, then the effects.
    @discardableResult
    public func apply(_ b: FleetWire.GrantStream) throws(JITError) -> Store.FleetApplied {
        var uids: [String: UInt32] = [:]
        for u in Set(b.changes.map(\.user)) { if let who = engine.directory.user(name: u) { uids[u] = who.uid } }
        let out = try store.applyFleet(b, uids: uids, host: host, at: engine.clock.now())
        contact()
        engine.fleetApplied(out)
        return out
    }

    /// One long-poll and its batch. Returns false when the server could not be reached.
    public func streamOnce() async -> Bool {
        do {
            let cursor = try store.fleetCursor().cursor
            let b = try await plane.stream(cursor: cursor, wait: wait)
            try apply(b)
            return true
        } catch let e as FleetError {
            lost(e, "grant stream")
            return false
        } catch {
            logger.error("grant stream: \(error)")
            return false
        }
    }

    // MARK: the outbox

    /// Sends what is due; returns how many were answered.
    @discardableResult
    public func sendOutbox() async -> Int {
        let now = engine.clock.now()
        guard let due = try? store.dueFleetOutbox(now: now) else { return 0 }
        var sent = 0
        for row in due where !isStopped {
            do {
                let s = try await plane.file(row.body)
                try store.markFleetSent(seq: row.seq, reply: s, at: engine.clock.now())
                contact()
                sent += 1
                logger.info("request \(row.requestID) sent to the control plane: server request \(s.id), \(s.state)")
                engine.fleetLearn(localID: row.requestID, status: s)
            } catch let e as FleetError {
                if Self.isTransient(e) {
                    lost(e, "request outbox")
                    try? store.markFleetRetry(seq: row.seq, next: engine.clock.now().addingTimeInterval(Self.backoff(row.attempts)), error: e.message)
                    break  // the rest would fail the same way; keep their order
                }
                // The server refused it (bad request, not allowed): the request ends here with its reason.
                contact()
                try? store.markFleetRefused(seq: row.seq, error: e.message, at: engine.clock.now())
                logger.warning("the control plane refused request \(row.requestID): \(e.message)")
                engine.notifyWaiters(row.requestID)
            } catch {
                logger.error("request outbox: \(error)")
            }
        }
        return sent
    }

    /// Tells the control plane of requests cancelled here (a user's `jit cancel`, a login given up while
    /// waiting) once it has numbered them; returns how many it answered. A request the server had decided
    /// meanwhile keeps that decision (logged).
    @discardableResult
    public func sendCancels() async -> Int {
        let now = engine.clock.now()
        guard let due = try? store.dueFleetCancels(now: now) else { return 0 }
        var told = 0
        for c in due where !isStopped {
            do throws(FleetError) {
                let s = try await plane.cancel(id: c.serverID)
                contact()
                do { try store.markFleetCancelSent(requestID: c.requestID, error: nil, at: engine.clock.now()) } catch {
                    logger.error("request \(c.requestID): the control plane cancelled it, but that could not be recorded here: \(error.message) (it will be told again: harmless)")
                }
                told += 1
                if s.state == "cancelled" {
                    logger.info("request \(c.requestID) (server request \(c.serverID)) cancelled on the control plane too")
                } else {
                    logger.warning("request \(c.requestID) was cancelled here, but the control plane had already decided server request \(c.serverID): \(s.state) (\(s.message))")
                }
            } catch {
                if Self.isTransient(error) {
                    lost(error, "request cancels")
                    try? store.markFleetCancelRetry(requestID: c.requestID, next: engine.clock.now().addingTimeInterval(Self.backoff(c.attempts)), error: error.message)
                    break
                }
                contact()
                try? store.markFleetCancelSent(requestID: c.requestID, error: error.message, at: engine.clock.now())
                logger.warning("the control plane refused to cancel server request \(c.serverID) (request \(c.requestID) here): \(error.message)")
            }
        }
        return told
    }

    /// Asks about the open requests (bounded): denials and expiries are learnt here, never cached as denials
    /// of anything else.
    public func pollOpen() async {
        guard let open = try? store.openFleetRequests(limit: Self.pollLimit) else { return }
        for (local, server) in open where !isStopped {
            do {
                let s = try await plane.status(id: server)
                contact()
                engine.fleetLearn(localID: local, status: s)
            } catch {
                if Self.isTransient(error) { lost(error, "request status"); return }
                logger.warning("request \(local) (server request \(server)): \(error.message)")
            }
        }
    }

    // MARK: the trail

    /// Ships audit events after the acknowledged id, in batches; returns how many the server acknowledged.
    ///
    /// A batch the server refuses as too large (413) or unreadable (400) is halved and sent again, down to one
    /// event. One event the server refuses on its own is recorded in this host's trail as not shipped
    /// (`fleet.event_unshipped`, with its audit id and the server's reason; that record ships like any other)
    /// and only then stepped over, in the same transaction: one bad event never stalls the trail, and none is
    /// dropped without a trace. See docs/FLEET.md.
    @discardableResult
    public func shipEvents() async -> Int {
        var shipped = 0
        var size = Self.eventBatch
        while !isStopped {
            guard let c = try? store.fleetCursor(), let events = try? store.fleetEvents(after: c.eventsAcked, limit: Self.eventBatch),
                  !events.isEmpty else { break }
            let part = Array(events.prefix(size))
            do {
                let ack = try await plane.send(FleetWire.EventBatch(events: part.map(Self.hostEvent)))
                contact()
                try store.markEventsAcked(ack.acked, at: engine.clock.now())
                guard ack.acked > c.eventsAcked else { break }
                skipsInARow.store(0, ordering: .sequentiallyConsistent)
                shipped += Int(ack.acked - c.eventsAcked)
                // Back towards full batches once a smaller one passed.
                size = min(Self.eventBatch, size * 2)
                if part.count == events.count && events.count < Self.eventBatch { break }
            } catch let e as FleetError where Self.isRefusedBatch(e) {
                contact()
                if part.count > 1 {
                    size = part.count / 2
                    logger.warning("the control plane refused a batch of \(part.count) audit events (events \(part[0].id)-\(part[part.count - 1].id), \(e.code): \(e.message)); sending \(size) at a time")
                    continue
                }
                guard skip(part[0], e) else { break }
                size = Self.eventBatch
            } catch let e as FleetError {
                if Self.isTransient(e) { lost(e, "event shipping") } else { logger.warning("the control plane refused audit events: \(e.message)") }
                break
            } catch {
                logger.error("event shipping: \(error)")
                break
            }
        }
        return shipped
    }

    /// Whether the server refused the batch itself (too large, or a field it does not take), rather than the host
    /// or the call: then a smaller batch, or stepping over one event, can get the rest through.
    static func isRefusedBatch(_ e: FleetError) -> Bool {
        ["too_large", "http_413", "bad_request", "http_400"].contains(e.code)
    }

    /// Steps over one event the server refuses on its own, after recording that in the local trail. False when
    /// it must not (recording failed, or too many in a row: the server seems to refuse everything).
    func skip(_ ev: AuditEvent, _ e: FleetError) -> Bool {
        let inARow = skipsInARow.load(ordering: .sequentiallyConsistent)
        guard inARow < Self.maxSkipsInARow else {
            logger.error("audit event \(ev.id) (\(ev.kind)) is refused by the control plane \(plane.url) (\(e.code): \(e.message)), after \(inARow) others in a row: not stepping over more; events wait here until the server takes event \(ev.id) (check the server's log and version)")
            return false
        }
        do {
            try store.markEventUnshipped(ev, code: e.code, reason: e.message, at: engine.clock.now())
        } catch {
            logger.error("audit event \(ev.id) (\(ev.kind)) is refused by the control plane (\(e.code): \(e.message)) and recording that locally failed (\(error.message)); it stays queued")
            return false
        }
        skipsInARow.store(inARow + 1, ordering: .sequentiallyConsistent)
        logger.error("audit event \(ev.id) (\(ev.kind), user \(ev.user)) is refused by the control plane \(plane.url) on its own (\(e.code): \(e.message)): NOT SHIPPED. It stays in this host's trail (jit audit); the refusal is recorded there as fleet.event_unshipped, and shipping goes on with the next event")
        return true
    }

    static func hostEvent(_ e: AuditEvent) -> FleetWire.HostEvent {
        var data: [String: String] = [:]
        for line in e.data.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let k = String(line[..<eq]), v = String(line[line.index(after: eq)...])
            data[k] = v.removingPercentEncoding ?? v
        }
        if let r = e.requestID { data["request_id"] = String(r) }
        if let g = e.grantID { data["grant_id"] = String(g) }
        return FleetWire.HostEvent(seq: e.id, at: Timestamps.format(Timestamps.date(millis: e.at)), kind: e.kind, actor: e.actor, user: e.user, data: data)
    }

    // MARK: running

    /// Runs the stream and the outbox side by side until `stop()`.
    public func run() async {
        store.fleet.setShipping(true)
        defer { store.fleet.setShipping(false) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.streamLoop() }
            group.addTask { await self.workLoop() }
        }
    }

    func streamLoop() async {
        var failures = 0
        var pollUntil = Date.distantPast  // the server has no event stream: long-poll until then
        while !isStopped {
            let ok: Bool
            if Date() < pollUntil {
                ok = await streamOnce()
            } else {
                let started = Date()
                switch await eventsOnce() {
                case .unsupported:
                    logger.notice("the control plane \(plane.url) has no event stream (an older jitd server): long-polling for grants, asking again in 10 minutes")
                    pollUntil = Date().addingTimeInterval(600)
                    ok = true
                case .ended, .retired:
                    ok = true
                    // A stream the server ends at once, again and again, must not become a busy loop.
                    if Date().timeIntervalSince(started) < 2 { try? await Task.sleep(nanoseconds: 1_000_000_000) }
                case nil:
                    ok = false
                }
            }
            if ok {
                failures = 0
            } else {
                failures += 1
                // At most 5 s between tries: a host catches up (revocations first of all) soon after the link is back.
                try? await Task.sleep(nanoseconds: UInt64(min(5, Self.backoff(failures - 1)) * 1e9))
            }
        }
    }

    /// One event stream from the stored cursor, each batch applied (committed to SQLite) before the next is read,
    /// until the server ends it. Nil when the server could not be reached, refused, or a batch could not be applied
    /// (the stream is dropped: the next one starts from the last cursor applied, so nothing is lost).
    public func eventsOnce() async -> GrantEventsEnd? {
        do {
            let cursor = try store.fleetCursor().cursor
            return try await plane.events(cursor: cursor) { [self] item in
                switch item {
                case .ping: contact()
                case .batch(let b): try apply(b)
                }
            }
        } catch let e as FleetError {
            lost(e, "grant stream")
        } catch let e as JITError {
            logger.error("grant stream: a batch could not be applied (\(e.message)); connecting again from the last cursor applied")
        } catch {
            if !isStopped { logger.error("grant stream: \(error)") }
        }
        return nil
    }

    func workLoop() async {
        var nextPoll = Date.distantPast, nextRenew = Date.distantPast
        while !isStopped {
            await sendOutbox()
            await sendCancels()
            let now = Date()
            if now >= nextPoll {
                await pollOpen()
                nextPoll = now.addingTimeInterval(pollEvery)
            }
            await shipEvents()
            if now >= nextRenew {
                do {
                    if let end = try await plane.renewIfDue(now: now) { logger.notice("host certificate renewed: valid until \(Timestamps.format(end))") }
                    nextRenew = now.addingTimeInterval(3600)
                } catch {
                    logger.warning("host certificate renewal failed (retrying in 5 minutes): \(error.message)")
                    nextRenew = now.addingTimeInterval(300)
                }
            }
            // A new filing wakes nothing here (the check path never waits for the network): a short sleep
            // keeps a filed request's trip to the server under a second at a negligible idle cost.
            try? await Task.sleep(nanoseconds: 250_000_000)
        }
    }
}

extension Agent {
    /// Fleet mode from `server:`: the fleet file must exist, be the agent's own, and name this host's
    /// environment (jit.yaml and the certificate must agree, or nothing is honoured).
    static func fleetSync(config: Config, engine: Engine) throws(JITError) -> FleetSync? {
        guard let s = config.server else {
            engine.store.fleet.configure(nil, server: "")
            return nil
        }
        let f: FleetFile
        do { f = try FleetFile.load(path: s.fleet) } catch {
            throw JITError(.invalid, "server.fleet: \(error.description)")
        }
        guard f.environment == config.environment else {
            throw JITError(.invalid, "jit.yaml says 'environment: \(config.environment)' but this host is enrolled in \(f.environment) (\(s.fleet)); set environment: \(f.environment)")
        }
        let plane: LiveControlPlane
        do { plane = try LiveControlPlane(fleet: f, path: s.fleet) } catch {
            throw JITError(.invalid, "\(s.fleet): \(error.message)")
        }
        engine.store.fleet.configure(s, server: f.server)
        let sync = FleetSync(engine: engine, plane: plane, host: Store.FleetHostFacts(name: f.name, environment: f.environment, labels: Set(f.labels)))
        try sync.prime()
        return sync
    }
}
