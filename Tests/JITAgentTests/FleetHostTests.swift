import Foundation
import Testing
import Synchronization
import JITCore
import JITFleet
@testable import JITAgent

/// A control plane in memory: what the host sent, and what it answers (or that it is away).
final class FakePlane: ControlPlane {
    struct State {
        var away = false
        var filed: [FleetWire.HostRequest] = []
        var statuses: [Int64: FleetWire.RequestStatus] = [:]
        var streams: [FleetWire.GrantStream] = []
        var cursorsAsked: [Int64] = []
        var events: [Int64: FleetWire.HostEvent] = [:]
        var eventPosts = 0
        var refuse: FleetError? = nil
        var cancelled: [Int64] = []
        /// The largest event body (JSON bytes) taken: larger is 413, as the server's body limit answers.
        var eventBodyLimit: Int? = nil
        /// Events the server refuses with 400 whatever batch they come in (the server names the first bad one).
        var badEvents: Set<Int64> = []
        /// Every batch posted, as its events' seqs.
        var batches: [[Int64]] = []
        /// The event streams to serve, one per call, each what it sends before the server ends it (nil: the server has
        /// no event stream, 404).
        var eventStreams: [[GrantStreamItem]]? = nil
        var eventCursorsAsked: [Int64] = []
    }
    let s = Mutex(State())
    var url: String { "https://cp.test:8443" }

    func check() throws(FleetError) {
        if s.withLock({ $0.away }) { throw FleetError("unreachable", "cannot reach the control plane at \(url): connection refused") }
    }

    func file(_ r: FleetWire.HostRequest) async throws(FleetError) -> FleetWire.RequestStatus {
        try check()
        if let e = s.withLock({ $0.refuse }) { throw e }
        return s.withLock { st in
            // Idempotent on seq, as the server is.
            if let i = st.filed.firstIndex(where: { $0.seq == r.seq }) { return st.statuses[Int64(100 + i)]! }
            st.filed.append(r)
            let id = Int64(100 + st.filed.count - 1)
            let status = FleetWire.RequestStatus(id: id, state: "pending", rule: "people", user: r.user, environment: "production", hosts: [],
                                                 approverGroups: ["sre"], grantID: nil, expiresAt: "2030-01-01T00:00:00Z", message: "pending")
            st.statuses[id] = status
            return status
        }
    }

