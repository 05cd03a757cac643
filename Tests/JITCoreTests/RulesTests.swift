import Foundation
import PropertyBased
import Testing
@testable import JITCore

/// The policy's decisions, table by table: which rule matches, what it refuses, who may decide, when
/// enough approvals are enough, and how long a grant lasts. Then the invariants, property by property.
@Suite struct RulesTests {
    static let alice = Identity(uid: 2001, name: "alice", groups: ["alice", "devs", "oncall"])
    static let judy = Identity(uid: 2011, name: "judy", groups: ["judy", "devs", "sre"])
    static let erin = Identity(uid: 2006, name: "erin", groups: ["erin", "sre"])
    static let frank = Identity(uid: 2007, name: "frank", groups: ["frank", "sre", "security"])
    static let grace = Identity(uid: 2008, name: "grace", groups: ["grace", "security"])
    static let heidi = Identity(uid: 2009, name: "heidi", groups: ["heidi", "managers"])
    static let mallory = Identity(uid: 2005, name: "mallory", groups: ["mallory"])

    /// Friday 2027-01-15 08:00 UTC (09:00 in Paris).
    static let friday = Date(timeIntervalSince1970: 1_800_000_000)

    static let policy: Policy = {
        let text = """
            environment: production
            labels: [web]
            rules:
              - name: restart-nginx
                requesters: {groups: [devs]}
                scopes: [commands]
                commands: ["/usr/bin/systemctl restart nginx"]
                max_duration: 15m
                approvals: auto
              - name: db
                requesters: {groups: [devs]}
                labels: [db]
                scopes: [login, sudo]
                approvals: {groups: [dba]}
              - name: staging
                requesters: {groups: [devs]}
                environments: [staging]
                scopes: [login, sudo]
                approvals: auto
              - name: office-sudo
                requesters: {groups: [devs]}
                scopes: [sudo, commands]
                runas: [root, postgres]
                max_duration: 4h
                default_duration: 1h
                ticket: '^OPS-[0-9]+$'
                approvals:
                  required: 2
                  groups: [sre, security]
                  escalation:
                    - after: 30m
                      groups: [managers]
                when:
                  time_zone: Europe/Paris
                  days: [mon-fri]
                  hours: "08:00-18:00"
                  sources: [10.0.0.0/8]
                  groups: [oncall]
                refusal: sudo only in office hours from the VPN
              - name: login
                requesters: {users: [alice, judy]}
                scopes: [login]
                max_duration: 8h
                require_reason: false
                approvals: {groups: [sre, security], one_from_each: true}
            """
        return try! Config.parse(text).policy
    }()

    static let host = HostFacts(environment: "production", labels: ["web"])

    func evaluate(_ d: Draft, _ who: Identity = alice, host: HostFacts = host, at: Date = friday) -> Result<Admission, JITError> {
        var trace: [String] = []
        do { return .success(try Self.policy.evaluate(d, from: who, host: host, at: at, trace: &trace)) } catch { return .failure(error) }
    }

    static let sudoDraft = Draft(scope: .sudo, reason: "deploy", rhost: "10.1.2.3", ticket: "OPS-1")

