import Foundation
import Testing
import Synchronization
import JITCore
@testable import JITAgent
import GRDB

/// One-shot and N-use grants (#17): the account-stage check that admits a use spends it in the same
/// transaction, the last use ends the grant as `used` and removes its sudoers file, and a command grant
/// never admits another command line (#13 finding 2).
@Suite struct UsesTests {
    static let yaml = """
        environment: production
        rules:
          - name: once-id
            requesters: {groups: [jit-requesters]}
            scopes: [commands]
            commands: ["/usr/bin/id -u"]
            max_duration: 15m
            uses: 1
            approvals: auto
          - name: people
            requesters: {groups: [jit-requesters]}
            scopes: [sudo, commands]
            max_duration: 1h
            approvals: {groups: [jit-approvers]}
        """

    func sudo(_ h: Harness, _ command: String, runas: String = "root") -> Message {
        h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "run"), ("runas", runas), ("command", command)])
    }

    @Test func aOneShotGrantIsSpentByItsFirstUse() throws {
        let h = try Harness(yaml: Self.yaml)
        let r = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/id -u")])
        #expect(r["state"] == "approved" && r["uses"] == "1")
        let first = sudo(h, "/usr/bin/id -u")
        #expect(first["decision"] == "allow" && first["message"]?.contains("last use") == true)
        let g = try #require(try h.engine.store.grant(id: 1))
        #expect(g.state == .used && g.usesLeft == 0)
        #expect(h.effects.entries.contains("ended 1 used"))
        let second = sudo(h, "/usr/bin/id -u")
        #expect(second["decision"] == "deny" && second["message"]?.contains("grant 1 was spent") == true)
        let listed = h.call(D.alice, "grants")
        #expect(listed.records.first?.first { $0.0 == "state" }?.1 == "used")
        let kinds = try h.engine.store.events(Store.AuditQuery(limit: 100)).map(\.kind)
        #expect(kinds.contains("sudo.use") && kinds.contains("grant.used"))
    }

    @Test func aUseCheckedByTheUserThemselvesSpendsNothing() throws {
        let h = try Harness(yaml: Self.yaml)
        _ = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/id -u")])
        let mine = h.call(D.alice, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "run"), ("runas", "root"), ("command", "/usr/bin/id -u")])
        // Only the module (a root peer) asks 'check'; the user's own is refused and spends nothing.
        #expect(mine["code"] == "unauthorized")
        #expect(try h.engine.store.grant(id: 1)?.usesLeft == 1)
    }

    @Test func twoConcurrentFirstUsesAdmitAtMostOne() throws {
        let h = try Harness(yaml: Self.yaml)
        _ = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/id -u")])
        let allowed = Atomic<Int>(0)
        let engine = h.engine
        let check = Message("check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "run"), ("runas", "root"), ("command", "/usr/bin/id -u")])
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            if engine.handle(check, from: D.root)["decision"] == "allow" { allowed.add(1, ordering: .relaxed) }
        }
        #expect(allowed.load(ordering: .relaxed) == 1)
    }

    @Test func onceAndTheRuleCapTheUses() throws {
        let h = try Harness(yaml: Self.yaml)
        let r = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "sudo"), ("uses", "2")])
        let id = try #require(r["id"])
        #expect(h.call(D.bob, "approve", [("id", id)])["state"] == "approved")
        #expect(sudo(h, "/usr/bin/id")["message"]?.contains("1 of 2 uses left") == true)
        #expect(sudo(h, "/bin/sh -c id")["decision"] == "allow")
        #expect(sudo(h, "/usr/bin/id")["decision"] == "deny")
        #expect(h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("uses", "1")])["code"] == "invalid")
    }

    @Test func aCommandGrantAdmitsOnlyItsCommandLineAndRunAs() throws {
        let h = try Harness(yaml: Self.yaml)
        let r = h.call(D.alice, "request", [("for", "600"), ("reason", "x"), ("scope", "commands"), ("command", "/usr/bin/systemctl restart nginx")])
        _ = h.call(D.bob, "approve", [("id", try #require(r["id"]))])
        #expect(sudo(h, "/usr/bin/systemctl restart nginx")["decision"] == "allow")
        let shell = sudo(h, "/bin/sh -c id")
        #expect(shell["decision"] == "deny" && shell["message"]?.contains("no active grant covers '/bin/sh -c id' as root") == true)
        #expect(sudo(h, "/usr/bin/systemctl restart nginx", runas: "postgres")["decision"] == "deny")
        let unsure = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("unsure", "sudo -s (shell)"), ("runas", "root")])
        #expect(unsure["decision"] == "deny" && unsure["message"]?.contains("only a grant for all commands") == true)
        // Nothing was filed for the refused uses: the grant the user holds decided.
        #expect(h.call(D.bob, "list", [("pending", "1")])["count"] == "0")
    }
}

/// Migration "i17-uses-record" on a database written before it: grants keep their rows, the audit
/// triggers still fire on the rebuilt table, and `used` becomes a state the table accepts.
@Suite struct UsesMigrationTests {
    @Test func anOlderDatabaseIsUpgradedWithItsGrantsAndTriggers() throws {
        let dir = TempDir()
        let path = dir.file("old.db")
        do {
            let q = try DatabaseQueue(path: path)
            q.inDatabase { Store.addAuditFunctions($0) }
            try Store.migrator.migrate(q, upTo: "notify-v1")
            try q.write { db in
                try db.execute(sql: "INSERT INTO requests (user, uid, environment, scope, runas, duration, reason, state, created_at, expires_at) VALUES ('alice', 2001, 'p', 'sudo', 'root', 60, 'r', 'approved', 0, 0)")
                try db.execute(sql: "INSERT INTO grants (request_id, user, uid, environment, scope, runas, state, starts_at, expires_at) VALUES (1, 'alice', 2001, 'p', 'sudo', 'root', 'active', 0, 9999999999999)")
            }
        }
        let store = try Store(path: path)
        let g = try #require(try store.grant(id: 1))
        #expect(g.state == .active && g.uses == nil && g.record == .none)
        _ = try store.endGrant(id: 1, as: .revoked, by: "root", at: Date())
        let kinds = try store.events(Store.AuditQuery(limit: 100)).map(\.kind)
        #expect(kinds.contains("grant.started") && kinds.contains("grant.revoked"))
        #expect(try store.verifyAudit().problem == nil)
    }
}

@Suite struct TrustedPathTests {
    @Test func homeAndTemporaryFoldersAreNeverVouchedFor() {
        #expect(!Engine.isTrustedDir("/home/eve/bin"))
        #expect(!Engine.isTrustedDir("/tmp"))
        #expect(!Engine.isTrustedDir("/run/user/1000/bin"))
        #expect(Engine.isTrustedDir("/usr/bin"))
        #expect(Engine.isTrustedDir("/usr/local/no-such-folder"))
        let m = Message("check", [("sudo_mode", "run"), ("runas", "root"), ("command", "systemctl restart nginx"), ("path", "/home/eve/bin:/usr/bin:/bin")])
        guard case .unsure = SudoUse.from(m, isExecutable: Engine.isExecutableFile, isTrustedDir: Engine.isTrustedDir).what else {
            Issue.record("a home folder first in PATH was trusted"); return
        }
    }
}
