import Foundation
import Testing
import JITCore
@testable import JITAgent

typealias D = FakeDirectory

@Suite struct EngineTests {
    @Test func fileApproveGrantAndCheck() throws {
        let h = try Harness()
        // 'check' is the module's question: a user's own is refused (issue 13, finding 1).
        #expect(h.call(D.alice, "check", [("user", "alice"), ("service", "sshd")])["code"] == "unauthorized")
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "deny")
        let id = try h.file(scope: "sudo")
        let check = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])
        #expect(check["decision"] == "pending")
        #expect(check["request"] == String(id))
        let a = h.call(D.bob, "approve", [("id", String(id)), ("comment", "go")])
        #expect(a["state"] == "approved")
        #expect(a["grant"] == "1")
        #expect(h.effects.entries == ["started 1"])
        let ok = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])
        #expect(ok["decision"] == "allow")
        #expect(ok["grant"] == "1")
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "allow")
        let g = try #require(try h.engine.store.grant(id: 1))
        #expect(g.expiresAt == h.clock.now().addingTimeInterval(1800))
    }

    @Test func aLoginGrantDoesNotCoverSudo() throws {
        let h = try Harness()
        let id = try h.file(scope: "login")
        _ = h.call(D.bob, "approve", [("id", String(id))])
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "allow")
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] == "deny")
    }

    @Test func nobodyApprovesTheirOwnRequestAndNonApproversCannot() throws {
        let h = try Harness()
        let id = try h.file(D.carol)
        let own = h.call(D.carol, "approve", [("id", String(id))])
        #expect(own["code"] == "unauthorized")
        #expect(h.call(D.alice, "approve", [("id", String(id))])["code"] == "unauthorized")
        #expect(h.call(D.mallory, "deny", [("id", String(id))])["code"] == "unauthorized")
        #expect(h.call(D.root, "approve", [("id", String(id))])["code"] == "unauthorized")
        #expect(try h.engine.store.request(id: id)?.state == .pending)
        #expect(try h.engine.store.request(id: id)?.approvals == [])
    }

    @Test func twoApprovalsMeanTwoDistinctApprovers() throws {
        let h = try Harness { $0.policy.approvalsRequired = 2 }
        let id = try h.file()
        let first = h.call(D.bob, "approve", [("id", String(id))])
        #expect(first["state"] == "pending")
        #expect(first["approvals_needed"] == "1")
        #expect(h.call(D.bob, "approve", [("id", String(id))])["code"] == "conflict")
        #expect(try h.engine.store.grants(user: nil, activeOnly: false).isEmpty)
        let second = h.call(D.dave, "approve", [("id", String(id))])
        #expect(second["state"] == "approved")
        #expect(second.all("approval") == ["bob", "dave"])
    }

    @Test func decidedRequestsCannotBeDecidedAgain() throws {
        let h = try Harness()
        let id = try h.file()
        #expect(h.call(D.bob, "deny", [("id", String(id)), ("comment", "no")])["state"] == "denied")
        for (who, op) in [(D.dave, "approve"), (D.dave, "deny"), (D.alice, "cancel")] {
            let key = op == "cancel" ? "request" : "id"
            let r = h.call(who, op, [(key, String(id))])
            #expect(r["code"] == "conflict", "\(op): \(r)")
            #expect(r["message"]?.contains("denied") == true)
        }
        #expect(try h.engine.store.request(id: id)?.state == .denied)
    }

    @Test func onlyTheOwnerOrRootCancels() throws {
        let h = try Harness()
        let id = try h.file()
        #expect(h.call(D.carol, "cancel", [("request", String(id))])["code"] == "unauthorized")
        #expect(h.call(D.bob, "cancel", [("request", String(id))])["code"] == "unauthorized")
        #expect(h.call(D.alice, "cancel", [("request", String(id))])["state"] == "cancelled")
        let id2 = try h.file()
        #expect(h.call(D.root, "cancel", [("request", String(id2))])["state"] == "cancelled")
    }

    @Test func usersSeeOnlyTheirOwn() throws {
        let h = try Harness()
        let a = try h.file(D.alice)
        _ = try h.file(D.carol)
        #expect(h.call(D.alice, "list").records.count == 1)
        #expect(h.call(D.bob, "list").records.count == 2)
        #expect(h.call(D.root, "list").records.count == 2)
        #expect(h.call(D.carol, "list", [("mine", "1")]).records.count == 1)
        #expect(h.call(D.mallory, "list").records.count == 0)
        #expect(h.call(D.mallory, "show", [("id", String(a))])["code"] == "unauthorized")
        #expect(h.call(D.carol, "show", [("id", String(a))])["user"] == "alice")  // carol approves
        #expect(h.call(D.alice, "show", [("id", "999")])["code"] == "not-found")
    }

    @Test func onlyRootAsksForOthersAndFilesForOthers() throws {
        let h = try Harness()
        #expect(h.call(D.mallory, "check", [("user", "alice"), ("service", "sshd")])["code"] == "unauthorized")
        #expect(h.call(D.mallory, "request", [("for", "60"), ("reason", "x"), ("user", "alice")])["code"] == "unauthorized")
        #expect(h.call(D.mallory, "session_open", [("user", "alice"), ("service", "sshd"), ("pid", "1234")])["code"] == "unauthorized")
        let r = h.call(D.root, "request", [("for", "60"), ("reason", "x"), ("user", "alice")])
        #expect(r["user"] == "alice")
        #expect(h.call(D.root, "request", [("for", "60"), ("reason", "x"), ("user", "nobody-here")])["code"] == "not-found")
    }

    @Test func revokingNeedsRootOrAnApprover() throws {
        let h = try Harness()
        let id = try h.file()
        _ = h.call(D.bob, "approve", [("id", String(id))])
        #expect(h.call(D.alice, "revoke", [("id", "1")])["code"] == "unauthorized")
        #expect(h.call(D.mallory, "revoke", [("id", "1")])["code"] == "unauthorized")
        #expect(h.call(D.dave, "revoke", [("id", "1")])["state"] == "revoked")
        #expect(h.call(D.root, "revoke", [("id", "1")])["code"] == "conflict")
        #expect(h.effects.entries == ["started 1", "ended 1 revoked"])
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "deny")
    }

    @Test func pendingRequestsExpireAndAreNeverApproved() throws {
        let h = try Harness { $0.pendingTTL = 600 }
        let id = try h.file()
        h.clock.advance(599)
        h.engine.expireDue()
        #expect(try h.engine.store.request(id: id)?.state == .pending)
        h.clock.advance(1)
        h.engine.expireDue()
        #expect(try h.engine.store.request(id: id)?.state == .expired)
        #expect(h.call(D.bob, "approve", [("id", String(id))])["code"] == "conflict")
        #expect(try h.engine.store.grants(user: nil, activeOnly: false).isEmpty)
    }

    @Test func grantsExpireAtTheirTimeAndTheNextDeadlineIsTheStoresEarliest() throws {
        let h = try Harness()
        let a = try h.file(seconds: 100)
        let b = try h.file(seconds: 50)
        _ = h.call(D.bob, "approve", [("id", String(a))])
        _ = h.call(D.bob, "approve", [("id", String(b))])
        let t0 = h.clock.now()
        #expect(try h.engine.store.nextDeadline() == t0.addingTimeInterval(50))
        h.clock.advance(50)
        #expect(h.engine.expireDue() == t0.addingTimeInterval(100))
        #expect(try h.engine.store.grant(id: 2)?.state == .expired)
        #expect(try h.engine.store.grant(id: 1)?.state == .active)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["grant"] == "1")
        h.clock.advance(50)
        #expect(h.engine.expireDue() == nil)
        #expect(h.effects.entries.suffix(2) == ["ended 2 expired", "ended 1 expired"])
    }

    @Test func aGrantThatCannotBePutInPlaceFailsLoudlyAndIsRevoked() throws {
        let h = try Harness()
        let id = try h.file(scope: "sudo")
        h.effects.failNext.store(true, ordering: .sequentiallyConsistent)
        let r = h.call(D.bob, "approve", [("id", String(id))])
        #expect(r["code"] == "internal")
        #expect(r["message"]?.contains("revoked") == true)
        #expect(try h.engine.store.grant(id: 1)?.state == .revoked)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] != "allow")
    }

    @Test func checkGatesOnlyWhomThePolicyGates() throws {
        let h = try Harness()
        #expect(h.call(D.root, "check", [("user", "mallory"), ("service", "sshd")])["decision"] == "ignore")
        #expect(h.call(D.root, "check", [("user", "root"), ("service", "sshd")])["decision"] == "ignore")
        #expect(h.call(D.root, "check", [("user", "ghost"), ("service", "sshd")])["decision"] == "deny")
        let all = try Harness { $0.policy.gate = .all }
        let m = all.call(D.root, "check", [("user", "mallory"), ("service", "sshd"), ("file", "1")])
        #expect(m["decision"] == "deny")
        #expect(m["message"]?.contains("requester group") == true)
    }

    @Test func checkWithFileJoinsThePendingRequestInsteadOfFilingAnother() throws {
        let h = try Harness()
        let first = h.call(D.root, "check", [("user", "alice"), ("service", "sshd"), ("rhost", "10.1.2.3"), ("file", "1")])
        #expect(first["decision"] == "pending")
        let again = h.call(D.root, "check", [("user", "alice"), ("service", "sshd"), ("file", "1")])
        #expect(again["request"] == first["request"])
        #expect(try h.engine.store.requests(user: "alice", pendingOnly: true).count == 1)
        let r = try #require(try h.engine.store.request(id: Int64(first["request"]!)!))
        #expect(r.reason.contains("10.1.2.3"))
        #expect(r.duration == 3600)
        // A pending login request does not stand in for sudo: sudo files its own.
        let sudo = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root"), ("file", "1")])
        #expect(sudo["request"] != first["request"])
    }

    @Test(arguments: [
        [("for", "0"), ("reason", "x")],
        [("for", "-60"), ("reason", "x")],
        [("for", "1e3"), ("reason", "x")],
        [("for", "999999"), ("reason", "x")],
        [("for", "60"), ("reason", "")],
        [("for", "60"), ("reason", String(repeating: "r", count: 5000))],
        [("for", "60"), ("reason", "x"), ("scope", "root")],
        [("for", "60"), ("reason", "x"), ("scope", "commands")],
        [("for", "60"), ("reason", "x"), ("scope", "commands"), ("command", "rm -rf /")],
        [("for", "60"), ("reason", "x"), ("scope", "sudo"), ("runas", "ALL")],
        [("for", "60"), ("reason", "x"), ("env", "staging")],
        [("reason", "x")],
        [("for", "60"), ("reason", "x"), ("uid", "0")],
    ])
    func badRequestsChangeNothing(fields: [(String, String)]) throws {
        let h = try Harness()
        let r = h.call(D.alice, "request", fields)
        #expect(!r.isOK, "\(fields)")
        #expect(r["message"]?.isEmpty == false)
        #expect(try h.engine.store.requests(user: nil, pendingOnly: false).isEmpty)
    }

    @Test func unknownOperationsAndFieldsAreRefused() throws {
        let h = try Harness()
        #expect(h.call(D.alice, "sudo_me")["code"] == "bad-request")
        #expect(h.call(D.alice, "list", [("user", "bob")])["code"] == "bad-request")
        #expect(h.call(D.alice, "approve", [("id", "abc")])["code"] == "invalid")
        #expect(h.call(D.alice, "approve", [("id", "-1")])["code"] == "invalid")
    }

    @Test func waitersAreWokenByTheDecision() throws {
        let h = try Harness()
        let id = try h.file()
        let w = Waker()
        h.engine.register(w, for: id)
        defer { h.engine.unregister(w, for: id) }
        guard case .pending = try h.engine.waitState(id: id, caller: D.alice) else { Issue.record("not pending"); return }
        #expect(!w.wait(timeout: 0))
        _ = h.call(D.bob, "approve", [("id", String(id))])
        #expect(w.wait(timeout: 1))
        guard case .decided(let m) = try h.engine.waitState(id: id, caller: D.alice) else { Issue.record("not decided"); return }
        #expect(m["decision"] == "allow")
        #expect(throws: JITError.self) { try h.engine.waitState(id: id, caller: D.mallory) }
    }
}

