import Foundation
import PropertyBased
import Testing
import JITCore
@testable import JITAgent

extension Harness {
    /// A harness whose config is this YAML (paths are the harness's temp folder).
    init(yaml: String) throws {
        let parsed = try Config.parse(yaml)
        try self.init { c in
            let (db, sock) = (c.database, c.socket)
            c = parsed
            c.database = db
            c.socket = sock
        }
    }
}

/// The rule engine wired to the store: automatic rules, N-of-M approvals, escalation, time windows,
/// break-glass, MFA, extension and explain, all driven through `Engine.handle` with a manual clock.
@Suite struct PolicyEngineTests {
    /// The manual clock starts on Friday 2027-01-15 08:00 UTC.
    static let yaml = """
        environment: production
        labels: [web]
        pending_ttl: 2h
        break_glass:
          groups: [breakglass]
          max_duration: 1h
        rules:
          - name: restart-nginx
            requesters: {groups: [devs, jit-requesters]}
            scopes: [commands]
            commands: ["/usr/bin/systemctl restart nginx"]
            max_duration: 15m
            approvals: auto
          - name: two-sre
            requesters: {groups: [devs, jit-requesters]}
            scopes: [sudo]
            max_duration: 2h
            approvals:
              required: 2
              groups: [sre, security]
              mfa: false
              escalation:
                - after: 30m
                  groups: [managers]
          - name: office-login
            requesters: {groups: [devs, jit-requesters]}
            scopes: [login]
            max_duration: 4h
            approvals: {groups: [sre], mfa: true}
            when:
              time_zone: UTC
              days: [mon-fri]
              hours: "07:00-09:00"
            refusal: logins only before 09:00 UTC on weekdays
        """

    func fields(_ scope: String, _ seconds: Int = 1800, commands: [String] = [], extra: [(String, String)] = []) -> [(String, String)] {
        var f: [(String, String)] = [("for", String(seconds)), ("reason", "test"), ("scope", scope)]
        for c in commands { f.append(("command", c)) }
        return f + extra
    }

    @Test func anAutomaticRuleGrantsAtOnceAndRecordsItself() throws {
        let h = try Harness(yaml: Self.yaml)
        let r = h.call(D.judy, "request", fields("commands", 3600, commands: ["/usr/bin/systemctl restart nginx"]))
        #expect(r["code"] == "invalid" && r["message"]?.contains("maximum of 15m") == true)
        let ok = h.call(D.judy, "request", fields("commands", 600, commands: ["/usr/bin/systemctl restart nginx"]))
        #expect(ok["state"] == "approved" && ok["approved_via"] == "auto" && ok["rule"] == "restart-nginx" && ok["decided_by"] == "rule:restart-nginx")
        let g = try #require(try h.engine.store.grant(id: Int64(ok["grant"]!)!))
        #expect(g.expiresAt == h.clock.now().addingTimeInterval(600))
        #expect(h.effects.entries == ["started 1"])
        #expect(h.notifier.entries == ["auto 1 grant 1"])
    }

    @Test func twoDistinctApproversAndNeverTheRequester() throws {
        let h = try Harness(yaml: Self.yaml)
        let id = String(try h.file(D.judy, scope: "sudo"))
        #expect(h.notifier.entries == ["filed 1 sre,security"])
        #expect(h.call(D.judy, "approve", [("id", id)])["code"] == "unauthorized", "judy is in sre but it is her own request")
        let first = h.call(D.erin, "approve", [("id", id)])
        #expect(first["state"] == "pending" && first["approvals_needed"] == "1")
        #expect(h.call(D.erin, "approve", [("id", id)])["code"] == "conflict")
        #expect(h.call(D.heidi, "approve", [("id", id)])["message"]?.contains("only from") == true, "managers only after escalation")
        #expect(h.call(D.bob, "approve", [("id", id)])["code"] == "unauthorized")
        #expect(try h.engine.store.grants(user: nil, activeOnly: false).isEmpty)
        let second = h.call(D.grace, "approve", [("id", id)])
        #expect(second["state"] == "approved" && second["approved_via"] == "approvers")
        #expect(second.all("approval") == ["erin", "grace"])
    }