    static let decisions: [(String, Draft, String, String, Double, String)] = [
        // (what, draft, who, host label or "staging", seconds after Friday 09:00 Paris, "=rule" or "!refusal words")
        ("listed command, automatic", Draft(scope: .commands(["/usr/bin/systemctl restart nginx"]), reason: "x"), "alice", "web", 0.0, "=restart-nginx"),
        ("other command falls through", Draft(scope: .commands(["/usr/bin/id"]), reason: "x", rhost: "10.0.0.1", ticket: "OPS-2"), "alice", "web", 0.0, "=office-sudo"),
        ("labels: db rule only on db hosts", Draft(scope: .login, reason: "x"), "alice", "db", 0.0, "=db"),
        ("labels: not on web hosts", Draft(scope: .login, reason: "x"), "alice", "web", 0.0, "=login"),
        ("environments: staging rule on staging", Draft(scope: .sudo, reason: "x"), "alice", "staging", 0.0, "=staging"),
        ("sudo in hours from the VPN with a ticket", sudoDraft, "alice", "web", 0.0, "=office-sudo"),
        ("run as postgres", Draft(scope: .sudo, runAs: "postgres", reason: "x", rhost: "10.0.0.1", ticket: "OPS-1"), "alice", "web", 0.0, "=office-sudo"),
        ("run as www-data", Draft(scope: .sudo, runAs: "www-data", reason: "x", rhost: "10.0.0.1", ticket: "OPS-1"), "alice", "web", 0.0, "!no rule allows"),
        ("no ticket", Draft(scope: .sudo, reason: "x", rhost: "10.0.0.1"), "alice", "web", 0.0, "!requires a ticket"),
        ("bad ticket", Draft(scope: .sudo, reason: "x", rhost: "10.0.0.1", ticket: "JIRA-1"), "alice", "web", 0.0, "!does not match"),
        ("too long", Draft(scope: .sudo, duration: 5 * 3600, reason: "x", rhost: "10.0.0.1", ticket: "OPS-1"), "alice", "web", 0.0, "!maximum of 4h"),
        ("no reason", Draft(scope: .sudo, reason: "  ", rhost: "10.0.0.1", ticket: "OPS-1"), "alice", "web", 0.0, "!requires a reason"),
        ("reason optional for login", Draft(scope: .login, reason: ""), "alice", "web", 0.0, "=login"),
        ("outside the VPN", Draft(scope: .sudo, reason: "x", rhost: "192.168.1.5", ticket: "OPS-1"), "alice", "web", 0.0, "!sudo only in office hours from the VPN"),
        ("no source address", Draft(scope: .sudo, reason: "x", ticket: "OPS-1"), "alice", "web", 0.0, "!no source address"),
        ("host name as source", Draft(scope: .sudo, reason: "x", rhost: "vpn.example.com", ticket: "OPS-1"), "alice", "web", 0.0, "!not in 10.0.0.0/8"),
        ("IPv4-mapped IPv6 source", Draft(scope: .sudo, reason: "x", rhost: "::ffff:10.9.9.9", ticket: "OPS-1"), "alice", "web", 0.0, "=office-sudo"),
        ("not on call", sudoDraft, "judy", "web", 0.0, "!not in the group oncall"),
        ("Friday 18:30 Paris", sudoDraft, "alice", "web", 9.5 * 3600, "!outside the allowed hours"),
        ("Saturday 10:00 Paris", sudoDraft, "alice", "web", 25 * 3600, "!outside the allowed hours"),
        ("Friday 07:59 Paris", sudoDraft, "alice", "web", -3660.0, "!outside the allowed hours"),
        ("Friday 08:00 Paris", sudoDraft, "alice", "web", -3600.0, "=office-sudo"),
        ("not a requester", Draft(scope: .login, reason: "x"), "mallory", "web", 0.0, "!not a requester under any rule"),
        ("another environment", Draft(environment: "staging", scope: .login, reason: "x"), "alice", "web", 0.0, "!this host is in environment"),
    ]

    @Test(arguments: decisions)
    func rulesDecide(what: String, draft: Draft, who: String, host: String, offset: Double, expected: String) {
        let people = [Self.alice, Self.judy, Self.mallory]
        let id = people.first { $0.name == who }!
        let facts = host == "staging" ? HostFacts(environment: "staging", labels: ["web"]) : HostFacts(environment: "production", labels: [host])
        var d = draft
        if host == "staging" && d.environment == nil { d.environment = "staging" }
        switch evaluate(d, id, host: facts, at: Self.friday.addingTimeInterval(offset)) {
        case .success(let a):
            #expect(expected == "=\(a.rule.name)", "\(what)")
        case .failure(let e):
            #expect(expected.hasPrefix("!") && e.message.contains(expected.dropFirst()), "\(what): \(e.message)")
        }
    }

    @Test func admissionFillsTheRuleDefaults() throws {
        let a = try evaluate(Self.sudoDraft).get()
        #expect(a.draft.duration == 3600 && a.draft.runAs == "root" && a.draft.environment == "production" && a.draft.ticket == "OPS-1")
        #expect(!a.automatic)
        let auto = try evaluate(Draft(scope: .commands(["/usr/bin/systemctl restart nginx"]), reason: "x")).get()
        #expect(auto.automatic && auto.draft.duration == 900)
    }

