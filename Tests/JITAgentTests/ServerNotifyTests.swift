import Foundation
import Testing
import JITCore
import JITFleet
import Synchronization
import PostgresNIO
@testable import JITAgent
@testable import JITServer

/// The control plane's notifier (`notify:` in server.yaml, migration 6) on a real PostgreSQL: two replicas
/// deliver each message once, a row taken by a replica that died is delivered after its lease, a failing
/// channel is retried with the agent's back-off and then marked failed (with `notify.failed` in the central
/// trail), and every message about a request carries its page link.
@Suite struct ServerNotifyTests {
    static let publicURL = "https://jit.example.org:8443"

    /// Records what it is asked to send; fails while `failing` is set.
    final class Recorder: NotifyTransport {
        let sent = Mutex<[Store.OutboxRow]>([])
        let attempts = Atomic<Int>(0)
        let failing = Atomic<Bool>(false)
        func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult {
            attempts.add(1, ordering: .sequentiallyConsistent)
            if failing.load(ordering: .sequentiallyConsistent) { return .failed("channel '\(c.name)': 127.0.0.1:9 answered HTTP 500") }
            sent.withLock { $0.append(m) }
            return .sent
        }
        var rows: [Store.OutboxRow] { sent.withLock { $0 } }
    }

    final class Clock: Sendable {
        let now = Mutex<Date>(Date())
        func advance(_ s: Double) { now.withLock { $0 = $0.addingTimeInterval(s) } }
        var read: @Sendable () -> Date { { self.now.withLock { $0 } } }
    }

    static func channels(_ kinds: [NotifyChannel.Kind] = [.webhook]) -> NotifySettings {
        var s = NotifySettings()
        for k in kinds {
            var c = NotifyChannel(kind: k, name: k.rawValue)
            switch k {
            case .webhook, .slack: c.url = HTTPURL(host: "127.0.0.1", port: 9, path: "/\(k.rawValue)")
            case .email:
                c.from = "jit@example.org"
                c.to = ["ops@example.org"]
            }
            s.channels.append(c)
        }
        return s
    }

    func notifier(_ p: HostFilingTests.Plane, _ store: PostgresStore, _ settings: NotifySettings, _ t: any NotifyTransport, _ clock: Clock) -> ServerNotifications {
        let engine = p.engine.engine
        return ServerNotifications(store: store, settings: settings, policy: { engine.config }, publicURL: Self.publicURL, transport: t,
                            members: { _ in [] }, clock: clock.read, logger: .init(label: "test"))
    }

    func file(_ p: HostFilingTests.Plane, _ seq: Int64, host: String = "h1") async throws -> FleetWire.RequestStatus {
        try await p.engine.file(FleetWire.HostRequest(seq: seq, user: "judy", scope: "sudo", commands: [], reason: "OPS-\(seq) disk full", uses: nil,
                                                      hosts: [], rhost: "10.0.0.1", service: "sudo", filedAt: Timestamps.format(Date())),
                                from: p.caller(host))
    }

    func outbox(_ store: PostgresStore) async throws -> [(id: Int64, state: String, attempts: Int, channel: String)] {
        var out: [(id: Int64, state: String, attempts: Int, channel: String)] = []
        let rows = try await store.db.client.query("SELECT id, state, attempts, channel FROM notify_outbox ORDER BY id")
        for try await (id, s, a, c) in rows.decode((Int64, String, Int, String).self) { out.append((id, s, a, c)) }
        return out
    }