    @Test func escalationOpensTheNextTierAndNotifiesIt() throws {
        let h = try Harness(yaml: Self.yaml)
        let id = String(try h.file(D.judy, scope: "sudo"))
        let next = try #require(h.engine.expireDue())
        #expect(next == h.clock.now().addingTimeInterval(1800), "the scheduler wakes for the escalation")
        h.clock.advance(1800)
        h.engine.expireDue()
        #expect(h.notifier.entries.last == "escalated 1 tier 2 managers")
        h.engine.expireDue()
        #expect(h.notifier.entries.filter { $0.hasPrefix("escalated") }.count == 1, "notified once")
        let a = h.call(D.heidi, "approve", [("id", id)])
        #expect(a["state"] == "approved", "\(a)")
    }

    @Test func timeWindowsRefuseFilingAndApprovalOutsideThem() throws {
        let h = try Harness(yaml: Self.yaml)
        // 08:00 UTC Friday: inside 07:00-09:00.
        let id = String(try h.file(D.judy, scope: "login"))
        h.clock.advance(3600 + 60)
        let late = h.call(D.erin, "approve", [("id", id), ("otp", "000000")])
        #expect(late["code"] == "unauthorized" && late["message"]?.contains("logins only before 09:00 UTC on weekdays") == true, "\(late)")
        let refused = h.call(D.judy, "request", fields("login"))
        #expect(refused["code"] == "unauthorized" && refused["message"]?.contains("rule 'office-login'") == true)
        #expect(try h.engine.store.requests(user: nil, pendingOnly: false).count == 1)
        // The PAM path says why.
        let check = h.call(D.root, "check", [("user", "judy"), ("service", "sshd"), ("file", "1")])
        #expect(check["decision"] == "pending", "joins the pending request")
    }

    @Test func approverMFAWithReplayRefusal() throws {
        let h = try Harness(yaml: Self.yaml)
        let id = String(try h.file(D.judy, scope: "login", seconds: 3 * 3600))
        let noCode = h.call(D.erin, "approve", [("id", id)])
        #expect(noCode["message"]?.contains("--otp") == true)
        #expect(h.call(D.erin, "approve", [("id", id), ("otp", "123456")])["message"]?.contains("mfa enroll") == true)
        let enrolled = h.call(D.erin, "mfa_enroll")
        let text = try #require(enrolled["secret"])
        let secret = try #require(Base32.decode(text))
        #expect(enrolled["uri"]?.hasPrefix("otpauth://totp/jit-access:erin?secret=") == true)
        #expect(h.call(D.erin, "mfa_enroll")["code"] == "conflict", "re-enrolling needs a current code")
        let code = TOTP.code(secret: secret, step: TOTP.step(at: h.clock.now()))
        let wrong = code == "000000" ? "111111" : "000000"
        #expect(h.call(D.erin, "approve", [("id", id), ("otp", wrong)])["message"]?.contains("wrong") == true)
        let ok = h.call(D.erin, "approve", [("id", id), ("otp", code)])
        #expect(ok["state"] == "approved", "\(ok)")
        // The grant ends with the window (09:00), not after the 3h asked for.
        let g = try #require(try h.engine.store.grant(id: Int64(ok["grant"]!)!))
        #expect(g.expiresAt == h.clock.now().addingTimeInterval(3600))
        let id2 = String(try h.file(D.alice, scope: "login"))
        let replay = h.call(D.erin, "approve", [("id", id2), ("otp", code)])
        #expect(replay["message"]?.contains("already used") == true, "\(replay)")
        #expect(try h.engine.store.request(id: Int64(id2)!)?.approvals == [])
        #expect(h.call(D.alice, "mfa_reset", [("user", "erin")])["code"] == "unauthorized")
        #expect(h.call(D.root, "mfa_reset", [("user", "erin")])["user"] == "erin")
    }

