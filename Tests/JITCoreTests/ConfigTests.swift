import Foundation
import Testing
@testable import JITCore

@Suite struct ConfigTests {
    func parse(_ s: String) throws(ConfigError) -> Config { try Config.parse(s, file: "t.yaml") }

    func error(_ s: String) -> ConfigError? {
        do { _ = try parse(s); return nil } catch { return error }
    }

    @Test func theShippedConfigIsValidAndSafe() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../packaging/jit.yaml")
        let c = try Config.load(path: url.path)
        #expect(c.environment == "production")
        #expect(c.policy.requesterGroups == ["jit-requesters"])
        #expect(c.policy.approverGroups == ["jit-approvers"])
        #expect(c.policy.approvalsRequired == 1)
        #expect(c.policy.maxDuration == 4 * 3600)
        #expect(c.policy.requireReason)
        #expect(c.pendingTTL == 3600)
        #expect(c.socket == "/run/jit/jitd.sock")
        #expect(c.database == "/var/lib/jit/jit.db")
        #expect(c.sudoersDir == "/etc/sudoers.d")
    }

    @Test func limitsTakeDefaultsAndRefuseNonsense() throws {
        let d = try parse("environment: staging\n").limits
        #expect(d == LimitSettings())
        #expect(d.waits == 256 && d.waitsPerUser == 8 && d.pendingPerUser == 5 && d.requestsPerMinute == 10)
        let c = try parse("environment: s\nlimits:\n  connections: 64\n  waits_per_user: 2\n  journal_size: 8\n").limits
        #expect(c.connections == 64 && c.waits == 32 && c.waitsPerUser == 2 && c.journalBytes == 8 << 20)
        #expect(error("environment: s\nlimits:\n  pending_per_user: 0\n")?.field == "limits.pending_per_user")
        #expect(error("environment: s\nlimits:\n  waits: 3\n")?.message.contains("not a known setting") == true)
        #expect(error("environment: s\nlimits:\n  connections: 8\n")?.message.contains("between 16") == true)
    }

    @Test func minimalConfigTakesDefaults() throws {
        let c = try parse("environment: staging\n")
        #expect(c.environment == "staging")
        #expect(c.pendingTTL == 3600)
        #expect(c.policy == Policy())
    }

    @Test(arguments: [
        ("environment: p\npolicy:\n  max_duraton: 4h\n", 3, "policy.max_duraton", "did you mean 'max_duration'"),
        ("environment: p\nsockt: /x\n", 2, "sockt", "did you mean 'socket'"),
        ("environment: p\naudit:\n  seal_interval: 2 days\n", 3, "audit.seal_interval", "like 1h30m"),
        ("environment: p\naudit:\n  seal_interval: 2d\n", 3, "audit.seal_interval", "hard ceiling"),
        ("environment: p\naudit:\n  seal_key: seal.key\n", 3, "audit.seal_key", "absolute path"),
        ("environment: p\npolicy:\n  approvals_required: two\n", 3, "policy.approvals_required", "whole number"),
        ("environment: p\npolicy:\n  approvals_required: 0\n", 3, "policy.approvals_required", "between 1 and 10"),
        ("environment: p\npolicy:\n  require_reason: yes\n", 3, "policy.require_reason", "true or false"),
        ("environment: p\npolicy:\n  max_duration: 0s\n", 3, "policy.max_duration", "zero"),
        ("environment: p\npolicy:\n  max_duration: -1h\n", 3, "policy.max_duration", "negative"),
        ("environment: p\npolicy:\n  max_duration: 30d\n", 3, "policy.max_duration", "hard ceiling"),
        ("environment: p\npolicy:\n  max_duration: 1h\n  default_duration: 2h\n", 4, "policy.default_duration", "longer than"),
        ("environment: p\npolicy:\n  requester_groups: jit\n", 3, "policy.requester_groups", "must be a list"),
        ("environment: p\npolicy:\n  requester_groups: []\n", 3, "policy.requester_groups", "at least one"),
        ("environment: p\npolicy:\n  approver_groups: [\"a b\"]\n", 3, "policy.approver_groups", "not a valid name"),
        ("environment: p\npolicy:\n  scopes: [login, root]\n", 3, "policy.scopes", "not a scope"),
        ("environment: p\npolicy:\n  gate: some\n", 3, "policy.gate", "'requesters' or 'all'"),
        ("environment: p\npolicy:\n  on_expiry: kill\n", 3, "policy.on_expiry", "'terminate' or 'keep'"),
        ("environment: p\nsocket: run/jit.sock\n", 2, "socket", "absolute path"),
        ("environment: p\ndatabase: /var/../etc/x\n", 2, "database", "absolute path"),
        ("environment: p\nenvironment: q\n", 1, "environment", "twice"),
        ("socket: /x\n", 1, "environment", "required"),
        ("environment: [p\n", 2, "", "not valid YAML"),
        ("environment: \"a;b\"\n", 1, "environment", "not a valid name"),
        ("- a\n- b\n", 1, "(top level)", "mapping"),
        ("environment: p\npending_ttl: forever\n", 2, "pending_ttl", "'f'"),
    ])
    func badConfigsNameTheLineAndField(text: String, line: Int, field: String, words: String) {
        guard let e = error(text) else {
            Issue.record("accepted: \(text.debugDescription)")
            return
        }
        #expect(e.file == "t.yaml")
        #expect(e.line == line, "\(e)")
        #expect(e.field == field, "\(e)")
        #expect(e.description.contains(words), "\(e)")
    }

    @Test func emptyAndMissingFiles() {
        #expect(error("") != nil)
        do {
            _ = try Config.load(path: "/nonexistent/jit.yaml")
            Issue.record("loaded a missing file")
        } catch {
            #expect(error.description.contains("/nonexistent/jit.yaml"))
        }
    }
}

