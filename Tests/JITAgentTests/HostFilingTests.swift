import Crypto
import Foundation
import Testing
import JITCore
import JITFleet
import X509
@testable import JITAgent
@testable import JITServer

/// `ServerEngine` as the host routes use it (`HostFiling`), on a real PostgreSQL: the filer is the caller,
/// idempotent on (host, seq), the caller's environment, targets enrolled in it, automatic rules for the filing
/// host only, use limits on exactly one host, users the server knows, and status for one's own filings only.
@Suite struct HostFilingTests {
    typealias D = FakeDirectory

    struct Plane {
        let engine: ServerEngine
        let pg: TestPostgres.Database
        let dir: TempDir
        func caller(_ name: String, _ env: String = "production", labels: [String] = ["web"]) -> CallerHost {
            let rec = HostRecord(name: name, environment: env, labels: labels, serial: "1", previousSerial: nil, notAfter: Date().addingTimeInterval(3600),
                                 enrolledAt: Date(), revokedAt: nil, lastSeen: nil)
            return CallerHost(record: rec, serial: "1", publicKey: Certificate.PublicKey(P256.Signing.PrivateKey().publicKey))
        }
    }

    static func plane(extra: String = "") async throws -> Plane? {
        guard let pg = try await TestPostgres.freshDatabase() else { return nil }
        let store = try await pg.store()
        for (name, env) in [("h1", "production"), ("h2", "production"), ("s1", "staging")] {
            try await store.db.client.query("INSERT INTO hosts (name, environment, labels, cert_serial, not_after) VALUES (\(name), \(env), \(["web"]), '1', now() + interval '1 hour')")
        }
        let dir = TempDir()
        let policy = dir.file("policy.yaml")
        try (DecisionStoreConformanceTests.yaml.replacingOccurrences(of: "environment: production\nlabels: [web]\n", with: "") + extra)
            .write(toFile: policy, atomically: true, encoding: .utf8)
        var cfg = pg.config
        cfg.policyPath = policy
        cfg.socket = dir.file("server.sock")
        let e = try ServerEngine(config: cfg, db: store.db, logger: .init(label: "test"), directory: D.standard)
        return Plane(engine: e, pg: pg, dir: dir)
    }

    func request(_ seq: Int64, _ user: String = "judy", scope: String = "sudo", commands: [String] = [], hosts: [String] = [], uses: Int? = nil) -> FleetWire.HostRequest {
        FleetWire.HostRequest(seq: seq, user: user, scope: scope, commands: commands, reason: "host filing", uses: uses, hosts: hosts,
                              rhost: "10.0.0.1", service: "sudo", filedAt: Timestamps.format(Date()))
    }

    func code(_ body: () async throws -> Void) async -> String? {
        do { try await body(); return nil } catch let e as FleetError { return e.code + ": " + e.message } catch { return "\(error)" }
    }

    @Test func hostsFileForThemselvesInTheirOwnEnvironment() async throws {
        guard let p = try await Self.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let h1 = p.caller("h1"), h2 = p.caller("h2")
        let (first, created) = try await p.engine.fileReportingReplay(request(1), from: h1)
        #expect(created && first.state == "pending" && first.environment == "production" && first.hosts == [] && first.rule == "two-sre")
        #expect(first.approverGroups == ["sre", "security"] && first.message.contains("approve \(first.id)"))
        let (again, replayed) = try await p.engine.fileReportingReplay(request(1, "alice"), from: h1)
        #expect(!replayed && again.id == first.id && again.user == "judy", "the same (host, seq) is the first answer, whatever the body")
        let other = try await p.engine.file(request(1), from: h2)
        #expect(other.id != first.id, "another host's seq 1 is another request")
        let stored = try #require(try p.engine.store.request(id: first.id))
        #expect(stored.filedByHost == "h1" && stored.hostSeq == 1)
        // Status: one's own filings only; another host's request reads as missing.
        #expect(try await p.engine.status(id: first.id, for: h1).id == first.id)
        #expect(await code { _ = try await p.engine.status(id: first.id, for: h2) }?.hasPrefix("not_found") == true)
        // Targets: enrolled hosts of the caller's environment only.
        let named = try await p.engine.file(request(2, hosts: ["h2"]), from: h1)
        #expect(named.hosts == ["h2"])
        #expect(await code { _ = try await p.engine.file(request(3, hosts: ["s1"]), from: h1) }?.hasPrefix("invalid") == true)
        #expect(await code { _ = try await p.engine.file(request(4, hosts: ["nope"]), from: h1) }?.contains("nope") == true)
        #expect(await code { _ = try await p.engine.file(request(5, "nobody-here"), from: h1) }?.contains("'nobody-here'") == true)
        #expect(await code { _ = try await p.engine.file(request(6, uses: 1), from: h1) }?.contains("exactly one host") == true)
        #expect(try await p.engine.file(request(7, hosts: ["h1"], uses: 1), from: h1).state == "pending")
    }

    @Test func anAutomaticRuleOpensOnlyTheFilingHost() async throws {
        guard let p = try await Self.plane() else { return }
        defer { p.engine.stop(); p.pg.close() }
        let h1 = p.caller("h1")
        let s = try await p.engine.file(request(1, scope: "commands", commands: ["/usr/bin/systemctl restart nginx"], hosts: ["h2"]), from: h1)
        #expect(s.state == "approved" && s.hosts == ["h1"], "a host's word alone never opens other hosts")
        let gid = try #require(s.grantID)
        let g = try #require(try p.engine.store.grant(id: gid))
        #expect(g.hosts == ["h1"] && g.environment == "production" && g.state == .active)
        // A staging host's request is decided for staging, whatever it asks.
        let s1 = try await p.engine.file(request(1), from: p.caller("s1", "staging"))
        #expect(s1.environment == "staging")
    }

    /// A compromised host files in any user's name (its PAM module is its word): its filings count against that
    /// user's budget on that host only, so it cannot use up the user's pending requests everywhere else.
    @Test func aUsersBudgetIsCountedPerFilingHost() async throws {
        guard let p = try await Self.plane(extra: "\nlimits:\n  pending_per_user: 2\n") else { return }
        defer { p.engine.stop(); p.pg.close() }
        let h1 = p.caller("h1"), h2 = p.caller("h2")
        for seq in 1...2 { #expect(try await p.engine.file(request(Int64(seq)), from: h1).state == "pending") }
        let refused = await code { _ = try await p.engine.file(request(3), from: h1) }
        #expect(refused?.hasPrefix("busy") == true && refused?.contains("judy already has 2 pending requests filed through host h1") == true
                && refused?.contains("limits.pending_per_user") == true, "\(refused ?? "filed")")
        // Another host, and the person's own filing on the control plane, still have theirs.
        #expect(try await p.engine.file(request(1), from: h2).state == "pending")
        #expect(try await p.engine.file(request(2), from: h2).state == "pending")
        #expect(await code { _ = try await p.engine.file(request(3), from: h2) }?.contains("through host h2") == true)
        let engine = p.engine.engine
        let own = try await offPool {
            try engine.fileDecision(Draft(environment: "production", scope: .sudo, duration: 600, reason: "own"), for: D.judy, extending: nil,
                                             origin: Filing(host: nil, seq: nil, facts: HostFacts(environment: "production", labels: ["web"]), hosts: [])).request
        }
        #expect(own.state == .pending && own.filedByHost == nil)
    }
}
