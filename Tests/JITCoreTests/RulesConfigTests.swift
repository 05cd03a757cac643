import Foundation
import Testing
@testable import JITCore

/// The policy's `rules:`, `break_glass:` and `labels:` as written in jit.yaml, and every check that
/// refuses a policy that could not work as written.
@Suite struct RulesConfigTests {
    static let full = """
        environment: production
        labels: [db, eu]
        pending_ttl: 2h
        policy:
          gate: requesters
        break_glass:
          groups: [breakglass]
          max_duration: 1h
        rules:
          - name: restart-nginx
            requesters: {groups: [devs]}
            scopes: [commands]
            commands: ["/usr/bin/systemctl restart nginx"]
            max_duration: 15m
            approvals: auto
          - name: prod-sudo
            requesters: {groups: [devs], users: [alice]}
            environments: [production]
            labels: [db]
            scopes: [login, sudo]
            runas: [root, postgres]
            max_duration: 4h
            default_duration: 1h
            ticket: '^OPS-[0-9]+$'
            approvals:
              required: 2
              groups: [sre, security]
              mfa: true
              escalation:
                - after: 30m
                  groups: [managers]
            when:
              time_zone: Europe/Paris
              days: [mon-fri]
              hours: "08:00-19:00"
              sources: [10.0.0.0/8, "2001:db8::/32"]
              groups: [oncall]
            refusal: production sudo only in office hours from the VPN
          - name: two-teams
            requesters: {groups: [devs]}
            scopes: [login]
            approvals: {groups: [sre, security], one_from_each: true}
        """

    @Test func aFullPolicyParses() throws {
        let c = try Config.parse(Self.full, file: "t.yaml")
        #expect(c.labels == ["db", "eu"])
        #expect(c.policy.defaultRule == false, "policy: without request settings adds no default rule")
        #expect(c.policy.effectiveRules.map(\.name) == ["restart-nginx", "prod-sudo", "two-teams"])
        let auto = c.policy.rules[0]
        #expect(auto.isAutomatic && auto.commands == ["/usr/bin/systemctl restart nginx"] && auto.maxDuration == 900 && auto.defaultDuration == 900)
        #expect(auto.line == 10)
        let p = c.policy.rules[1]
        #expect(p.requesters == Requesters(users: ["alice"], groups: ["devs"]))
        #expect(p.tiers == [ApprovalTier(after: 0, groups: ["sre", "security"], required: 2), ApprovalTier(after: 1800, groups: ["managers"], required: 1)])
        #expect(p.mfa && p.ticket == "^OPS-[0-9]+$" && p.runAs == ["root", "postgres"])
        #expect(p.conditions.timeZone == "Europe/Paris")
        #expect(p.conditions.windows == [TimeWindow(days: [1, 2, 3, 4, 5], start: 480, end: 1140)])
        #expect(p.conditions.sources.map(\.description) == ["10.0.0.0/8", "2001:db8::/32"])
        #expect(p.conditions.groups == ["oncall"])
        #expect(c.policy.rules[2].tiers == [ApprovalTier(groups: ["sre", "security"], required: 2, oneFromEach: true)])
        #expect(c.policy.breakGlass?.groups == ["breakglass"] && c.policy.breakGlass?.maxDuration == 3600)
        let groups = Set(c.groupReferences.map(\.group))
        #expect(groups == ["devs", "sre", "security", "managers", "oncall", "breakglass"])
    }

    @Test func usesAndRecord() throws {
        let c = try Config.parse(Self.head + "    scopes: [commands]\n    commands: [/usr/bin/id]\n    approvals: auto\n    uses: 1\n    record: input,output\n", file: "t.yaml")
        #expect(c.policy.rules[0].uses == 1 && c.policy.rules[0].record == .inputOutput)
        let d = try Config.parse(Self.head + "    scopes: [sudo]\n    approvals: auto\n    record: output\n", file: "t.yaml")
        #expect(d.policy.rules[0].uses == nil && d.policy.rules[0].record == .output)
    }