    @Test func twoReplicasDeliverEachMessageExactlyOnce() async throws {
        guard let p = try await HostFilingTests.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let other = try await p.pg.store()
        var ids: [Int64] = []
        // (At most 5 pending per user by default.)
        for seq in 1...4 { ids.append(try await file(p, Int64(seq)).id) }
        let rec = Recorder(), clock = Clock()
        let a = notifier(p, p.engine.store, Self.channels([.webhook, .slack, .email]), rec, clock)
        let b = notifier(p, other, Self.channels([.webhook, .slack, .email]), rec, clock)
        // Both replicas at once, several passes each: they expand the same queue and take from the same outbox.
        for _ in 0..<3 {
            async let x: Void = offPool { a.runOnce() }
            async let y: Void = offPool { b.runOnce() }
            _ = try await (x, y)
        }
        let sent = rec.rows
        #expect(sent.count == 12, "4 requests × 3 channels, each once: got \(sent.count)")
        #expect(Set(sent.map(\.id)).count == sent.count, "no outbox row was sent twice")
        #expect(Set(sent.map { "\($0.auditID)/\($0.channel)" }).count == 12, "one message per event and channel")
        let rows = try await outbox(other)
        #expect(rows.count == 12 && rows.allSatisfy { $0.state == "sent" && $0.attempts == 1 })
        for id in ids { #expect(sent.contains { $0.channel == "webhook" && $0.payload.contains("\"page_url\":\"\(Self.publicURL)/web/requests/\(id)\"") }) }
        var queued = 0
        for try await n in try await other.db.client.query("SELECT count(*)::int FROM notify_queue").decode(Int.self) { queued = n }
        #expect(queued == 0, "every queued event was expanded")
    }

    @Test func aRowTakenByAReplicaThatDiedIsSentAfterItsLease() async throws {
        guard let p = try await HostFilingTests.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let other = try await p.pg.store()
        let r = try await file(p, 1)
        let rec = Recorder(), deadClock = Clock(), clock = Clock()
        let dead = notifier(p, p.engine.store, Self.channels(), rec, deadClock)
        let alive = notifier(p, other, Self.channels(), rec, clock)
        // The first replica expands and takes the row (committed), then is "SIGKILLed": it never sends or marks it.
        let taken: ServerNotifications.Taken? = try await offPool {
            try dead.expand()
            return try dead.take(channel: "webhook")
        }
        #expect(taken?.requestID == r.id)
        try await offPool { alive.runOnce() }
        #expect(rec.rows.isEmpty, "a leased row is not sent by another replica while the lease holds")
        clock.advance(119)
        try await offPool { alive.runOnce() }
        #expect(rec.rows.isEmpty, "the lease is 120 s for a webhook with a 5 s timeout")
        clock.advance(2)
        try await offPool { alive.runOnce() }
        #expect(rec.rows.map(\.id) == [taken!.row.id], "after the lease another replica sends it")
        try await offPool { alive.runOnce() }
        #expect(rec.rows.count == 1, "and only once")
        #expect(try await outbox(other).map { $0.state } == ["sent"])
    }

    @Test func aFailingChannelIsRetriedWithBackoffThenMarkedFailed() async throws {
        guard let p = try await HostFilingTests.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let r = try await file(p, 1)
        let rec = Recorder(), clock = Clock()
        rec.failing.store(true, ordering: .sequentiallyConsistent)
        var settings = Self.channels()
        settings.maxAttempts = 3
        let n = notifier(p, p.engine.store, settings, rec, clock)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 1)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 1, "not due again before the back-off (1 s) has passed")
        clock.advance(1)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 2)
        clock.advance(1)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 2, "the second back-off is 2 s")
        clock.advance(1)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 3)
        let rows = try await outbox(p.engine.store)
        #expect(rows.count == 1 && rows[0].state == "failed" && rows[0].attempts == 3)
        clock.advance(3600)
        try await offPool { n.runOnce() }
        #expect(rec.attempts.load(ordering: .sequentiallyConsistent) == 3, "a failed row is never tried again")
        let trail = try await p.engine.store.db.auditEvents().filter { $0.event == "notify.failed" }
        #expect(trail.count == 1)
        #expect(trail.first?.data.contains("\"request\": \"\(r.id)\"") == true || trail.first?.data.contains("\"request\":\"\(r.id)\"") == true)
        #expect(trail.first?.data.contains("HTTP 500") == true)
    }

    @Test func everyMessageAboutARequestCarriesItsPageAndAHostsBreakGlassIsToldOnce() async throws {
        guard let p = try await HostFilingTests.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let r = try await file(p, 1)
        let rec = Recorder(), clock = Clock()
        let n = notifier(p, p.engine.store, Self.channels([.webhook, .slack, .email]), rec, clock)
        try await offPool { n.runOnce() }
        let page = "\(Self.publicURL)/web/requests/\(r.id)"
        let byChannel = Dictionary(rec.rows.map { ($0.channel, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byChannel.count == 3)
        let hook = try #require(byChannel["webhook"])
        let body = try #require(try JSONSerialization.jsonObject(with: Data(hook.payload.utf8)) as? [String: Any])
        #expect(body["page_url"] as? String == page)
        #expect(body["host"] as? String == "h1" && body["kind"] as? String == "request.filed")
        #expect(body["approver_groups"] as? [String] == ["sre", "security"])
        #expect(byChannel["slack"]?.payload.contains("<\(page)|Open request \(r.id) on the web page>") == true)
        #expect(byChannel["email"]?.payload.contains("Page:    \(page)") == true)
        #expect(byChannel["email"]?.recipients == ["ops@example.org"])

        // A host's break-glass arrives as a host event (POST /v1/events): told once, however often it is sent.
        let data = #"{"reason": "INC-1 <!channel> down", "scope": "sudo", "rule": "break-glass", "request_id": "7"}"#
        for _ in 0..<2 {
            try await p.engine.store.db.client.query("""
                INSERT INTO host_events (host, seq, at, kind, actor, user_name, data)
                VALUES ('h1', 41, now(), 'breakglass.bypass', 'dora', 'dora', \(data)::jsonb) ON CONFLICT (host, seq) DO NOTHING
                """)
        }
        try await offPool { n.runOnce() }
        let bg = rec.rows.filter { $0.kind == "breakglass.bypass" }
        #expect(bg.count == 3, "one per channel, once")
        let b = try #require(bg.first { $0.channel == "webhook" })
        let bb = try #require(try JSONSerialization.jsonObject(with: Data(b.payload.utf8)) as? [String: Any])
        #expect(bb["host"] as? String == "h1" && bb["environment"] as? String == "production" && bb["user"] as? String == "dora")
        #expect((bb["text"] as? String)?.contains("BREAK-GLASS: dora took access at once on production (h1), its request 7 there") == true)
        #expect(bb["page_url"] == nil, "the request is the host's: the control plane has no page for it")
        #expect(bg.first { $0.channel == "slack" }?.payload.contains("&lt;!channel&gt;") == true, "the host's words are escaped for Slack")
    }

    @Test func serverYAMLReadsNotifyWithTheAgentsParser() throws {
        let base = "public_url: https://jit.example.org:8443\ndatabase:\n  host: 127.0.0.1\n"
        let c = try ServerConfig.parse(base + "notify:\n  max_attempts: 4\n  webhooks:\n    - name: ops\n      url: https://hooks.example.org/jit\n      events: [request, break_glass]\n")
        #expect(c.notify.channels.map(\.name) == ["ops"] && c.notify.maxAttempts == 4)
        #expect(c.notify.channels[0].events == [.request, .breakGlass])
        do {
            _ = try ServerConfig.parse(base + "notify:\n  webhooks:\n    - name: ops\n      url: https://hooks.example.org/jit\n      events: [requests]\n", file: "/etc/jit/server.yaml")
            Issue.record("a bad event name was accepted")
        } catch {
            #expect(error.description.contains("/etc/jit/server.yaml") && error.description.contains("notify.webhooks[ops].events"), "\(error)")
        }
        do {
            _ = try ServerConfig.parse(base + "notify:\n  webhooks:\n    - name: ops\n      url: http://hooks.example.org/jit\n")
            Issue.record("clear-text http across the network was accepted")
        } catch {
            #expect(error.description.contains("allow_plain_http"))
        }
    }
}