    @Test func explainTracesEveryRuleTried() {
        var trace: [String] = []
        _ = try? Self.policy.evaluate(Self.sudoDraft, from: Self.alice, host: Self.host, at: Self.friday, trace: &trace)
        #expect(trace.count == 5)
        #expect(trace[0].contains("rule 'restart-nginx' (line 4) does not match"))
        #expect(trace[1].contains("lacks the label db"))
        #expect(trace[2].contains("not production"))
        #expect(trace[3].contains("rule 'office-sudo'") && trace[3].contains("matches"))
        #expect(trace[4].contains("2 approvers from sre, security"))
    }

    func request(_ rule: String, filed: Date = friday) -> AccessRequest {
        AccessRequest(id: 7, user: "alice", uid: 2001, environment: "production", scope: .sudo, runAs: "root", duration: 3600, reason: "x",
                      createdAt: filed, expiresAt: filed.addingTimeInterval(3600), rule: rule, rhost: "10.0.0.1")
    }

    @Test(arguments: [
        ("erin", 0.0, "ok"), ("frank", 0.0, "ok"), ("grace", 0.0, "ok"),
        ("heidi", 0.0, "only from"), ("heidi", 1800.0, "ok"),
        ("mallory", 3000.0, "not in an approver group"), ("alice", 0.0, "not in an approver group"),
    ])
    func whoMayDecide(who: String, after: Double, expected: String) {
        let id = [Self.erin, Self.frank, Self.grace, Self.heidi, Self.mallory, Self.alice].first { $0.name == who }!
        do {
            let rule = try Self.policy.mayDecide(request("office-sudo"), by: id, at: Self.friday.addingTimeInterval(after))
            #expect(expected == "ok" && rule.name == "office-sudo")
        } catch {
            #expect(error.message.contains(expected), "\(who): \(error.message)")
        }
    }

    @Test func theRequesterNeverDecidesEvenAsAnApprover() {
        var r = request("office-sudo")
        r.user = "judy"
        r.uid = 2011
        #expect(throws: JITError.self) { try Self.policy.mayDecide(r, by: Self.judy, at: Self.friday) }
        r.rule = "gone"
        #expect((try? Self.policy.mayDecide(r, by: Self.erin)) == nil)
    }

    static func rec(_ who: Identity, _ at: Double, rule: Rule) -> ApprovalRecord {
        ApprovalRecord(approver: who.name, groups: Set(rule.approvalGroups(of: who)), at: friday.addingTimeInterval(at))
    }

    @Test(arguments: [
        // (rule, approvals as (who, seconds after filing), now, satisfied)
        ("office-sudo", [("erin", 10.0)], 60.0, false),
        ("office-sudo", [("erin", 10.0), ("erin", 20.0)], 60.0, false),
        ("office-sudo", [("erin", 10.0), ("grace", 20.0)], 60.0, true),
        ("office-sudo", [("judy", 10.0), ("erin", 20.0)], 60.0, false),
        ("office-sudo", [("heidi", 1800.0)], 1800.0, true),
        ("office-sudo", [("heidi", 100.0)], 1800.0, false),
        ("office-sudo", [("mallory", 100.0), ("erin", 200.0)], 1800.0, false),
        ("login", [("erin", 10.0)], 60.0, false),
        ("login", [("erin", 10.0), ("frank", 20.0)], 60.0, true),
        ("login", [("frank", 10.0)], 60.0, false),
        ("login", [("frank", 10.0), ("erin", 20.0), ("grace", 30.0)], 60.0, true),
        ("login", [("erin", 10.0), ("judy", 20.0)], 60.0, false),
    ])
    func enoughApprovals(rule: String, approvals: [(String, Double)], now: Double, satisfied: Bool) {
        let r = Self.policy.rule(named: rule)!
        let people = [Self.erin, Self.frank, Self.grace, Self.heidi, Self.mallory, Self.judy]
        // judy is the requester here.
        let records = approvals.map { a in Self.rec(people.first { $0.name == a.0 }!, a.1, rule: r) }
        #expect(r.satisfied(by: records, requester: "judy", filedAt: Self.friday, now: Self.friday.addingTimeInterval(now)) == satisfied, "\(approvals)")
    }