    func status(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus {
        try check()
        guard let st = s.withLock({ $0.statuses[id] }) else { throw FleetError("not_found", "no request \(id)") }
        return st
    }

    func cancel(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus {
        try check()
        return try s.withLock { st throws(FleetError) in
            guard var status = st.statuses[id] else { throw FleetError("not_found", "no request \(id)") }
            st.cancelled.append(id)
            if status.state == "pending" { status.state = "cancelled" }
            st.statuses[id] = status
            return status
        }
    }

    func stream(cursor: Int64, wait: Int) async throws(FleetError) -> FleetWire.GrantStream {
        try check()
        return s.withLock { st in
            st.cursorsAsked.append(cursor)
            return st.streams.isEmpty ? FleetWire.GrantStream(cursor: cursor, reset: false, changes: []) : st.streams.removeFirst()
        }
    }

    func events(cursor: Int64, _ onItem: @escaping @Sendable (GrantStreamItem) async throws -> Void) async throws -> GrantEventsEnd {
        try check()
        let items: [GrantStreamItem]? = s.withLock { st in
            guard st.eventStreams != nil else { return nil }
            st.eventCursorsAsked.append(cursor)
            return st.eventStreams!.isEmpty ? [] : st.eventStreams!.removeFirst()
        }
        guard let items else { return .unsupported }
        for i in items { try await onItem(i) }
        return .ended
    }

    func send(_ b: FleetWire.EventBatch) async throws(FleetError) -> FleetWire.EventAck {
        try check()
        let size = (try? JSONEncoder().encode(b).count) ?? 0
        return try s.withLock { st throws(FleetError) in
            st.eventPosts += 1
            st.batches.append(b.events.map(\.seq))
            if let limit = st.eventBodyLimit, size > limit {
                throw FleetError("too_large", "the request body is larger than \(limit / 1024) KiB; send less at once")
            }
            if let hit = b.events.enumerated().first(where: { st.badEvents.contains($0.element.seq) }) {
                throw FleetError("bad_request", "events[\(hit.offset)] (seq \(hit.element.seq)): kind is longer than 256 bytes")
            }
            for e in b.events where st.events[e.seq] == nil { st.events[e.seq] = e }
            return FleetWire.EventAck(acked: st.events.keys.max() ?? 0)
        }
    }

    func renewIfDue(now: Date) async throws(FleetError) -> Date? { nil }
}

@Suite struct FleetHostTests {
    typealias D = FakeDirectory
    static let yaml = """
        environment: production
        labels: [db]
        break_glass:
          groups: [breakglass]
          max_duration: 1h
        server:
          fleet: /etc/jit/fleet.yaml
          offline: best_effort
          offline_grace: 10m
        """

    struct Fleet {
        let h: Harness
        let plane = FakePlane()
        let sync: FleetSync
        init(offline: FleetSettings.Offline = .bestEffort) throws {
            var parsed = try Config.parse(FleetHostTests.yaml)
            parsed.server?.offline = offline
            h = try Harness { c in
                let keep = (c.database, c.socket)
                c = parsed
                (c.database, c.socket) = keep
            }
            h.engine.store.fleet.configure(h.engine.config.server, server: "https://cp.test:8443")
            sync = FleetSync(engine: h.engine, plane: plane, host: Store.FleetHostFacts(name: "db1", environment: "production", labels: ["db"]))
            try sync.prime()
        }
        var now: Date { h.clock.now() }

        func grant(_ id: Int64, user: String = "alice", request: Int64 = 900, scope: String = "login", state: String = "active",
                   minutes: Double = 30, environment: String = "production", hosts: [String] = [], labels: [String] = []) -> FleetWire.Grant {
            FleetWire.Grant(id: id, requestID: request, user: user, environment: environment, hosts: hosts, labels: labels, scope: scope,
                            commands: [], runAs: scope == "login" ? "" : "root", state: state, startsAt: Timestamps.format(now),
                            expiresAt: Timestamps.format(now.addingTimeInterval(minutes * 60)), endedAt: nil, endedBy: state == "revoked" ? "bob" : nil,
                            noPassword: true, login: true, uses: nil, record: "")
        }

        func login(_ user: String = "alice", file: Bool = false) -> Message {
            h.call(D.root, "check", [("user", user), ("service", "sshd"), ("rhost", "10.0.0.9")] + (file ? [("file", "1")] : []))
        }
    }

    // MARK: config

    @Test func serverSettingsAreStrict() throws {
        let c = try Config.parse(Self.yaml)
        var want = FleetSettings()
        want.offlineGrace = 600
        want.line = c.server?.line
        #expect(c.server == want)
        #expect(try Config.parse("environment: production\n").server == nil)
        let strict = try Config.parse("environment: production\nserver: {offline: strict}\n")
        #expect(strict.server?.offline == .strict && strict.server?.offlineGrace == 900 && strict.server?.fleet == "/etc/jit/fleet.yaml")
        #expect(throws: ConfigError.self) { try Config.parse("environment: production\nserver: {ofline: strict}\n") }
        do { _ = try Config.parse("environment: production\nserver: {offline: sometimes}\n"); Issue.record("accepted") } catch {
            #expect(error.field == "server.offline" && error.message.contains("best_effort or strict"))
        }
        do { _ = try Config.parse("environment: production\nserver: {fleet: etc/fleet.yaml}\n"); Issue.record("accepted") } catch {
            #expect(error.field == "server.fleet")
        }
    }

    // MARK: the mirror

    @Test func streamedGrantIsHonouredAndRevocationEndsIt() throws {
        let f = try Fleet()
        #expect(f.login()["decision"] == "deny")
        let a = try f.sync.apply(FleetWire.GrantStream(cursor: 7, reset: true, changes: [f.grant(41)]))
        #expect(a.started.count == 1)
        let allow = f.login()
        #expect(allow["decision"] == "allow")
        #expect(try f.h.engine.store.fleetCursor().cursor == 7)
        #expect(f.h.effects.entries.contains("started \(a.started[0].id)"))
        // The same change again (a replay) changes nothing.
        #expect(try f.sync.apply(FleetWire.GrantStream(cursor: 7, reset: false, changes: [f.grant(41)])).started.isEmpty)
        let r = try f.sync.apply(FleetWire.GrantStream(cursor: 9, reset: false, changes: [f.grant(41, state: "revoked")]))
        #expect(r.ended.map(\.state) == [.revoked])
        #expect(f.login()["decision"] == "deny")
        #expect(f.h.effects.entries.contains("ended \(a.started[0].id) revoked"))
        // An ended grant never comes back, whatever the server sends later.
        #expect(try f.sync.apply(FleetWire.GrantStream(cursor: 10, reset: false, changes: [f.grant(41)])).started.isEmpty)
        #expect(f.login()["decision"] == "deny")
    }

    @Test func aFailedBatchChangesNothingAndResumesFromTheCommittedCursor() throws {
        let f = try Fleet()
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 3, reset: true, changes: []))
        let batch = FleetWire.GrantStream(cursor: 5, reset: false, changes: [f.grant(1), f.grant(2, user: "carol", request: 901)])
        var uids: [String: UInt32] = [:]
        for u in ["alice", "carol"] { uids[u] = D.standard.user(name: u)!.uid }
        let host = Store.FleetHostFacts(name: "db1", environment: "production", labels: ["db"])
        #expect(throws: JITError.self) { try f.h.engine.store.applyFleet(batch, uids: uids, host: host, at: f.now, faultAfter: 1) }
        // Killed mid-apply: neither grant, and the cursor is where it was.
        #expect(try f.h.engine.store.fleetCursor().cursor == 3)
        #expect(try f.h.engine.store.activeFleetGrantIDs().isEmpty)
        #expect(f.login()["decision"] == "deny")
        let a = try f.h.engine.store.applyFleet(batch, uids: uids, host: host, at: f.now)
        #expect(a.started.count == 2)
        #expect(try f.h.engine.store.fleetCursor().cursor == 5)
    }

