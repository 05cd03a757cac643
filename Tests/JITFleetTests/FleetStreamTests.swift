import Crypto
import Foundation
import JITCore
import JITFleet
@testable import JITServer
import Testing
import X509

private func grant(_ id: Int64, env: String = "staging", hosts: [String] = [], labels: [String] = [], state: String = "active") -> FleetWire.Grant {
    FleetWire.Grant(id: id, requestID: 1, user: "alice", environment: env, hosts: hosts, labels: labels, scope: "sudo", commands: [], runAs: "root",
                    state: state, startsAt: "2026-12-02T00:00:00Z", expiresAt: "2026-12-02T01:00:00Z", endedAt: nil, endedBy: nil,
                    noPassword: true, login: false, uses: nil, record: "")
}

@Suite struct StreamFilterTests {
    let web1 = StreamFilter(environment: "staging", name: "web1", labels: ["web", "eu"])

    @Test func environmentHostsAndLabels() {
        #expect(web1.matches(grant(1)))
        #expect(web1.matches(grant(1, labels: ["web"])))
        #expect(web1.matches(grant(1, labels: ["eu", "web"])))
        #expect(web1.matches(grant(1, hosts: ["db1", "web1"])))
        // Another environment, a label the host lacks, a list of hosts without this one: not this host's.
        #expect(!web1.matches(grant(1, env: "production")))
        #expect(!web1.matches(grant(1, labels: ["web", "db"])))
        #expect(!web1.matches(grant(1, hosts: ["db1"])))
        #expect(!web1.matches(grant(1, hosts: ["web1"], labels: ["db"])))
        // Names are compared exactly (no prefix, no case folding).
        #expect(!web1.matches(grant(1, hosts: ["WEB1"])))
        #expect(!web1.matches(grant(1, env: "Staging")))
        #expect(!StreamFilter(environment: "staging", name: "web1", labels: []).matches(grant(1, labels: ["web"])))
    }

    @Test func comesFromTheHostRecordOnly() {
        let rec = HostRecord(name: "db1", environment: "production", labels: ["db"], serial: "01", previousSerial: nil,
                             notAfter: Date(), enrolledAt: Date(), revokedAt: nil, lastSeen: nil)
        #expect(StreamFilter(rec) == StreamFilter(environment: "production", name: "db1", labels: ["db"]))
    }
}

@Suite struct StreamQueryTests {
    @Test func defaultsAndBounds() throws {
        #expect(try StreamQuery(cursor: nil, wait: nil) == StreamQuery(cursor: 0, wait: 30))
        #expect(try StreamQuery(cursor: "42", wait: "55") == StreamQuery(cursor: 42, wait: 55))
        #expect(try StreamQuery(cursor: "7", wait: "0") == StreamQuery(cursor: 7, wait: 0))
        for (c, w) in [("-1", "1"), ("x", "1"), ("1.5", "1"), ("99999999999999999999", "1"), ("1", "56"), ("1", "-1"), ("1", "soon")] {
            #expect(throws: FleetError.self) { try StreamQuery(cursor: c, wait: w) }
        }
    }
}

@Suite struct EnvironmentCacheTests {
    let all = StreamFilter(environment: "staging", name: "web1", labels: ["web"])

    @Test func answersOnlyTheRangeItCovers() throws {
        var c = EnvironmentCache(at: 10, capacity: 100)
        #expect(c.answer(all, after: 10, limit: 500) == FleetWire.GrantStream(cursor: 10, reset: false, changes: []))
        #expect(c.answer(all, after: 9, limit: 500) == nil)
        #expect(c.answer(all, after: 11, limit: 500) == nil)
        let ok = c.append([GrantChange(version: 12, grant: grant(1)), GrantChange(version: 15, grant: grant(2, labels: ["db"])),
                           GrantChange(version: 16, grant: grant(3))], through: 20)
        #expect(ok)
        // Version 15 is not this host's; the cursor still moves to what the cache has read.
        let a = try #require(c.answer(all, after: 10, limit: 500))
        #expect(a.changes.map(\.id) == [1, 3] && a.cursor == 20)
        #expect(c.answer(all, after: 12, limit: 500)?.changes.map(\.id) == [3])
        #expect(c.answer(all, after: 16, limit: 500) == FleetWire.GrantStream(cursor: 20, reset: false, changes: []))
        #expect(c.answer(all, after: 21, limit: 500) == nil)
    }