    @Test func grantsEndAtTheWindowAndNeverPastTheMaximum() {
        let r = Self.policy.rule(named: "office-sudo")!
        let lateFriday = Self.friday.addingTimeInterval(8.5 * 3600)  // 17:30 Paris
        #expect(r.grantEnd(duration: 3600, at: lateFriday) == Self.friday.addingTimeInterval(9 * 3600))
        #expect(r.grantEnd(duration: 3600, at: Self.friday) == Self.friday.addingTimeInterval(3600))
        // An extension adds to the current end, but never beyond max_duration from now.
        #expect(r.grantEnd(duration: 3 * 3600, at: Self.friday, extending: Self.friday.addingTimeInterval(3600)) == Self.friday.addingTimeInterval(4 * 3600))
    }

    @Test func windowsAcrossMidnightAndDaylightSaving() throws {
        let night = Conditions(timeZone: "Europe/Paris", windows: [TimeWindow(days: [5], start: 22 * 60, end: 6 * 60)])
        let friday2230 = Self.friday.addingTimeInterval(13.5 * 3600)  // 22:30 Paris
        #expect(night.windowEnd(at: friday2230) == Self.friday.addingTimeInterval(21 * 3600))  // Saturday 06:00 Paris
        #expect(night.windowEnd(at: Self.friday.addingTimeInterval(20 * 3600)) != nil)  // Saturday 05:00, still Friday's night
        #expect(night.windowEnd(at: Self.friday.addingTimeInterval(21 * 3600)) == nil)
        #expect(night.windowEnd(at: Self.friday) == nil)
        // 2027-03-28 is the spring change in Paris: 09:00-17:00 local that day is 07:00-15:00 UTC.
        let sunday = Conditions(timeZone: "Europe/Paris", windows: [TimeWindow(days: [7], start: 9 * 60, end: 17 * 60)])
        let t = try #require(Timestamps.parse("2027-03-28T07:30:00Z"))
        #expect(sunday.windowEnd(at: t) == Timestamps.parse("2027-03-28T15:00:00Z"))
        #expect(sunday.windowEnd(at: try #require(Timestamps.parse("2027-03-28T06:59:00Z"))) == nil)
    }

    @Test(arguments: [
        ("10.0.0.0/8", "10.255.1.2", true), ("10.0.0.0/8", "11.0.0.1", false), ("192.168.1.0/24", "192.168.1.255", true),
        ("192.168.1.0/24", "192.168.2.1", false), ("0.0.0.0/0", "8.8.8.8", true), ("2001:db8::/32", "2001:db8:1::5", true),
        ("2001:db8::/32", "2001:db9::5", false), ("10.0.0.0/8", "::ffff:10.1.1.1", true), ("10.0.0.0/8", "2001:db8::1", false),
        ("10.1.2.3", "10.1.2.3", true), ("10.1.2.3", "10.1.2.4", false), ("10.0.0.0/8", "", false), ("10.0.0.0/8", "10.1.1.1%eth0", false),
    ])
    func cidrs(range: String, address: String, inside: Bool) throws {
        #expect(try CIDR(range).contains(address) == inside)
    }

    // MARK: properties

    static let approvers = [erin, frank, grace, heidi, mallory, judy, alice]

    /// An oracle written without the code under test: does some open tier have enough distinct,
    /// eligible approvers (never the requester), counting only approvals given after the tier opened?
    static func oracle(_ rule: Rule, _ approvals: [(Identity, Double)], requester: String, now: Double) -> Bool {
        for t in rule.tiers where Double(t.after) <= now {
            var names: [String: Set<String>] = [:]
            for (who, at) in approvals where who.name != requester && at >= Double(t.after) && at <= now {
                let g = who.groups.intersection(t.groups)
                if !g.isEmpty { names[who.name] = g }
            }
            if t.oneFromEach {
                // Brute force: some assignment of distinct approvers to every group.
                func cover(_ gs: [String], _ used: Set<String>) -> Bool {
                    guard let g = gs.first else { return true }
                    return names.contains { n, groups in !used.contains(n) && groups.contains(g) && cover(Array(gs.dropFirst()), used.union([n])) }
                }
                if cover(t.groups, []) && names.count >= t.required { return true }
            } else if names.count >= t.required {
                return true
            }
        }
        return false
    }