    @Test func wrongCodesAreRateLimited() throws {
        let h = try Harness(yaml: Self.yaml)
        _ = h.call(D.erin, "mfa_enroll")
        for _ in 0..<5 { #expect(throws: JITError.self) { try h.engine.store.consumeOTP(user: "erin", code: "999999", at: h.clock.now()) } }
        do {
            try h.engine.store.consumeOTP(user: "erin", code: "999999", at: h.clock.now())
        } catch {
            #expect(error.message.contains("too many"))
        }
    }

    @Test func breakGlassIsImmediateAuditedAndNeedsAReason() throws {
        let h = try Harness(yaml: Self.yaml)
        #expect(h.call(D.judy, "request", fields("sudo", extra: [("break_glass", "1")]))["code"] == "unauthorized")
        #expect(h.call(D.ivan, "request", [("for", "600"), ("reason", " "), ("scope", "sudo"), ("break_glass", "1")])["message"]?.contains("needs a reason") == true)
        #expect(h.call(D.ivan, "request", fields("sudo", 7200, extra: [("break_glass", "1")]))["message"]?.contains("break-glass maximum of 1h") == true)
        let r = h.call(D.ivan, "request", [("for", "600"), ("reason", "db down"), ("scope", "sudo"), ("break_glass", "1")])
        #expect(r["state"] == "approved" && r["approved_via"] == "break-glass" && r["rule"] == "break-glass" && r["decided_by"] == "ivan")
        #expect(h.notifier.entries == ["break-glass 1 grant 1"])
        #expect(h.call(D.root, "check", [("user", "ivan"), ("service", "sudo"), ("sudo_mode", "unsure"), ("runas", "root")])["decision"] == "allow")
    }

    @Test func extensionAddsTimeUnderTheRules() throws {
        let h = try Harness(yaml: Self.yaml)
        let id = String(try h.file(D.judy, scope: "sudo", seconds: 3600))
        _ = h.call(D.erin, "approve", [("id", id)])
        _ = h.call(D.grace, "approve", [("id", id)])
        h.clock.advance(1800)
        #expect(h.call(D.alice, "extend", [("grant", "1"), ("for", "1800"), ("reason", "x")])["code"] == "unauthorized")
        #expect(h.call(D.judy, "extend", [("grant", "1"), ("for", "9000"), ("reason", "x")])["message"]?.contains("maximum of 2h") == true)
        let e = h.call(D.judy, "extend", [("grant", "1"), ("for", "1800"), ("reason", "more")])
        #expect(e["state"] == "pending" && e["extends"] == "1", "\(e)")
        let eid = e["id"]!
        _ = h.call(D.erin, "approve", [("id", eid)])
        let done = h.call(D.frank, "approve", [("id", eid)])
        #expect(done["state"] == "approved" && done["grant"] == "1")
        let g = try #require(try h.engine.store.grant(id: 1))
        #expect(g.expiresAt == h.clock.now().addingTimeInterval(3600), "30m left + 30m more")
        #expect(try h.engine.store.grants(user: nil, activeOnly: false).count == 1)
        #expect(h.effects.entries == ["started 1", "started 1"], "the sudoers file is rewritten with the new end")
    }

    @Test func explainSaysWhichRuleAndWhy() throws {
        let h = try Harness(yaml: Self.yaml)
        let m = h.call(D.erin, "explain", [("user", "judy"), ("scope", "sudo")])
        #expect(m["decision"] == "approvers" && m["rule"] == "two-sre" && m["line"] == "14")
        #expect(m.all("step").contains { $0.contains("rule 'restart-nginx' (line 8) does not match") })
        let auto = h.call(D.root, "explain", [("user", "judy"), ("scope", "commands"), ("command", "/usr/bin/systemctl restart nginx")])
        #expect(auto["decision"] == "auto")
        let late = h.call(D.root, "explain", [("user", "judy"), ("at", "2027-01-16T08:00:00Z")])
        #expect(late["decision"] == "refused" && late["rule"] == "office-login" && late["message"]?.contains("logins only") == true)
        #expect(h.call(D.mallory, "explain", [("user", "judy")])["code"] == "unauthorized")
        #expect(h.call(D.root, "explain", [("user", "mallory")])["decision"] == "refused")
        #expect(try h.engine.store.requests(user: nil, pendingOnly: false).isEmpty, "a dry run")
    }

    @Test func reloadingRulesKeepsPendingRequests() throws {
        let h = try Harness(yaml: Self.yaml)
        let id = String(try h.file(D.judy, scope: "sudo"))
        var c = try Config.parse(Self.yaml.replacingOccurrences(of: "required: 2", with: "required: 1"))
        c.database = h.engine.config.database
        h.engine.replaceConfig(c)
        #expect(h.call(D.erin, "approve", [("id", id)])["state"] == "approved")
        let id2 = String(try h.file(D.judy, scope: "sudo"))
        c = try Config.parse(Self.yaml.replacingOccurrences(of: "two-sre", with: "renamed"))
        h.engine.replaceConfig(c)
        #expect(h.call(D.erin, "approve", [("id", id2)])["message"]?.contains("no longer has") == true)
        #expect(h.call(D.erin, "deny", [("id", id2)])["state"] == "denied", "a request whose rule is gone can still be denied")
    }

    /// The invariants, over random histories: every grant has enough distinct eligible approvers other
    /// than the requester (or is automatic, or break-glass), is no longer than its rule allows, and was
    /// approved inside its rule's window.
    @Test func invariantsHoldOverRandomHistories() async throws {
        let people = [D.alice, D.bob, D.carol, D.dave, D.erin, D.frank, D.grace, D.heidi, D.ivan, D.judy, D.mallory]
        await propertyCheck(
            count: 40,
            input: Gen.int(in: 0...people.count - 1).array(of: 1...3), Gen.int(in: 0...2).array(of: 1...3),
            Gen.int(in: 0...people.count - 1).array(of: 0...8), Gen.int(in: 0...2400).array(of: 8)
        ) { requesters, scopes, approvers, gaps in
            let h = try Harness(yaml: Self.yaml)
            var ids: [Int64] = []
            for (i, p) in requesters.enumerated() {
                let s = ["login", "sudo", "commands"][scopes[i % scopes.count]]
                let r = h.call(people[p], "request", fields(s, 3 * 3600 - i * 3000, commands: s == "commands" ? ["/usr/bin/systemctl restart nginx"] : [],
                                                            extra: p == 8 && i == 0 ? [("break_glass", "1")] : []))
                if let id = r["id"].flatMap({ Int64($0) }) { ids.append(id) }
            }
            for (i, a) in approvers.enumerated() where !ids.isEmpty {
                h.clock.advance(Double(gaps[i]))
                h.engine.expireDue()
                _ = h.call(people[a], "approve", [("id", String(ids[i % ids.count]))])
            }
            let policy = h.engine.config.policy
            for g in try h.engine.store.grants(user: nil, activeOnly: false) {
                let r = try #require(try h.engine.store.request(id: g.requestID))
                let length = g.expiresAt.timeIntervalSince(g.startsAt)
                switch r.approvedVia {
                case .breakGlass:
                    let who = try #require(D.standard.user(name: r.user))
                    #expect(policy.isBreakGlass(who))
                    #expect(length <= Double(policy.breakGlass!.maxDuration))
                case .auto:
                    let rule = try #require(policy.rule(named: r.rule))
                    #expect(rule.isAutomatic)
                    #expect(length <= Double(rule.maxDuration))
                case .approvers:
                    let rule = try #require(policy.rule(named: r.rule))
                    let records = try h.engine.store.approvalRecords(id: r.id)
                    let decidedAt = try #require(r.decidedAt)
                    #expect(rule.satisfied(by: records, requester: r.user, filedAt: r.createdAt, now: decidedAt))
                    #expect(!records.contains { $0.approver == r.user }, "the requester never approves")
                    #expect(Set(records.map(\.approver)).count == records.count, "one approver counts once")
                    #expect(length <= Double(rule.maxDuration))
                    let who = try #require(D.standard.user(name: r.user))
                    #expect(rule.conditions.refusal(for: who, rhost: r.rhost, at: decidedAt) == nil, "no approval outside its window")
                    // The oracle: enough distinct eligible approvers, from the records alone.
                    let eligible = Set(records.filter { $0.approver != r.user && !$0.groups.isEmpty }.map(\.approver))
                    #expect(eligible.count >= rule.tiers.map(\.required).min()!)
                case nil:
                    Issue.record("grant \(g.id) of an unapproved request \(r.id)")
                }
            }
        }
    }
}