@Suite struct StoreTests {
    @Test func aReopenedStorePicksUpExactlyWhereItWas() throws {
        let dir = TempDir()
        let clock = ManualClock()
        var c = Config()
        c.database = dir.file("jit.db")
        do {
            let e = Engine(config: c, store: try Store(path: c.database), clock: clock, directory: D.standard)
            _ = e.handle(Message("request", [("for", "600"), ("reason", "a"), ("scope", "sudo")]), from: D.alice)
            _ = e.handle(Message("request", [("for", "600"), ("reason", "b")]), from: D.alice)
            _ = e.handle(Message("approve", [("id", "1")]), from: D.bob)
        }
        let e2 = Engine(config: c, store: try Store(path: c.database), clock: clock, directory: D.standard)
        #expect(try e2.store.request(id: 2)?.state == .pending)
        #expect(try e2.store.request(id: 1)?.state == .approved)
        #expect(try e2.store.activeGrants().map(\.id) == [1])
        #expect(e2.handle(Message("check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")]), from: D.root)["decision"] == "allow")
    }

    @Test func aCorruptDatabaseIsRefusedWithTheFileNamed() throws {
        let dir = TempDir()
        let path = dir.file("jit.db")
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Store(path: path)
            Issue.record("opened a corrupt database")
        } catch {
            #expect(error.message.contains(path))
            #expect(error.message.contains("not a SQLite database") || error.message.contains("corrupt"))
        }
        // Nothing was written over it.
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(repeating: 0x41, count: 8192))
    }

    @Test(.enabled(if: getuid() != 0, "root ignores file permissions; tests/e2e covers it as root with a read-only tmpfs"))
    func aReadOnlyDatabaseIsRefused() throws {
        let dir = TempDir()
        let path = dir.file("jit.db")
        _ = try Store(path: path)
        chmod(path, 0o444)
        #expect(throws: JITError.self) { try Store(path: path) }
    }
}