    static let groupChoices: [[String]] = [["sre"], ["sre", "security"], ["security", "managers"], ["sre", "security", "managers"]]
    static let tierGen = zip(Gen.int(in: 1...3), Gen.bool, Gen.int(in: 0...3).map { RulesTests.groupChoices[$0] })

    @Test func approvalNeedsEnoughDistinctEligibleApproversOtherThanTheRequester() async {
        await propertyCheck(
            count: 300,
            input: Self.tierGen, Gen.int(in: 0...Self.approvers.count - 1).array(of: 0...6), Gen.int(in: 0...3600).array(of: 6), Gen.int(in: 0...4000)
        ) { tier, picks, times, now in
            var rule = Rule(name: "p", requesters: Requesters(groups: ["devs"]))
            let (required, each, groups) = tier
            rule.approval = .approvers([
                ApprovalTier(groups: groups, required: max(required, each ? groups.count : 1), oneFromEach: each),
                ApprovalTier(after: 1800, groups: ["managers"], required: 1),
            ])
            let approvals = picks.enumerated().map { (i, p) in (Self.approvers[p], Double(min(times[i], now))) }
            let records = approvals.map { ApprovalRecord(approver: $0.0.name, groups: Set(rule.approvalGroups(of: $0.0)), at: Self.friday.addingTimeInterval($0.1)) }
            let got = rule.satisfied(by: records, requester: "alice", filedAt: Self.friday, now: Self.friday.addingTimeInterval(Double(now)))
            #expect(got == Self.oracle(rule, approvals, requester: "alice", now: Double(now)), "\(rule.tiers) \(approvals.map { ($0.0.name, $0.1) }) now \(now)")
            if got { #expect(approvals.contains { $0.0.name != "alice" }) }
        }
    }

    @Test func noGrantIsLongerThanItsRuleAllowsNorOutlivesItsWindow() async {
        await propertyCheck(
            count: 300, input: Gen.int(in: 60...86_400), Gen.int(in: 1...200_000), Gen.int(in: 0...14 * 86_400), Gen.int(in: 0...86_400).optional
        ) { maxDuration, asked, offset, current in
            var rule = Rule(name: "p", requesters: Requesters(groups: ["devs"]))
            rule.maxDuration = Int64(maxDuration)
            rule.conditions = Conditions(timeZone: "America/New_York", windows: [TimeWindow(days: [1, 2, 3, 4, 5], start: 9 * 60, end: 17 * 60)])
            let now = Self.friday.addingTimeInterval(Double(offset))
            let end = rule.grantEnd(duration: Int64(asked), at: now, extending: current.map { now.addingTimeInterval(Double($0)) })
            #expect(end.timeIntervalSince(now) <= Double(maxDuration))
            if let w = rule.conditions.windowEnd(at: now) {
                #expect(end <= w)
                #expect(rule.conditions.refusal(for: Self.alice, rhost: "", at: now) == nil)
            } else {
                #expect(rule.conditions.refusal(for: Self.alice, rhost: "", at: now) != nil, "no approval outside its window")
            }
        }
    }

    @Test func ipv4RangesAgreeWithIntegerArithmetic() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...Int(UInt32.max)), Gen.int(in: 0...32), Gen.int(in: 0...Int(UInt32.max))) { net, prefix, addr in
            let mask: UInt32 = prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix)
            let n = UInt32(net) & mask
            func dotted(_ v: UInt32) -> String { [24, 16, 8, 0].map { String((v >> UInt32($0)) & 0xff) }.joined(separator: ".") }
            let cidr = try CIDR("\(dotted(n))/\(prefix)")
            #expect(cidr.contains(dotted(UInt32(addr))) == ((UInt32(addr) & mask) == n))
        }
    }
}
