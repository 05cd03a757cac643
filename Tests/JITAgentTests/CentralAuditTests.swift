import Foundation
import JITCore
import JITFleet
@testable import JITServer
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `jit audit` against the control plane: the central trail (`fleet_audit` and the hosts' `host_events`) on a
/// throw-away PostgreSQL, read as an approver (everyone's) and as a plain user (their own), page by page.
@Suite struct CentralAuditTests {
    static func database() async throws -> (FleetDatabase, TestPostgres.Database)? {
        guard let pg = try await TestPostgres.freshDatabase() else { return nil }
        return (try await pg.store().db, pg)
    }

    static func event(_ seq: Int64, _ at: String, _ kind: String, user: String, data: [String: String] = [:]) -> FleetWire.HostEvent {
        FleetWire.HostEvent(seq: seq, at: at, kind: kind, actor: "jitd", user: user, data: data)
    }

    static func v(_ r: [(String, String)], _ k: String) -> String? { r.first { $0.0 == k }?.1 }

    let bob = Identity(uid: 1002, name: "bob", groups: ["sre"])
    let alice = Identity(uid: 1001, name: "alice", groups: ["devs"])

    @Test func anApproverReadsDecisionsAndHostEventsAUserOnlyTheirOwn() async throws {
        guard let (db, pg) = try await Self.database() else { return }
        defer { pg.close() }
        try await db.audit("request.approved", actor: "bob", data: ["user": "alice", "request": "7", "via": "approvers"])
        try await db.audit("login", actor: "person:bob", data: ["key": "SHA256:x"])
        _ = try await db.storeEvents(host: "h1", try HostBodies.check(FleetWire.EventBatch(events: [
            Self.event(3, "2026-01-02T01:00:00Z", "session.open", user: "alice", data: ["grant_id": "5", "service": "sshd"]),
            Self.event(4, "2026-01-02T01:00:01Z", "check", user: "carol", data: ["service": "sudo"]),
        ])))
        let all = await CentralAudit.read(Message("audit"), as: bob, isApprover: true, db: db)
        #expect(all.isOK, "\(all)")
        #expect(all.records.map { Self.v($0, "kind") } == ["session.open", "check", "request.approved", "login"])
        #expect(all["next"] == nil)
        let host = all.records[0], decision = all.records[2]
        #expect(Self.v(host, "d_source") == "host" && Self.v(host, "d_host") == "h1" && Self.v(host, "grant") == "5" && Self.v(host, "user") == "alice")
        #expect(Self.v(host, "d_service") == "sshd" && Self.v(host, "at") == "2026-01-02T01:00:00Z" && Self.v(host, "id") == "3")
        #expect(Self.v(decision, "d_source") == "server" && Self.v(decision, "request") == "7" && Self.v(decision, "actor") == "bob")
        #expect(Self.v(decision, "user") == "alice" && Self.v(decision, "d_via") == "approvers" && Self.v(decision, "d_user") == nil)
        // A plain user: only events about them; another user's: refused with the reason.
        let mine = await CentralAudit.read(Message("audit"), as: alice, isApprover: false, db: db)
        #expect(mine.records.map { Self.v($0, "kind") } == ["session.open", "request.approved"])
        let theirs = await CentralAudit.read(Message("audit", [("user", "carol")]), as: alice, isApprover: false, db: db)
        #expect(theirs["code"] == "unauthorized" && theirs["message"]?.contains("only approvers") == true, "\(theirs)")
        #expect(await CentralAudit.read(Message("audit", [("user", "carol")]), as: bob, isApprover: true, db: db).records.count == 1)
        // The local filters.
        #expect(await CentralAudit.read(Message("audit", [("grant", "5")]), as: bob, isApprover: true, db: db).records.map { Self.v($0, "kind") } == ["session.open"])
        let since = await CentralAudit.read(Message("audit", [("since", "2026-06-01T00:00:00Z")]), as: bob, isApprover: true, db: db)
        #expect(since.records.map { Self.v($0, "kind") } == ["request.approved", "login"])
        let until = await CentralAudit.read(Message("audit", [("until", "2026-01-02T01:00:00Z")]), as: bob, isApprover: true, db: db)
        #expect(until.records.map { Self.v($0, "kind") } == ["session.open"])
        for bad in [("after", "12"), ("grant", "x"), ("since", "yesterday"), ("host", "h1")] {
            let r = await CentralAudit.read(Message("audit", [bad]), as: bob, isApprover: true, db: db)
            #expect(!r.isOK && r["message"]?.contains(bad.0) == true, "\(bad) \(r)")
        }
    }

    @Test func theTrailIsPagedWithoutGapsOrRepeats() async throws {
        guard let (db, pg) = try await Self.database() else { return }
        defer { pg.close() }
        // Two hosts with the same seqs and the same times: the cursor tells them apart.
        for host in ["h1", "h2"] {
            for start in stride(from: 1, to: 400, by: 200) {
                let events = (start..<start + 200).map { Self.event(Int64($0), "2026-01-02T01:00:0\($0 % 3)Z", "check", user: "alice") }
                _ = try await db.storeEvents(host: host, try HostBodies.check(FleetWire.EventBatch(events: events)))
            }
        }
        var seen: [String] = []
        var m = Message("audit")
        var pages = 0
        while true {
            let r = await CentralAudit.read(m, as: bob, isApprover: true, db: db)
            #expect(r.isOK, "\(r)")
            #expect(r.records.count <= CentralAudit.pageSize)
            seen += r.records.map { "\(Self.v($0, "d_host") ?? "?")/\(Self.v($0, "id") ?? "?")" }
            pages += 1
            guard let next = r["next"], pages < 10 else { break }
            m = Message("audit", [("after", next)])
        }
        #expect(pages == 2)
        #expect(seen.count == 800 && Set(seen).count == 800)
    }

    /// The two sources are read apart (each through its index) and merged: at the same microsecond the hosts'
    /// events come first, a page boundary inside such a tie loses and repeats nothing, and `since` with the
    /// cursor keeps both.
    @Test func serverAndHostEventsAtTheSameMomentArePagedInOneOrder() async throws {
        guard let (db, pg) = try await Self.database() else { return }
        defer { pg.close() }
        let times = ["2026-01-02T01:00:00Z", "2026-01-02T01:00:01Z", "2026-01-02T01:00:02Z"]
        for host in ["h1", "h2"] {
            let events = (1...300).map { Self.event(Int64($0), times[$0 % 3], "check", user: "alice") }
            _ = try await db.storeEvents(host: host, try HostBodies.check(FleetWire.EventBatch(events: events)))
        }
        for (i, t) in times.enumerated() {
            try await db.client.query("""
                INSERT INTO fleet_audit (at, event, actor, host, data)
                SELECT \(t)::timestamptz, 'request.approved', 'bob', CASE WHEN n % 2 = 0 THEN 'h1' END, jsonb_build_object('user', 'alice', 'n', n::text)
                FROM generate_series(1, 150 + \(i)) n
                """)
        }
        func readAll(_ first: [(String, String)]) async -> [[(String, String)]] {
            var out: [[(String, String)]] = []
            var m = Message("audit", first)
            for _ in 0..<10 {
                let r = await CentralAudit.read(m, as: bob, isApprover: true, db: db)
                #expect(r.isOK, "\(r)")
                out += r.records
                guard let next = r["next"] else { break }
                m = Message("audit", first + [("after", next)])
            }
            return out
        }
        let all = await readAll([])
        let keys = all.map { "\(Self.v($0, "d_source")!)/\(Self.v($0, "d_host") ?? "")/\(Self.v($0, "id")!)" }
        #expect(all.count == 600 + 453 && Set(keys).count == all.count, "\(all.count) read, \(Set(keys).count) distinct")
        // Oldest first; within one moment the hosts' events, then the server's.
        let order = all.map { "\(Self.v($0, "at")!) \(Self.v($0, "d_source")!)" }
        let expected = times.flatMap { t in Array(repeating: "\(t) host", count: 200) + Array(repeating: "\(t) server", count: 150 + times.firstIndex(of: t)!) }
        #expect(order == expected)
        let since = await readAll([("since", times[1])])
        #expect(since.count == 400 + 151 + 152 && since.allSatisfy { Self.v($0, "at") != times[0] })
        let user = await readAll([("user", "alice"), ("since", times[2])])
        #expect(user.count == 200 + 152)
    }
}