    @Test func resetReplacesEveryFleetGrant() throws {
        let f = try Fleet()
        let a = try f.sync.apply(FleetWire.GrantStream(cursor: 2, reset: true, changes: [f.grant(1), f.grant(2, user: "carol", request: 901)]))
        #expect(a.started.count == 2)
        let r = try f.sync.apply(FleetWire.GrantStream(cursor: 50, reset: true, changes: [f.grant(2, user: "carol", request: 901)]))
        #expect(r.ended.count == 1 && r.ended[0].user == "alice" && r.ended[0].endedBy == "control plane (reset)")
        #expect(r.started.isEmpty)
        #expect(f.login()["decision"] == "deny")
        #expect(f.login("carol")["decision"] == "allow")
        #expect(try f.h.engine.store.fleetCursor().cursor == 50)
    }

    @Test func grantsThisHostCannotHoldAreRefusedAndRecorded() throws {
        let f = try Fleet()
        let a = try f.sync.apply(FleetWire.GrantStream(cursor: 4, reset: true, changes: [
            f.grant(1, user: "nobody-here"), f.grant(2, request: 902, environment: "staging"), f.grant(3, request: 903, hosts: ["db2"]),
            f.grant(4, request: 904, labels: ["web"]), f.grant(5, user: "root", request: 905),
        ]))
        #expect(a.started.isEmpty)
        #expect(a.refused.map(\.id) == [1, 2, 3, 4, 5])
        #expect(a.refused[0].why.contains("not known to this host"))
        let events = try f.h.engine.store.fleetEvents(after: 0, limit: 100).filter { $0.kind == "fleet.grant_refused" }
        #expect(events.count == 5)
        #expect(f.login()["decision"] == "deny")
        // A grant naming this host, with labels it has, is held.
        #expect(try f.sync.apply(FleetWire.GrantStream(cursor: 5, reset: false, changes: [f.grant(6, request: 906, hosts: ["db1"], labels: ["db"])])).started.count == 1)
    }

