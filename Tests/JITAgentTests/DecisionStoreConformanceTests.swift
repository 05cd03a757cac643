import Foundation
import Synchronization
import Testing
import JITCore
import JITServer
import Logging
@testable import JITAgent

/// One engine, two stores: every case runs the same calls through `Engine` over the SQLite `Store` and over
/// `PostgresStore`, and expects the same outcomes (filing, N-of-M approval, never one's own, deny / cancel /
/// expire, extension, MFA replay, paging, concurrent approvals, timed work once).
@Suite struct DecisionStoreConformanceTests {
    enum Kind: String, CaseIterable, Sendable { case sqlite, postgres }

    static let yaml = """
        environment: production
        labels: [web]
        pending_ttl: 2h
        rules:
          - name: restart-nginx
            requesters: {groups: [devs, jit-requesters]}
            scopes: [commands]
            commands: ["/usr/bin/systemctl restart nginx"]
            max_duration: 15m
            approvals: auto
          - name: reload-mfa
            requesters: {groups: [devs, jit-requesters]}
            scopes: [commands]
            commands: ["/usr/bin/systemctl reload nginx"]
            max_duration: 1h
            approvals: {groups: [sre], mfa: true}
          - name: two-sre
            requesters: {groups: [devs, jit-requesters]}
            scopes: [sudo]
            max_duration: 2h
            approvals:
              required: 2
              groups: [sre, security]
              escalation:
                - after: 30m
                  groups: [managers]
          - name: one-sre
            requesters: {groups: [devs, jit-requesters]}
            scopes: [login]
            max_duration: 4h
            approvals: {groups: [sre]}
        """

    /// Engines over one database: on PostgreSQL each has its own connection pool, as two replicas do.
    final class World: @unchecked Sendable {
        let clock: ManualClock
        let effects: RecordingEffects
        let engines: [Engine]
        let dirs: [TempDir]
        let pg: TestPostgres.Database?
        var engine: Engine { engines[0] }

        /// Nil (and a note) when PostgreSQL cannot run here and we are not root; as root it must run.
        static func make(_ kind: Kind, engines n: Int = 1) async throws -> World? {
            var config = try Config.parse(DecisionStoreConformanceTests.yaml)
            let dirs = (0..<n).map { _ in TempDir() }
            let clock = ManualClock(), effects = RecordingEffects()
            func engine(_ i: Int, _ decisions: (any DecisionStore)?) throws -> Engine {
                config.database = dirs[i].file("db/jit.db")
                config.socket = dirs[i].file("jitd.sock")
                return Engine(config: config, store: try Store(path: config.database), clock: clock, directory: FakeDirectory.standard,
                              effects: effects, sessions: FakeSessions(), decisions: decisions)
            }
            switch kind {
            case .sqlite:
                let e = try engine(0, nil)
                return World(clock: clock, effects: effects, engines: Array(repeating: e, count: n), dirs: dirs, pg: nil)
            case .postgres:
                guard let db = try await TestPostgres.freshDatabase() else { return nil }
                var es: [Engine] = []
                for i in 0..<n { es.append(try engine(i, try await db.store())) }
                return World(clock: clock, effects: effects, engines: es, dirs: dirs, pg: db)
            }
        }

        init(clock: ManualClock, effects: RecordingEffects, engines: [Engine], dirs: [TempDir], pg: TestPostgres.Database?) {
            self.clock = clock
            self.effects = effects
            self.engines = engines
            self.dirs = dirs
            self.pg = pg
        }
        deinit { pg?.close() }

        func call(_ who: Identity, _ word: String, _ fields: [(String, String)] = [], on i: Int = 0) -> Message {
            engines[i].handle(Message(word, fields), from: who)
        }

        func file(_ who: Identity, _ scope: Scope, _ seconds: Int64 = 1800) throws -> AccessRequest {
            try engine.file(Draft(scope: scope, duration: seconds, reason: "conformance"), for: who)
        }
    }