@Suite struct PolicyTests {
    let alice = Identity(uid: 1001, name: "alice", groups: ["jit-requesters"])
    let bob = Identity(uid: 1002, name: "bob", groups: ["jit-approvers"])
    let both = Identity(uid: 1003, name: "carol", groups: ["jit-approvers", "jit-requesters"])
    let mallory = Identity(uid: 1004, name: "mallory", groups: ["users"])
    let root = Identity(uid: 0, name: "root", groups: ["root"])
    let p = Policy()

    func admit(_ d: Draft, _ who: Identity? = nil) throws(JITError) -> Draft {
        try p.admit(d, from: who ?? alice, hostEnvironment: "production")
    }

    @Test func admitsAndFillsDefaults() throws {
        let d = try admit(Draft(scope: .sudo, reason: "  deploy  "))
        #expect(d.environment == "production")
        #expect(d.duration == 3600)
        #expect(d.runAs == "root")
        #expect(d.reason == "deploy")
        #expect(try admit(Draft(scope: .login, reason: "x")).runAs == "")
    }

    @Test(arguments: [
        (Draft(scope: .login, duration: 5 * 3600, reason: "x"), ErrorCode.invalid, "maximum"),
        (Draft(scope: .login, duration: 0, reason: "x"), .invalid, "at least"),
        (Draft(scope: .login, duration: -60, reason: "x"), .invalid, "at least"),
        (Draft(scope: .login, reason: ""), .invalid, "requires a reason"),
        (Draft(scope: .login, reason: "   \n "), .invalid, "requires a reason"),
        (Draft(scope: .login, reason: "a\u{1b}[31mred"), .invalid, "control"),
        (Draft(environment: "staging", scope: .login, reason: "x"), .invalid, "environment"),
        (Draft(scope: .commands(["systemctl restart nginx"]), reason: "x"), .invalid, "absolute path"),
        (Draft(scope: .commands(["/bin/x\nalice ALL=(ALL) ALL"]), reason: "x"), .invalid, "control"),
        (Draft(scope: .sudo, runAs: "postgres", reason: "x"), .invalid, "running as"),
        (Draft(scope: .sudo, runAs: "ALL,root", reason: "x"), .invalid, "not a valid user"),
    ])
    func refusals(d: Draft, code: ErrorCode, words: String) {
        do {
            _ = try admit(d)
            Issue.record("admitted \(d)")
        } catch {
            #expect(error.code == code)
            #expect(error.message.contains(words), "\(error.message)")
        }
    }

    @Test func aTenMegabyteReasonIsRefused() {
        // Not a parameterised case: the test runner would print all 10 MB of the argument.
        do {
            _ = try admit(Draft(scope: .login, reason: String(repeating: "x", count: 10_000_000)))
            Issue.record("admitted a 10 MB reason")
        } catch {
            #expect(error.code == .invalid)
            #expect(error.message.contains("bytes"))
        }
    }

    @Test func onlyRequestersMayAsk() {
        #expect(throws: JITError.self) { try admit(Draft(scope: .login, reason: "x"), mallory) }
        #expect(throws: JITError.self) { try admit(Draft(scope: .login, reason: "x"), bob) }
        #expect(throws: Never.self) { try admit(Draft(scope: .login, reason: "x"), both) }
    }

    @Test func nobodyDecidesTheirOwnRequestAndOnlyApproversDecide() {
        let r = AccessRequest(user: "carol", uid: 1003, environment: "production", scope: .login, runAs: "", duration: 60, reason: "x",
                              createdAt: Date(), expiresAt: Date())
        #expect(throws: JITError.self) { try p.mayDecide(r, by: both) }
        #expect(throws: JITError.self) { try p.mayDecide(r, by: alice) }
        #expect(throws: JITError.self) { try p.mayDecide(r, by: root) }
        #expect(throws: Never.self) { try p.mayDecide(r, by: bob) }
    }

    @Test func gating() {
        var q = p
        #expect(q.gates(alice))
        #expect(!q.gates(mallory))
        #expect(!q.gates(root))
        q.gate = .all
        #expect(q.gates(mallory))
        #expect(!q.gates(root))
    }
}