    @Test func aFullAnswerStopsAtItsLastChange() throws {
        var c = EnvironmentCache(at: 0, capacity: 100)
        _ = c.append((1...7).map { GrantChange(version: $0, grant: grant($0)) }, through: 9)
        let a = try #require(c.answer(all, after: 0, limit: 3))
        #expect(a.changes.map(\.id) == [1, 2, 3] && a.cursor == 3)
        let b = try #require(c.answer(all, after: a.cursor, limit: 3))
        #expect(b.changes.map(\.id) == [4, 5, 6] && b.cursor == 6)
        let d = try #require(c.answer(all, after: b.cursor, limit: 3))
        #expect(d.changes.map(\.id) == [7] && d.cursor == 9)
    }

    @Test func capacityRaisesTheFloorAndOldCursorsGoToTheDatabase() {
        var c = EnvironmentCache(at: 0, capacity: 3)
        _ = c.append((1...5).map { GrantChange(version: $0, grant: grant($0)) }, through: 5)
        #expect(c.rows.map(\.version) == [3, 4, 5] && c.from == 2)
        #expect(c.answer(all, after: 1, limit: 500) == nil)
        #expect(c.answer(all, after: 2, limit: 500)?.changes.map(\.id) == [3, 4, 5])
    }

    @Test func rowsAlreadyHeldOrBehindAreIgnoredAndADatabaseThatWentBackIsRefused() {
        var c = EnvironmentCache(at: 0, capacity: 10)
        _ = c.append([GrantChange(version: 2, grant: grant(2))], through: 4)
        let forward = c.append([GrantChange(version: 2, grant: grant(2)), GrantChange(version: 6, grant: grant(6))], through: 6)
        #expect(forward)
        #expect(c.rows.map(\.version) == [2, 6])
        let back = c.append([], through: 5)
        #expect(!back)
        #expect(c.through == 6)
    }
}

@Suite struct HostBodiesTests {
    func event(_ seq: Int64, at: String = "2026-12-02T01:00:00Z", kind: String = "check", data: [String: String] = [:]) -> FleetWire.HostEvent {
        FleetWire.HostEvent(seq: seq, at: at, kind: kind, actor: "pam", user: "alice", data: data)
    }

    @Test func aGoodBatch() throws {
        let out = try HostBodies.check(FleetWire.EventBatch(events: [event(1, data: ["b": "2", "a": "1"]), event(2, at: "2026-12-02T01:00:00.250Z")]))
        #expect(out.map(\.seq) == [1, 2])
        #expect(out[0].data == #"{"a":"1","b":"2"}"#)
        #expect(out[1].at == "2026-12-02T01:00:00Z")
    }

    @Test func badBatchesNameTheEvent() {
        func refused(_ events: [FleetWire.HostEvent], _ words: String) {
            do {
                _ = try HostBodies.check(FleetWire.EventBatch(events: events))
                Issue.record("accepted: \(words)")
            } catch {
                #expect(error.code == "bad_request")
                #expect(error.message.contains(words), "\(error.message)")
            }
        }
        refused([event(1), event(0)], "events[1] (seq 0): seq must be > 0")
        refused([event(1), event(1)], "seq appears twice")
        refused([event(3, at: "yesterday")], "at must be an RFC 3339 time")
        refused([event(3, kind: "")], "kind is empty")
        refused([event(3, kind: String(repeating: "k", count: 300))], "kind is longer than 256")
        refused([event(3, data: ["k": String(repeating: "v", count: 65 * 1024)])], "too long")
        refused([event(3, data: ["k": "a\u{0}b"])], "NUL")
        refused([event(3, data: Dictionary(uniqueKeysWithValues: (0..<129).map { ("k\($0)", "v") }))], "more than 128 entries")
        refused((1...501).map { event($0) }, "at most 500 events")
    }

    /// A filing with a NUL anywhere, or a target that is not a host name, is refused before anything reads it
    /// (schemathesis once made PostgreSQL answer 503 for a NUL in `hosts`).
    @Test func filingsWithANulOrABadTargetAreRefused() throws {
        func refused(_ r: FleetWire.HostRequest, _ words: String) {
            do {
                try HostBodies.check(r)
                Issue.record("accepted: \(words)")
            } catch {
                #expect(error.code == "bad_request")
                #expect(error.message.contains(words), "\(error.message)")
            }
        }
        let ok = FleetWire.HostRequest(seq: 1, user: "alice", scope: "commands", commands: ["/usr/bin/true"], reason: "deploy",
                                       hosts: ["db1", "web-2.eu"], filedAt: "2026-12-02T01:00:00Z")
        try HostBodies.check(ok)
        var r = ok
        r.hosts = ["db1", "\u{0}x"]
        refused(r, "hosts[1]")
        r.hosts = ["DB1"]
        refused(r, "is not a host name")
        r = ok
        r.reason = "a\u{0}b"
        refused(r, "reason holds a NUL")
        r = ok
        r.commands = ["/usr/bin/true", "x\u{0}"]
        refused(r, "commands[1] holds a NUL")
    }
}