    /// Runs `body` off the cooperative pool (the store protocol blocks) with a fresh world of `kind`.
    func with(_ kind: Kind, engines: Int = 1, _ body: @escaping @Sendable (World, ManualClock) throws -> Void) async throws {
        guard let w = try await World.make(kind, engines: engines) else { return }
        try await offPool { try body(w, w.clock) }
    }

    typealias D = FakeDirectory

    @Test(arguments: Kind.allCases) func twoApproversNeverTheRequester(kind: Kind) async throws {
        try await with(kind) { w, _ in
            let r = try w.file(D.judy, .sudo)
            #expect(r.state == .pending && r.rule == "two-sre")
            let id = String(r.id)
            #expect(w.call(D.judy, "approve", [("id", id)])["code"] == "unauthorized", "judy is in sre but it is her own request")
            let first = w.call(D.erin, "approve", [("id", id)])
            #expect(first["state"] == "pending" && first["approvals_needed"] == "1", "\(first)")
            #expect(w.call(D.erin, "approve", [("id", id)])["code"] == "conflict")
            #expect(w.call(D.bob, "approve", [("id", id)])["code"] == "unauthorized")
            let second = w.call(D.grace, "approve", [("id", id)])
            #expect(second["state"] == "approved" && second["approved_via"] == "approvers", "\(second)")
            #expect(second.all("approval") == ["erin", "grace"])
            let gs = try w.engine.decisions.grants(user: nil, activeOnly: true)
            #expect(gs.count == 1 && gs[0].requestID == r.id && gs[0].scope == .sudo && gs[0].state == .active)
            #expect(try w.engine.decisions.approvalRecords(id: r.id).map(\.approver) == ["erin", "grace"])
            #expect(try w.engine.decisions.counts() == (pending: 0, active: 1))
        }
    }

    @Test(arguments: Kind.allCases) func denyCancelAndExpireTransitions(kind: Kind) async throws {
        try await with(kind) { w, clock in
            let a = try w.file(D.alice, .login)
            let denied = w.call(D.erin, "deny", [("id", String(a.id)), ("comment", "not now")])
            #expect(denied["state"] == "denied" && denied["decided_by"] == "erin", "\(denied)")
            #expect(w.call(D.erin, "approve", [("id", String(a.id))])["code"] == "conflict")
            let b = try w.file(D.alice, .login)
            #expect(w.call(D.mallory, "cancel", [("request", String(b.id))])["code"] == "unauthorized")
            #expect(w.call(D.alice, "cancel", [("request", String(b.id))])["state"] == "cancelled")
            let c = try w.file(D.alice, .login)
            #expect(try w.engine.decisions.pendingCount(user: "alice", filedBy: nil) == 1)
            #expect(try w.engine.decisions.nextDeadline() == c.expiresAt)
            clock.advance(2 * 3600)
            w.engine.expireDue()
            #expect(try w.engine.decisions.request(id: c.id)?.state == .expired)
            #expect(w.call(D.erin, "approve", [("id", String(c.id))])["code"] == "conflict")
            // An automatic grant ends at its time, once; a revoke after that is refused.
            let auto = try w.file(D.judy, .commands(["/usr/bin/systemctl restart nginx"]), 600)
            let gid = try #require(auto.grantID)
            clock.advance(601)
            w.engine.expireDue()
            w.engine.expireDue()
            #expect(try w.engine.decisions.grant(id: gid)?.state == .expired)
            #expect(w.effects.entries.filter { $0.hasPrefix("ended \(gid)") } == ["ended \(gid) expired"])
            #expect(w.call(D.root, "revoke", [("id", String(gid))])["code"] == "conflict")
        }
    }