    @Test func theShippedPolicyIsOneImplicitRuleNamedDefault() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../packaging/jit.yaml")
        let c = try Config.load(path: url.path)
        #expect(c.policy.effectiveRules.count == 1)
        let r = c.policy.effectiveRules[0]
        #expect(r.name == "default")
        #expect(r.requesters.groups == ["jit-requesters"])
        #expect(r.tiers == [ApprovalTier(groups: ["jit-approvers"], required: 1)])
        #expect(r.maxDuration == 4 * 3600 && r.defaultDuration == 3600 && r.scopes == ["login", "sudo", "commands"])
    }

    @Test func rulesWithPolicyRequestSettingsKeepTheDefaultRuleLast() throws {
        let c = try Config.parse("""
            environment: p
            policy:
              requester_groups: [jit-requesters]
            rules:
              - name: auto-login
                requesters: {groups: [devs]}
                scopes: [login]
                approvals: auto
            """)
        #expect(c.policy.effectiveRules.map(\.name) == ["auto-login", "default"])
    }

    static let head = "environment: p\npending_ttl: 1h\nrules:\n  - name: r1\n    requesters: {groups: [devs]}\n"

    /// Each bad rule: the text after the common head (the rule starts at line 4), the line, words of the
    /// field, and words of the message.
    @Test(arguments: [
        ("    scopes: [login]\n", 4, "rule r1: approvals", "is required"),
        ("    approvals: auto\n", 4, "rule r1: scopes", "is required"),
        ("    scopes: [login]\n    approvals: sometimes\n", 7, "rule r1: approvals", "'auto'"),
        ("    scopes: [root]\n    approvals: auto\n", 6, "rule r1: scopes", "not a scope"),
        ("    scopes: [login]\n    approvals: auto\n    max_duration: 8d\n", 8, "rule r1: max_duration", "hard ceiling"),
        ("    scopes: [login]\n    approvals: auto\n    max_duration: 1h\n    default_duration: 2h\n", 9, "rule r1: default_duration", "longer than max_duration"),
        ("    scopes: [login]\n    approvals: auto\n    default_duration: 2h\n", 8, "rule r1: default_duration", "1h when not given"),
        ("    scopes: [login]\n    approvals: auto\n    environments: []\n", 8, "rule r1: environments", "never match"),
        ("    scopes: [sudo]\n    commands: [/usr/bin/id]\n    approvals: auto\n", 7, "rule r1: commands", "does not include 'commands'"),
        ("    scopes: [commands]\n    commands: [id]\n    approvals: auto\n", 7, "rule r1: commands", "absolute path"),
        ("    scopes: [login]\n    approvals: auto\n    ticket: '[OPS'\n", 8, "rule r1: ticket", "regular expression"),
        ("    scopes: [login]\n    approvals: auto\n    runs_as: [root]\n", 8, "rule r1.runs_as", "did you mean 'runas'"),
        ("    scopes: [login]\n    approvals: {groups: [a, b], one_from_each: true, required: 1}\n", 7, "rule r1: approvals.required", "at least 2"),
        ("    scopes: [login]\n    approvals: {groups: [a], required: 11}\n", 7, "rule r1: approvals.required", "between 1 and 10"),
        ("    scopes: [login]\n    approvals: {groups: [a, a]}\n", 7, "rule r1: approvals.groups", "twice"),
        ("    scopes: [login]\n    approvals: {required: 1}\n", 7, "rule r1: approvals.groups", "is required"),
        ("    scopes: [login]\n    approvals:\n      groups: [a]\n      escalation:\n        - after: 2h\n          groups: [m]\n", 10, "escalation[1].after", "pending_ttl"),
        ("    scopes: [login]\n    approvals:\n      groups: [a]\n      escalation:\n        - after: 30m\n          groups: [m]\n        - after: 20m\n          groups: [n]\n", 12, "escalation[2].after", "later than"),
        ("    scopes: [login]\n    approvals: auto\n    when: {sources: [10.0.0.0/33]}\n", 8, "rule r1: when.sources", "prefix"),
        ("    scopes: [login]\n    approvals: auto\n    when: {sources: [10.0.0.1/8]}\n", 8, "rule r1: when.sources", "bits set"),
        ("    scopes: [login]\n    approvals: auto\n    when: {sources: [vpn.example.com]}\n", 8, "rule r1: when.sources", "not an address range"),
        ("    scopes: [login]\n    approvals: auto\n    when: {sources: []}\n", 8, "rule r1: when.sources", "never match"),
        ("    scopes: [login]\n    approvals: auto\n    when: {time_zone: Mars/Olympus, hours: \"9-17\"}\n", 8, "rule r1: when.time_zone", "not a known time zone"),
        ("    scopes: [login]\n    approvals: auto\n    when: {hours: \"09:00-17:00\"}\n", 8, "rule r1: when.time_zone", "is required"),
        ("    scopes: [login]\n    approvals: auto\n    when: {time_zone: UTC, hours: \"09:00-09:00\"}\n", 8, "rule r1: when.hours", "empty"),
        ("    scopes: [login]\n    approvals: auto\n    when: {time_zone: UTC, hours: \"9am-5pm\"}\n", 8, "rule r1: when.hours", "not an hour range"),
        ("    scopes: [login]\n    approvals: auto\n    when: {time_zone: UTC, days: [funday]}\n", 8, "rule r1: when.days", "not a day"),
        ("    scopes: [sudo]\n    approvals: auto\n    uses: 0\n", 8, "rule r1: uses", "from 1 to 1000"),
        ("    scopes: [login]\n    approvals: auto\n    uses: 1\n", 8, "rule r1: uses", "neither 'sudo' nor 'commands'"),
        ("    scopes: [sudo]\n    approvals: auto\n    record: input\n", 8, "rule r1: record", "'output' or 'input,output'"),
        ("    scopes: [login]\n    approvals: auto\n    record: output\n", 8, "rule r1: record", "neither 'sudo' nor 'commands'"),
    ])
    func badRulesNameTheRuleAndTheLine(body: String, line: Int, field: String, words: String) {
        do {
            _ = try Config.parse(Self.head + body, file: "t.yaml")
            Issue.record("accepted: \(body)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.field.contains(field), "\(error)")
            #expect(error.description.contains(words), "\(error)")
            #expect(error.description.hasPrefix("t.yaml:\(line): "), "\(error)")
        }
    }

    @Test(arguments: [
        // A rule after an identical one never matches (and would contradict it).
        ("""
         environment: p
         rules:
           - name: a
             requesters: {groups: [devs]}
             scopes: [login, sudo]
             approvals: auto
           - name: b
             requesters: {groups: [devs]}
             scopes: [sudo]
             approvals: {groups: [sre], required: 2}
         """, 7, "rule b", "can never match: rule 'a' (line 3)"),
        // The default rule after a catch-all rule never matches.
        ("""
         environment: p
         policy:
           requester_groups: [devs]
           scopes: [login]
         rules:
           - name: everything
             requesters: {groups: [devs, ops]}
             scopes: [login, sudo, commands]
             approvals: auto
         """, 2, "rule default", "can never match"),
        ("""
         environment: p
         rules:
           - name: a
             requesters: {groups: [devs]}
             scopes: [login]
             approvals: auto
           - name: a
             requesters: {groups: [ops]}
             scopes: [login]
             approvals: auto
         """, 7, "rule a", "already used"),
        ("""
         environment: p
         rules:
           - name: a
             requesters: {}
             scopes: [login]
             approvals: auto
         """, 4, "rule a: requesters", "can never match"),
        ("""
         environment: p
         rules:
           - requesters: {groups: [devs]}
             scopes: [login]
             approvals: auto
         """, 3, "rules[1]", "no 'name:'"),
        ("""
         environment: p
         rules: []
         """, 2, "rules", "nobody could ever get access"),
        ("""
         environment: p
         break_glass:
           max_duration: 1h
         """, 3, "break_glass.groups", "is required"),
        ("""
         environment: p
         break_glass:
           groups: [bg]
           max_duration: 10d
         """, 4, "break_glass.max_duration", "hard ceiling"),
    ])
    func contradictionsAndDeadRulesAreRefused(text: String, line: Int, field: String, words: String) {
        do {
            _ = try Config.parse(text, file: "t.yaml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.field == field, "\(error)")
            #expect(error.description.contains(words), "\(error)")
        }
    }

    @Test func narrowerRulesAfterBroaderOnesAreFineWhenTheyDiffer() throws {
        // b asks for sudo as postgres, which a does not allow: b can match.
        let c = try Config.parse("""
            environment: p
            rules:
              - name: a
                requesters: {groups: [devs]}
                scopes: [sudo]
                approvals: auto
              - name: b
                requesters: {groups: [devs]}
                scopes: [sudo]
                runas: [postgres]
                approvals: {groups: [dba]}
            """)
        #expect(c.policy.rules.count == 2)
    }
}