@Suite struct StreamConfigTests {
    let base = "public_url: https://jit.example.org:8443\ndatabase:\n  url: postgres://jit@127.0.0.1:5432/jit\n"

    @Test func defaultsAndKeys() throws {
        let d = try ServerConfig.parse(base)
        #expect(d.streamRetention == 7 * 86_400 && d.streamLimits.maxWaiters == 20_000)
        let c = try ServerConfig.parse(base + "stream:\n  retention: 2d\n  max_waiters: 500\n")
        #expect(c.streamRetention == 2 * 86_400 && c.streamLimits.maxWaiters == 500)
    }

    @Test func badValuesNameTheField() {
        for (text, field) in [("stream:\n  retention: 10s\n", "stream.retention"), ("stream:\n  max_waiters: 0\n", "stream.max_waiters"),
                              ("stream:\n  cursor: 1\n", "stream")] {
            do {
                _ = try ServerConfig.parse(base + text)
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.field.hasPrefix(field), "\(error)")
            }
        }
    }
}

/// A decision engine that files in memory: idempotent on (caller, seq), answers only the filer.
private actor MemoryFiling: HostFiling {
    var byKey: [String: FleetWire.RequestStatus] = [:]
    var filer: [Int64: String] = [:]
    var next: Int64 = 0

    func fileReportingReplay(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> (FleetWire.RequestStatus, created: Bool) {
        let key = "\(caller.record.name)/\(request.seq)"
        if let s = byKey[key] { return (s, false) }
        next += 1
        let s = FleetWire.RequestStatus(id: next, state: "pending", rule: "default", user: request.user, environment: caller.record.environment,
                                        hosts: [caller.record.name], approverGroups: ["ops"], grantID: nil, expiresAt: "2026-12-02T02:00:00Z", message: "ask ops")
        byKey[key] = s
        filer[next] = caller.record.name
        return (s, true)
    }

    func file(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        try await fileReportingReplay(request, from: caller).0
    }

    func status(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        guard filer[id] == caller.record.name, let s = byKey.values.first(where: { $0.id == id }) else {
            throw FleetError("not_found", "there is no request \(id) filed by this host")
        }
        return s
    }
}

@Suite struct HostRequestRouteTests {
    func caller(_ name: String) -> CallerHost {
        CallerHost(record: HostRecord(name: name, environment: "staging", labels: [], serial: "01", previousSerial: nil, notAfter: Date(),
                                      enrolledAt: Date(), revokedAt: nil, lastSeen: nil),
                   serial: "01", publicKey: Certificate.PublicKey(P256.Signing.PrivateKey().publicKey))
    }
    let req = FleetWire.HostRequest(seq: 1, user: "alice", scope: "sudo", reason: "deploy", filedAt: "2026-12-02T01:00:00Z")

    @Test func newIs201ReplayIs200AndOnlyTheFilerReads() async throws {
        let engine = MemoryFiling()
        let a = caller("web1"), b = caller("web2")
        let (first, c1) = try await FleetAPI.file(req, from: a, with: engine)
        #expect(c1 == .created && first.hosts == ["web1"])
        let (again, c2) = try await FleetAPI.file(req, from: a, with: engine)
        #expect(c2 == .ok && again == first)
        // The same seq from another host is that host's own request.
        let (other, c3) = try await FleetAPI.file(req, from: b, with: engine)
        #expect(c3 == .created && other.id != first.id)
        #expect(try await FleetAPI.status(String(first.id), for: a, with: engine) == first)
        await #expect(throws: FleetError.self) { try await FleetAPI.status(String(first.id), for: b, with: engine) }
    }

    @Test func badInputAndNoEngine() async {
        func code(_ body: () async throws -> Void) async -> String? {
            do { try await body(); return nil } catch let e as APIError { return "\(e.status.code) \(e.code)" } catch { return "\(error)" }
        }
        let engine = MemoryFiling(), a = caller("web1")
        var zero = req
        zero.seq = 0
        #expect(await code { _ = try await FleetAPI.file(zero, from: a, with: engine) } == "400 bad_request")
        #expect(await code { _ = try await FleetAPI.file(req, from: a, with: nil) } == "503 not_available")
        for raw in [nil, "x", "0", "-3", "1.5"] as [String?] {
            #expect(await code { _ = try await FleetAPI.status(raw, for: a, with: engine) } == "404 not_found")
        }
    }
}