    @Test(arguments: Kind.allCases) func revokeAndExtend(kind: Kind) async throws {
        try await with(kind) { w, clock in
            let auto = try w.file(D.judy, .commands(["/usr/bin/systemctl restart nginx"]), 600)
            let gid = try #require(auto.grantID)
            let g0 = try #require(try w.engine.decisions.grant(id: gid))
            #expect(g0.expiresAt == clock.now().addingTimeInterval(600))
            clock.advance(300)
            let ext = w.call(D.judy, "extend", [("grant", String(gid)), ("for", "600"), ("reason", "more")])
            #expect(ext["state"] == "approved", "\(ext)")
            let g1 = try #require(try w.engine.decisions.grant(id: gid))
            #expect(g1.expiresAt > g0.expiresAt && g1.state == .active)
            #expect(w.call(D.mallory, "revoke", [("id", String(gid))])["code"] == "unauthorized")
            let revoked = w.call(D.erin, "revoke", [("id", String(gid))])
            #expect(revoked["state"] == "revoked" && revoked["ended_by"] == "erin", "\(revoked)")
        }
    }

    @Test(arguments: Kind.allCases) func mfaCodesAreGoodOnce(kind: Kind) async throws {
        try await with(kind) { w, clock in
            let r = try w.file(D.judy, .commands(["/usr/bin/systemctl reload nginx"]))
            #expect(w.call(D.erin, "approve", [("id", String(r.id))])["message"]?.contains("--otp") == true)
            let enrolled = w.call(D.erin, "mfa_enroll")
            let secret = try #require(enrolled["secret"].flatMap(Base32.decode))
            #expect(w.call(D.erin, "mfa_enroll")["code"] == "conflict", "re-enrolling needs a current code")
            let code = TOTP.code(secret: secret, step: TOTP.step(at: clock.now()))
            let ok = w.call(D.erin, "approve", [("id", String(r.id)), ("otp", code)])
            #expect(ok["state"] == "approved", "\(ok)")
            let r2 = try w.file(D.alice, .commands(["/usr/bin/systemctl reload nginx"]))
            let replay = w.call(D.erin, "approve", [("id", String(r2.id)), ("otp", code)])
            #expect(replay["message"]?.contains("already used") == true, "\(replay)")
            #expect(try w.engine.decisions.request(id: r2.id)?.approvals == [])
            #expect(try w.engine.decisions.hasMFA(user: "erin"))
            #expect(w.call(D.root, "mfa_reset", [("user", "erin")])["user"] == "erin")
            #expect(try !w.engine.decisions.hasMFA(user: "erin"))
        }
    }

    @Test(arguments: Kind.allCases) func listingPagesNewestFirst(kind: Kind) async throws {
        try await with(kind) { w, _ in
            let ids = try [D.alice, D.judy, D.carol].map { try w.file($0, .login).id }
            let page1 = try w.engine.decisions.requests(user: nil, pendingOnly: true, before: nil, limit: 2)
            #expect(page1.map(\.id) == [ids[2], ids[1]])
            let page2 = try w.engine.decisions.requests(user: nil, pendingOnly: true, before: page1.last!.id, limit: 2)
            #expect(page2.map(\.id) == [ids[0]])
            #expect(try w.engine.decisions.requests(user: "judy", pendingOnly: false).map(\.id) == [ids[1]])
            let mine = w.call(D.alice, "list", [("pending", "1")])
            #expect(mine["count"] == "1", "alice sees only her own: \(mine)")
            #expect(w.call(D.erin, "list", [("pending", "1")])["count"] == "3", "an approver sees everyone's")
        }
    }