@Suite struct PagingTests {
    @Test func longListingsComeInPagesThatFitAFrame() throws {
        let h = try Harness { c in
            c.limits.pendingPerUser = 1000
            c.limits.requestsPerMinute = 6000
        }
        let reason = String(repeating: "é", count: 490)
        for _ in 0..<250 {
            #expect(h.call(D.alice, "request", [("for", "60"), ("reason", reason)]).isOK)
        }
        var seen: [String] = []
        var before: String? = nil
        var pages = 0
        repeat {
            var f: [(String, String)] = []
            if let b = before { f.append(("before", b)) }
            let r = h.call(D.bob, "list", f)
            #expect(r.isOK)
            #expect(try r.encodeFrame().count <= Wire.maxFrame)
            seen += r.records.compactMap { $0.first { $0.0 == "id" }?.1 }
            before = r["next"]
            pages += 1
        } while before != nil && pages < 100
        #expect(seen.count == 250)
        #expect(Set(seen).count == 250)
        #expect(pages > 1)
    }
}

@Suite struct GrantCacheTests {
    @Test func theCheckCacheNeverOutlivesARevocationOrAnExpiry() throws {
        let h = try Harness()
        let id = try h.file(scope: "sudo", seconds: 60)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] == "pending")
        _ = h.call(D.bob, "approve", [("id", String(id))])
        // Warm the cache, then revoke: the very next check is refused.
        for _ in 0..<3 { #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] == "allow") }
        _ = h.call(D.bob, "revoke", [("id", "1")])
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] != "allow")
        // A grant past its time is refused even before the scheduler has expired it in the store.
        let id2 = try h.file(scope: "sudo", seconds: 60)
        _ = h.call(D.bob, "approve", [("id", String(id2))])
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] == "allow")
        h.clock.advance(61)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] != "allow")
    }
}