    @Test func localExpiryWorksWithoutTheServer() throws {
        let f = try Fleet()
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 1, reset: true, changes: [f.grant(1, minutes: 5)]))
        f.plane.s.withLock { $0.away = true }
        f.h.clock.advance(301)
        #expect(f.login()["decision"] == "deny")
        f.h.engine.expireDue()
        #expect(try f.h.engine.store.activeGrants().isEmpty)
    }

    // MARK: requests through the outbox

    @Test func aRefusedLoginIsFiledWithTheControlPlaneAndItsGrantWakesTheWaiter() async throws {
        let f = try Fleet()
        let pending = f.login(file: true)
        #expect(pending["decision"] == "pending")
        #expect(pending["message"]?.contains("queued for the control plane (https://cp.test:8443)") == true, "not sent yet: no server id to name")
        #expect(pending["approve_id"] == nil)
        let local = try #require(pending["request"].flatMap { Int64($0) })
        #expect(try f.h.engine.store.fleetOutbox().count == 1)
        #expect(await f.sync.sendOutbox() == 1)
        let filed = f.plane.s.withLock { $0.filed }
        #expect(filed.count == 1 && filed[0].user == "alice" && filed[0].scope == "login" && filed[0].service == "sshd" && filed[0].rhost == "10.0.0.9")
        // Sent once: a second pass sends nothing.
        #expect(await f.sync.sendOutbox() == 0)
        // Once the control plane has numbered it, the user is told that number (what approvers see) and where.
        let again = f.login(file: true)
        let sid = try #require(try f.h.engine.store.fleetServerID(request: local))
        #expect(again["request"] == String(local) && again["approve_id"] == String(sid) && again["approve_at"] == "https://cp.test:8443")
        #expect(again["message"]?.contains("an approver runs there: jit approve \(sid) (this host's request \(local))") == true, "\(again)")
        let waker = Waker()
        f.h.engine.register(waker, for: local)
        defer { f.h.engine.unregister(waker, for: local) }
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 3, reset: false, changes: [f.grant(77, request: 100)]))
        #expect(waker.wait(timeout: 0))
        guard case .decided(let m) = try f.h.engine.waitState(id: local, caller: D.root) else { Issue.record("still pending"); return }
        #expect(m["decision"] == "allow")
        #expect(f.login()["decision"] == "allow")
        #expect(try f.h.engine.store.request(id: local)?.state == .approved)
    }

    @Test func aRequestCancelledHereIsCancelledOnTheControlPlaneOnceAndOnlyIfItLeftTheHost() async throws {
        let f = try Fleet()
        // Never sent: cancelled here, nothing to tell, and the filing is not sent afterwards.
        let quiet = f.h.call(D.alice, "request", [("for", "1800"), ("reason", "first"), ("scope", "sudo")])
        #expect(f.h.call(D.alice, "cancel", [("request", quiet["id"]!)])["state"] == "cancelled")
        #expect(await f.sync.sendOutbox() == 0)
        #expect(await f.sync.sendCancels() == 0)
        #expect(f.plane.s.withLock { $0.filed.isEmpty && $0.cancelled.isEmpty })
        // Sent, then cancelled here: the control plane is told, once, while away it is told when back.
        let sent = f.h.call(D.alice, "request", [("for", "1800"), ("reason", "second"), ("scope", "sudo")])
        #expect(await f.sync.sendOutbox() == 1)
        let sid = try #require(try f.h.engine.store.fleetServerID(request: Int64(sent["id"]!)!))
        f.plane.s.withLock { $0.away = true }
        #expect(f.h.call(D.alice, "cancel", [("request", sent["id"]!)])["state"] == "cancelled")
        #expect(await f.sync.sendCancels() == 0)
        f.plane.s.withLock { $0.away = false }
        f.h.clock.advance(120)
        #expect(await f.sync.sendCancels() == 1)
        #expect(await f.sync.sendCancels() == 0, "told once")
        #expect(f.plane.s.withLock { $0.cancelled } == [sid])
        #expect(f.plane.s.withLock { $0.statuses[sid]?.state } == "cancelled")
        // Someone else's request cannot be cancelled by alice here (the engine's rule), so nothing is queued.
        let bobs = f.h.call(D.bob, "request", [("for", "1800"), ("reason", "third"), ("scope", "sudo")])
        #expect(await f.sync.sendOutbox() == 1)
        #expect(f.h.call(D.alice, "cancel", [("request", bobs["id"]!)])["code"] == "unauthorized")
        #expect(await f.sync.sendCancels() == 0)
    }

    @Test func whileTheServerIsAwayTheUserIsToldAndNothingIsLost() async throws {
        let f = try Fleet()
        f.plane.s.withLock { $0.away = true }
        #expect(await f.sync.streamOnce() == false)
        let r = f.h.call(D.alice, "request", [("for", "1800"), ("reason", "deploy"), ("scope", "sudo")])
        #expect(r["state"] == "pending")
        #expect(r["message"] == "the control plane (https://cp.test:8443) cannot be reached: your request \(r["id"]!) is queued and will be sent when it is back; break-glass exists: jit request --break-glass --reason TEXT")
        #expect(await f.sync.sendOutbox() == 0)
        let row = try #require(try f.h.engine.store.fleetOutbox().first)
        #expect(row.attempts == 1 && row.sentAt == nil && row.lastError?.contains("connection refused") == true)
        f.plane.s.withLock { $0.away = false }
        f.h.clock.advance(5)
        #expect(await f.sync.sendOutbox() == 1)
        #expect(f.plane.s.withLock { $0.filed.map(\.seq) } == [row.seq])
        #expect(f.plane.s.withLock { $0.filed[0].duration } == 1800)
    }

    @Test func aDenialIsLearntByPollingAndNeverCached() async throws {
        let f = try Fleet()
        let local = try #require(f.login(file: true)["request"].flatMap { Int64($0) })
        await f.sync.sendOutbox()
        f.plane.s.withLock { st in st.statuses[100]?.state = "denied"; st.statuses[100]?.message = "request 100 was denied by bob: not today" }
        await f.sync.pollOpen()
        let r = try #require(try f.h.engine.store.request(id: local))
        #expect(r.state == .denied && r.decidedBy == "control plane")
        // The next attempt is asked again, not refused from a cached denial.
        let again = f.login(file: true)
        #expect(again["decision"] == "pending" && again["request"] != String(local))
    }

    @Test func aRequestTheServerRefusesEndsWithItsReason() async throws {
        let f = try Fleet()
        let local = try #require(f.login(file: true)["request"].flatMap { Int64($0) })
        f.plane.s.withLock { $0.refuse = FleetError("unauthorized", "no rule lets alice ask for login in production") }
        await f.sync.sendOutbox()
        let r = try #require(try f.h.engine.store.request(id: local))
        #expect(r.state == .denied && r.comment?.contains("no rule lets alice") == true)
        #expect(try f.h.engine.store.dueFleetOutbox(now: f.now.addingTimeInterval(3600)).isEmpty)
    }

    @Test func approvalsHappenOnTheControlPlane() throws {
        let f = try Fleet()
        let id = try #require(f.login(file: true)["request"])
        let a = f.h.call(D.bob, "approve", [("id", id)])
        #expect(a["code"] == "unauthorized")
        #expect(a["message"]?.contains("approved on the control plane (https://cp.test:8443)") == true)
        #expect(f.h.call(D.root, "deny", [("id", id)])["message"]?.contains("denied on the control plane") == true)
    }

    // MARK: the event stream

    @Test func theEventStreamAppliesEachBatchInOrderFromTheStoredCursor() async throws {
        let f = try Fleet()
        f.plane.s.withLock { $0.eventStreams = [
            [.batch(FleetWire.GrantStream(cursor: 7, reset: true, changes: [f.grant(41)])), .ping],
            [.batch(FleetWire.GrantStream(cursor: 9, reset: false, changes: [f.grant(41, state: "revoked")]))],
        ] }
        #expect(await f.sync.eventsOnce() == .ended)
        #expect(f.login()["decision"] == "allow")
        #expect(try f.h.engine.store.fleetCursor().cursor == 7)
        // The next stream starts where the last applied batch left off, and its revocation ends the grant.
        #expect(await f.sync.eventsOnce() == .ended)
        #expect(f.plane.s.withLock { $0.eventCursorsAsked } == [0, 7])
        #expect(f.login()["decision"] == "deny")
        #expect(try f.h.engine.store.fleetCursor().cursor == 9)
    }

    @Test func aPingIsContactAndAServerWithoutEventsIsLongPolled() async throws {
        let f = try Fleet(offline: .strict)
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 1, reset: true, changes: [f.grant(1, minutes: 60)]))
        f.plane.s.withLock { $0.away = true }
        #expect(await f.sync.eventsOnce() == nil)
        #expect(!f.h.engine.store.fleet.reachable)
        f.h.clock.advance(601)
        #expect(f.login()["decision"] == "deny", "strict: nothing heard for offline_grace")
        // The server is back and says only 'ping': that is contact, and the cached grant is honoured again.
        f.plane.s.withLock { $0.away = false; $0.eventStreams = [[.ping]] }
        #expect(await f.sync.eventsOnce() == .ended)
        #expect(f.h.engine.store.fleet.reachable)
        #expect(f.login()["decision"] == "allow")
        // An older server (no event stream) is told apart from an unreachable one.
        f.plane.s.withLock { $0.eventStreams = nil }
        #expect(await f.sync.eventsOnce() == .unsupported)
        #expect(f.h.engine.store.fleet.reachable)
    }

    // MARK: offline modes

    @Test func strictRefusesFleetGrantsAfterTheGraceButBreakGlassWorks() async throws {
        let f = try Fleet(offline: .strict)
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 1, reset: true, changes: [f.grant(1, minutes: 60)]))
        #expect(f.login()["decision"] == "allow")
        f.plane.s.withLock { $0.away = true }
        #expect(await f.sync.streamOnce() == false)
        f.h.clock.advance(599)
        #expect(f.login()["decision"] == "allow")
        f.h.clock.advance(2)
        #expect(f.login()["decision"] == "deny")
        #expect(f.h.engine.store.fleet.isStrictOffline(now: f.now))
        // Break-glass is local and always works.
        let bg = f.h.call(D.ivan, "request", [("for", "600"), ("reason", "db down"), ("scope", "login"), ("break_glass", "1")])
        #expect(bg["state"] == "approved")
        #expect(try f.h.engine.store.coveringGrant(user: "ivan", kind: .login, now: f.now) != nil)
        // The server is back: the cached grant is honoured again.
        f.plane.s.withLock { $0.away = false }
        #expect(await f.sync.streamOnce())
        #expect(f.login()["decision"] == "allow")
    }

    @Test func bestEffortKeepsCachedGrantsUntilTheyExpire() async throws {
        let f = try Fleet()
        _ = try f.sync.apply(FleetWire.GrantStream(cursor: 1, reset: true, changes: [f.grant(1, minutes: 60)]))
        f.plane.s.withLock { $0.away = true }
        #expect(await f.sync.streamOnce() == false)
        f.h.clock.advance(3000)
        #expect(f.login()["decision"] == "allow")
        f.h.clock.advance(601)
        #expect(f.login()["decision"] == "deny")
    }

    // MARK: the trail

    @Test func eventsAreShippedOnceAndResentAfterAFailure() async throws {
        let f = try Fleet()
        _ = f.login(file: true)
        let before = try f.h.engine.store.fleetEvents(after: 0, limit: 1000).count
        #expect(before > 0)
        f.plane.s.withLock { $0.away = true }
        #expect(await f.sync.shipEvents() == 0)
        #expect(try f.h.engine.store.fleetCursor().eventsAcked == 0)
        f.plane.s.withLock { $0.away = false }
        #expect(await f.sync.shipEvents() == before)
        let acked = try f.h.engine.store.fleetCursor().eventsAcked
        #expect(acked == f.plane.s.withLock { $0.events.keys.max() })
        let posts = f.plane.s.withLock { $0.eventPosts }
        #expect(await f.sync.shipEvents() == 0)
        #expect(f.plane.s.withLock { $0.eventPosts } == posts)
        let filed = try #require(f.plane.s.withLock { $0.events.values.first { $0.kind == "request.filed" } })
        #expect(filed.user == "alice" && filed.data["service"] == "sshd" && filed.data["request_id"] != nil)
    }

    /// 413 on a batch: halved until it passes; one event too large on its own (413) or refused on its own (400)
    /// is recorded locally as not shipped, then stepped over; nothing else is lost, nothing stalls.
    @Test func aRefusedBatchIsSplitAndAnEventRefusedAloneIsRecordedThenSkipped() async throws {
        let f = try Fleet()
        for i in 0..<40 { try f.h.engine.store.record("test.event", actor: "jitd", user: "alice", data: [("n", String(i))], at: f.now) }
        // One event far larger than the rest: alone it is over the limit.
        try f.h.engine.store.record("test.big", actor: "jitd", user: "alice", data: [("blob", String(repeating: "x", count: 20_000))], at: f.now)
        for i in 0..<10 { try f.h.engine.store.record("test.after", actor: "jitd", user: "alice", data: [("n", String(i))], at: f.now) }
        let all = try f.h.engine.store.fleetEvents(after: 0, limit: 1000)
        let big = try #require(all.first { $0.kind == "test.big" }).id
        let bad = try #require(all.filter { $0.kind == "test.event" }.last).id
        f.plane.s.withLock { $0.eventBodyLimit = 8_000; $0.badEvents = [bad] }
        await f.sync.shipEvents()
        let (stored, batches) = f.plane.s.withLock { ($0.events, $0.batches) }
        // Split: after the full batch, smaller ones.
        #expect(batches.count > 3)
        #expect(batches[0].count == all.count)
        #expect(batches.contains { $0 == [big] } && batches.contains { $0 == [bad] })
        // Every event but the two refused ones reached the server, and the two records of their refusal did too.
        for e in all where e.id != big && e.id != bad { #expect(stored[e.id] != nil, "event \(e.id) \(e.kind) not shipped") }
        #expect(stored[big] == nil && stored[bad] == nil)
        let records = stored.values.filter { $0.kind == "fleet.event_unshipped" }.sorted { $0.seq < $1.seq }
        #expect(records.map { $0.data["event"] } == [String(bad), String(big)].sorted { Int($0)! < Int($1)! })
        #expect(records.first { $0.data["event"] == String(big) }?.data["code"] == "too_large")
        #expect(records.first { $0.data["event"] == String(bad) }?.data["reason"]?.contains("seq \(bad)") == true)
        // They are in the host's own trail, and the cursor is past everything.
        let local = try f.h.engine.store.fleetEvents(after: 0, limit: 1000).filter { $0.kind == "fleet.event_unshipped" }
        #expect(local.count == 2)
        #expect(try f.h.engine.store.fleetCursor().eventsAcked == (stored.keys.max() ?? 0))
        #expect(try f.h.engine.store.fleetEvents(after: try f.h.engine.store.fleetCursor().eventsAcked, limit: 10).isEmpty)
        // Nothing more to send: a second pass posts nothing.
        let posts = f.plane.s.withLock { $0.eventPosts }
        #expect(await f.sync.shipEvents() == 0)
        #expect(f.plane.s.withLock { $0.eventPosts } == posts)
    }

    /// A server that refuses every event does not make the host skip its whole trail: it steps over a few, then waits.
    @Test func aServerThatRefusesEverythingDoesNotEmptyTheTrail() async throws {
        let f = try Fleet()
        for i in 0..<30 { try f.h.engine.store.record("test.event", actor: "jitd", user: "alice", data: [("n", String(i))], at: f.now) }
        let ids = Set(try f.h.engine.store.fleetEvents(after: 0, limit: 1000).map(\.id))
        f.plane.s.withLock { $0.badEvents = ids }
        await f.sync.shipEvents()
        let acked = try f.h.engine.store.fleetCursor().eventsAcked
        let skipped = try f.h.engine.store.fleetEvents(after: 0, limit: 1000).filter { $0.kind == "fleet.event_unshipped" }
        #expect(skipped.count == FleetSync.maxSkipsInARow)
        #expect(ids.filter { $0 > acked }.count == ids.count - FleetSync.maxSkipsInARow)
        // Once the server takes events again, the rest goes through (and the records of the skipped ones).
        f.plane.s.withLock { $0.badEvents = [] }
        await f.sync.shipEvents()
        let stored = f.plane.s.withLock { $0.events }
        #expect(ids.filter { stored[$0] != nil }.count == ids.count - FleetSync.maxSkipsInARow)
        #expect(stored.values.filter { $0.kind == "fleet.event_unshipped" }.count == FleetSync.maxSkipsInARow)
    }

    @Test func renewalIsDueInTheLastThirdOfTheCertificatesLife() {
        let start = Date(timeIntervalSince1970: 0)
        let end = start.addingTimeInterval(90 * 86_400)
        #expect(!FleetSync.renewalDue(notBefore: start, notAfter: end, now: start.addingTimeInterval(59 * 86_400)))
        #expect(FleetSync.renewalDue(notBefore: start, notAfter: end, now: start.addingTimeInterval(61 * 86_400)))
    }
}

extension FleetHostTests {
    @Test func aRequestThatEndedHereUnsentIsNotSent() async throws {
        let f = try Fleet()
        f.plane.s.withLock { $0.away = true }
        let local = try #require(f.login(file: true)["request"].flatMap { Int64($0) })
        _ = f.h.call(D.alice, "cancel", [("request", String(local))])
        f.plane.s.withLock { $0.away = false }
        #expect(await f.sync.sendOutbox() == 0)
        #expect(f.plane.s.withLock { $0.filed.isEmpty })
        #expect(throws: ConfigError.self) { try Config.parse("environment: production\nserver: {offline_grace: 30s}\n") }
    }
}