    @Test(arguments: Kind.allCases) func concurrentApprovalsMakeOneGrant(kind: Kind) async throws {
        // Two engines (on PostgreSQL two connection pools: two replicas) decide the same requests at once.
        try await with(kind, engines: 2) { w, _ in
            for _ in 0..<5 {
                let r = try w.file(D.alice, .login)
                let replies = Mutex<[Message]>([])
                let start = DispatchSemaphore(value: 0), done = DispatchGroup()
                for (i, who) in [D.erin, D.judy].enumerated() {
                    done.enter()
                    Thread {
                        start.wait()
                        let m = w.call(who, "approve", [("id", String(r.id))], on: i)
                        replies.withLock { $0.append(m) }
                        done.leave()
                    }.start()
                }
                start.signal()
                start.signal()
                done.wait()
                let rs = replies.withLock { $0 }
                #expect(rs.filter { $0["state"] == "approved" }.count == 1, "\(rs)")
                #expect(rs.filter { $0["code"] == "conflict" }.count == 1, "\(rs)")
                #expect(try w.engine.decisions.grants(user: "alice", activeOnly: true).filter { $0.requestID == r.id }.count == 1)
            }
        }
    }

    @Test(arguments: Kind.allCases) func escalationIsRecordedOnceAndOpensTheNextTier(kind: Kind) async throws {
        try await with(kind, engines: 2) { w, clock in
            let r = try w.file(D.judy, .sudo)
            #expect(w.call(D.heidi, "approve", [("id", String(r.id))])["code"] == "unauthorized", "managers only after escalation")
            clock.advance(1800)
            w.engines[0].expireDue()
            w.engines[1].expireDue()
            #expect(try w.engine.decisions.pendingWithEscalation().first { $0.request.id == r.id }?.escalated == 2)
            #expect(try !w.engine.decisions.markEscalated(id: r.id, tiers: 2), "already recorded: no second notification")
            let m = w.call(D.heidi, "approve", [("id", String(r.id))], on: 1)
            #expect(m["state"] == "approved" && m.all("approval") == ["heidi"], "the opened tier decides on its own: \(m)")
        }
    }

    @Test(arguments: Kind.allCases) func timedWorkEndsEachRowOnce(kind: Kind) async throws {
        try await with(kind, engines: 2) { w, clock in
            var gids: [Int64] = []
            for who in [D.judy, D.alice, D.carol, D.ivan] {
                for _ in 0..<3 { gids.append(try #require(try w.file(who, .commands(["/usr/bin/systemctl restart nginx"]), 60).grantID)) }
            }
            clock.advance(61)
            let ended = Mutex<[Int64]>([])
            let done = DispatchGroup()
            for i in 0..<2 {
                done.enter()
                Thread {
                    let got = (try? w.engines[i].decisions.expireDueGrants(now: clock.now())) ?? []
                    ended.withLock { $0 += got.map(\.id) }
                    done.leave()
                }.start()
            }
            done.wait()
            let all = ended.withLock { $0 }
            #expect(all.sorted() == gids.sorted(), "every due grant ended exactly once")
        }
    }

    /// The PostgreSQL store's synchronous calls never need a cooperative thread: twice as many callers as there
    /// are cores, each blocking a cooperative thread, on a store whose connection pool starts only while they
    /// all wait, all finish (two suites doing this at once on two cores once hung a CI run).
    @Test(.timeLimit(.minutes(1))) func blockingCallsFromEveryCooperativeThreadFinish() async throws {
        guard let w = try await World.make(.postgres), let pg = w.pg else { return }
        let db = try FleetDatabase(config: pg.config, logger: Logger(label: "test"))
        let store = PostgresStore(db: db, logger: Logger(label: "test"))
        let pool = Mutex<Task<Void, Never>?>(nil)
        defer { pool.withLock { $0?.cancel() } }
        Thread {
            usleep(200_000)
            pool.withLock { $0 = db.startOffPool() }
        }.start()
        let n = ProcessInfo.processInfo.activeProcessorCount * 2
        let counts = try await withThrowingTaskGroup(of: Int.self) { g in
            for _ in 0..<n { g.addTask { try store.requests(user: nil, pendingOnly: true, before: nil, limit: 5).count } }
            return try await g.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(counts == Array(repeating: 0, count: n))
    }
}
