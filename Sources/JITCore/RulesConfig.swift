import Foundation
import Yams

/// Reading `rules:` and `break_glass:`, and the checks that refuse a policy that could not work as written:
/// rules that can never match, rules that contradict themselves or each other, bad address ranges, bad
/// time zones, durations over the hard ceiling. Every message names the rule and the line.
extension Config {
    static let ruleKeys = [
        "name", "requesters", "environments", "labels", "scopes", "commands", "runas", "max_duration", "default_duration",
        "require_reason", "ticket", "approvals", "when", "refusal", "uses", "record",
    ]
    static let policyRuleKeys = [
        "requester_groups", "approver_groups", "approvals_required", "max_duration", "default_duration", "require_reason", "scopes", "runas",
    ]

    static func parseRules(_ top: [String: (Node, Node)], into c: inout Config, r: YAMLReader) throws(ConfigError) {
        if let (_, node) = top["break_glass"] {
            c.policy.breakGlass = try parseBreakGlass(node, r: r)
        }
        guard let (rulesKey, node) = top["rules"] else { return }
        guard case .sequence(let seq) = node else { throw r.error(node, "rules", "must be a list of rules, each starting with '- name: ...'") }
        // Without request settings in `policy:`, the rules stand alone (no default rule after them).
        var policyHasRuleKeys = false
        if let (_, p) = top["policy"], case .mapping(let m) = p {
            policyHasRuleKeys = m.contains { k, _ in Config.policyRuleKeys.contains(k.string ?? "") }
        }
        c.policy.defaultRule = policyHasRuleKeys
        if seq.isEmpty && !policyHasRuleKeys {
            throw r.error(rulesKey, "rules", "is empty and 'policy:' sets no request settings, so nobody could ever get access; write at least one rule")
        }
        var rules: [Rule] = []
        for (i, item) in seq.enumerated() {
            let rule = try parseRule(item, index: i + 1, pendingTTL: c.pendingTTL, r: r)
            if let other = rules.first(where: { $0.name == rule.name }) {
                throw ConfigError(file: r.file, line: rule.line, field: "rule \(rule.name)", message: "the name is already used by the rule at line \(other.line ?? 0); give every rule its own name")
            }
            if rule.name == "default" && c.policy.defaultRule {
                throw ConfigError(file: r.file, line: rule.line, field: "rule default", message: "'default' names the rule made of the 'policy:' request settings; choose another name")
            }
            rules.append(rule)
        }
        c.policy.rules = rules
        try lint(c.policy, file: r.file)
    }

    static func parseBreakGlass(_ node: Node, r: YAMLReader) throws(ConfigError) -> BreakGlass {
        let m = try r.mapping(node, path: "break_glass")
        try r.onlyKeys(m, ["groups", "max_duration", "scopes", "runas"], path: "break_glass")
        guard let (_, g) = m["groups"] else { throw r.error(node, "break_glass.groups", "is required: name the break-glass group(s)") }
        var b = BreakGlass(groups: try r.names(g, path: "break_glass.groups", nonEmpty: true))
        b.line = node.mark?.line
        if let (_, v) = m["max_duration"] { b.maxDuration = try r.duration(v, path: "break_glass.max_duration", ceiling: Config.hardCeiling) }
        if let (_, v) = m["scopes"] { b.scopes = try scopes(v, path: "break_glass.scopes", r: r) }
        if let (_, v) = m["runas"] { b.runAs = try r.names(v, path: "break_glass.runas", nonEmpty: true) }
        return b
    }

    static func scopes(_ v: Node, path: String, r: YAMLReader) throws(ConfigError) -> Set<String> {
        let s = try r.names(v, path: path, nonEmpty: true)
        for x in s where !["login", "sudo", "commands"].contains(x) {
            throw r.error(v, path, "'\(x)' is not a scope; use login, sudo or commands")
        }
        return Set(s)
    }

    static func parseRule(_ node: Node, index: Int, pendingTTL: Int64, r: YAMLReader) throws(ConfigError) -> Rule {
        let m = try r.mapping(node, path: "rules[\(index)]")
        guard let (_, nameNode) = m["name"] else {
            throw r.error(node, "rules[\(index)]", "has no 'name:'; every rule needs one (messages and requests name it)")
        }
        let name = try r.name(nameNode, path: "rules[\(index)].name")
        guard name != "break-glass" else { throw r.error(nameNode, "rules[\(index)].name", "'break-glass' is reserved for break-glass grants") }
        let at = "rule \(name):"
        try r.onlyKeys(m, ruleKeys, path: "rule \(name)")
        var rule = Rule(name: name, line: node.mark?.line, requesters: Requesters())
        func fail(_ n: Node, _ key: String, _ msg: String) -> ConfigError { r.error(n, "\(at) \(key)", msg) }

        guard let (_, req) = m["requesters"] else { throw fail(node, "requesters", "is required: say who may ask, e.g. requesters: {groups: [devs]}") }
        let rm = try r.mapping(req, path: "\(at) requesters")
        try r.onlyKeys(rm, ["users", "groups"], path: "\(at) requesters")
        if let (_, v) = rm["users"] { rule.requesters.users = try r.names(v, path: "\(at) requesters.users", nonEmpty: false) }
        if let (_, v) = rm["groups"] { rule.requesters.groups = try r.names(v, path: "\(at) requesters.groups", nonEmpty: false) }
        if rule.requesters.users.isEmpty && rule.requesters.groups.isEmpty {
            throw fail(req, "requesters", "names no user and no group, so the rule can never match")
        }
        if let (_, v) = m["environments"] {
            rule.environments = try r.names(v, path: "\(at) environments", nonEmpty: false)
            if rule.environments.isEmpty { throw fail(v, "environments", "is an empty list, so the rule can never match; leave it out to match every environment") }
        }
        if let (_, v) = m["labels"] { rule.labels = try r.names(v, path: "\(at) labels", nonEmpty: false) }
        guard let (_, sc) = m["scopes"] else { throw fail(node, "scopes", "is required: list what the rule allows (login, sudo, commands)") }
        rule.scopes = try scopes(sc, path: "\(at) scopes", r: r)
        if let (_, v) = m["commands"] {
            guard case .sequence(let seq) = v, !seq.isEmpty else { throw fail(v, "commands", "must be a non-empty list of commands") }
            for item in seq {
                let cmd = try r.string(item, path: "\(at) commands")
                guard cmd.hasPrefix("/"), cmd.utf8.count <= Limits.commandBytes,
                    !cmd.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
                else { throw fail(item, "commands", "'\(cmd)' must be an absolute path with exact arguments, like /usr/bin/systemctl restart nginx") }
                rule.commands.append(cmd)
            }
            guard rule.scopes.contains("commands") else {
                throw fail(v, "commands", "lists commands but 'scopes' does not include 'commands'; the list could never apply")
            }
        }
        if let (_, v) = m["runas"] { rule.runAs = try r.names(v, path: "\(at) runas", nonEmpty: true) }
        var maxGiven = false
        if let (_, v) = m["max_duration"] {
            rule.maxDuration = try r.duration(v, path: "\(at) max_duration", ceiling: Config.hardCeiling)
            maxGiven = true
        }
        if let (_, v) = m["default_duration"] {
            rule.defaultDuration = try r.duration(v, path: "\(at) default_duration", ceiling: Config.hardCeiling)
            if rule.defaultDuration > rule.maxDuration {
                throw fail(v, "default_duration", "is longer than max_duration (\(Durations.format(rule.maxDuration)))\(maxGiven ? "" : ", which is 1h when not given")")
            }
        } else {
            rule.defaultDuration = min(rule.defaultDuration, rule.maxDuration)
        }
        if let (_, v) = m["require_reason"] { rule.requireReason = try r.bool(v, path: "\(at) require_reason") }
        if let (_, v) = m["ticket"] {
            let p = try r.string(v, path: "\(at) ticket")
            guard !p.isEmpty, (try? NSRegularExpression(pattern: p)) != nil else {
                throw fail(v, "ticket", "'\(p)' is not a valid regular expression, e.g. ^OPS-[0-9]+$")
            }
            rule.ticket = p
        }
        if let (_, v) = m["uses"] {
            let n = try r.int(v, path: "\(at) uses")
            guard (1...1000).contains(n) else { throw fail(v, "uses", "must be a whole number from 1 to 1000 (1: one-shot grants)") }
            guard rule.scopes.contains("sudo") || rule.scopes.contains("commands") else {
                throw fail(v, "uses", "counts sudo uses, but 'scopes' has neither 'sudo' nor 'commands'")
            }
            rule.uses = n
        }
        if let (_, v) = m["record"] {
            let t = try r.string(v, path: "\(at) record")
            do { rule.record = try RecordMode(text: t) } catch { throw fail(v, "record", error.message) }
            guard rule.scopes.contains("sudo") || rule.scopes.contains("commands") else {
                throw fail(v, "record", "records sudo uses, but 'scopes' has neither 'sudo' nor 'commands'")
            }
        }
        guard let (_, ap) = m["approvals"] else {
            throw fail(node, "approvals", "is required: 'approvals: auto', or who approves, e.g. approvals: {required: 1, groups: [leads]}")
        }
        try parseApprovals(ap, into: &rule, at: at, pendingTTL: pendingTTL, r: r)
        if let (_, v) = m["when"] { rule.conditions = try parseWhen(v, at: at, r: r) }
        if let (_, v) = m["refusal"] {
            let t = try r.string(v, path: "\(at) refusal")
            guard !t.isEmpty, t.utf8.count <= 300, !t.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw fail(v, "refusal", "must be one line of text (at most 300 bytes)")
            }
            rule.refusal = t
        }
        return rule
    }

    static func parseApprovals(_ node: Node, into rule: inout Rule, at: String, pendingTTL: Int64, r: YAMLReader) throws(ConfigError) {
        if case .scalar(let s) = node {
            guard s.string == "auto" else {
                throw r.error(node, "\(at) approvals", "must be 'auto' or a mapping like {required: 2, groups: [leads]}")
            }
            rule.approval = .automatic
            return
        }
        let m = try r.mapping(node, path: "\(at) approvals")
        try r.onlyKeys(m, ["required", "groups", "one_from_each", "mfa", "escalation"], path: "\(at) approvals")
        var first = try parseTier(node, m, after: 0, path: "\(at) approvals", r: r)
        first.after = 0
        var tiers = [first]
        if let (_, v) = m["mfa"] { rule.mfa = try r.bool(v, path: "\(at) approvals.mfa") }
        if let (_, v) = m["escalation"] {
            guard case .sequence(let seq) = v, !seq.isEmpty else {
                throw r.error(v, "\(at) approvals.escalation", "must be a list of tiers like [{after: 30m, groups: [managers]}]")
            }
            for (i, item) in seq.enumerated() {
                let path = "\(at) approvals.escalation[\(i + 1)]"
                let tm = try r.mapping(item, path: path)
                try r.onlyKeys(tm, ["after", "groups", "required", "one_from_each"], path: path)
                guard let (_, a) = tm["after"] else { throw r.error(item, path, "needs 'after:' (how long before this tier may decide)") }
                let after = try r.duration(a, path: "\(path).after", ceiling: Config.hardCeiling)
                guard after > tiers.last!.after else {
                    throw r.error(a, "\(path).after", "must be later than the tier before it (\(Durations.format(tiers.last!.after)))")
                }
                guard after < pendingTTL else {
                    throw r.error(a, "\(path).after", "is not before pending_ttl (\(Durations.format(pendingTTL))): requests expire first, so this tier could never decide")
                }
                tiers.append(try parseTier(item, tm, after: after, path: path, r: r))
            }
        }
        rule.approval = .approvers(tiers)
    }

    static func parseTier(_ node: Node, _ m: [String: (Node, Node)], after: Int64, path: String, r: YAMLReader) throws(ConfigError) -> ApprovalTier {
        guard let (_, g) = m["groups"] else { throw r.error(node, "\(path).groups", "is required: name the approver group(s)") }
        var t = ApprovalTier(after: after, groups: try r.names(g, path: "\(path).groups", nonEmpty: true))
        if Set(t.groups).count != t.groups.count { throw r.error(g, "\(path).groups", "names a group twice") }
        if let (_, v) = m["one_from_each"] { t.oneFromEach = try r.bool(v, path: "\(path).one_from_each") }
        if let (_, v) = m["required"] {
            let n = try r.int(v, path: "\(path).required")
            guard (1...10).contains(n) else { throw r.error(v, "\(path).required", "must be between 1 and 10 (the requester never counts)") }
            if t.oneFromEach && n < t.groups.count {
                throw r.error(v, "\(path).required", "is \(n), but one approver from each of \(t.groups.count) groups means at least \(t.groups.count) approvals")
            }
            t.required = n
        } else if t.oneFromEach {
            t.required = t.groups.count
        }
        return t
    }

    static func parseWhen(_ node: Node, at: String, r: YAMLReader) throws(ConfigError) -> Conditions {
        let m = try r.mapping(node, path: "\(at) when")
        try r.onlyKeys(m, ["time_zone", "windows", "days", "hours", "sources", "groups"], path: "\(at) when")
        var c = Conditions()
        if let (_, v) = m["time_zone"] {
            let z = try r.string(v, path: "\(at) when.time_zone")
            guard z.contains("/") || z == "UTC", TimeZone(identifier: z) != nil else {
                throw r.error(v, "\(at) when.time_zone", "'\(z)' is not a known time zone; use an IANA name like Europe/Paris or UTC")
            }
            c.timeZone = z
        }
        if let (_, v) = m["windows"] {
            guard m["days"] == nil && m["hours"] == nil else {
                throw r.error(v, "\(at) when.windows", "give either 'windows:' or 'days:' with 'hours:', not both")
            }
            guard case .sequence(let seq) = v, !seq.isEmpty else {
                throw r.error(v, "\(at) when.windows", "must be a non-empty list like [{days: [mon-fri], hours: \"09:00-18:00\"}]")
            }
            for (i, item) in seq.enumerated() {
                let path = "\(at) when.windows[\(i + 1)]"
                let wm = try r.mapping(item, path: path)
                try r.onlyKeys(wm, ["days", "hours"], path: path)
                c.windows.append(try window(item, wm, path: path, r: r))
            }
        } else if m["days"] != nil || m["hours"] != nil {
            c.windows.append(try window(node, m, path: "\(at) when", r: r))
        }
        if !c.windows.isEmpty && c.timeZone == nil {
            throw r.error(node, "\(at) when.time_zone", "is required with hours: name the zone they are in, like Europe/Paris or UTC")
        }
        if let (_, v) = m["sources"] {
            guard case .sequence(let seq) = v, !seq.isEmpty else {
                throw r.error(v, "\(at) when.sources", "must be a non-empty list of address ranges like [10.0.0.0/8]; an empty list could never match")
            }
            for item in seq {
                let s = try r.string(item, path: "\(at) when.sources")
                do { c.sources.append(try CIDR(s)) } catch { throw r.error(item, "\(at) when.sources", error.message) }
            }
        }
        if let (_, v) = m["groups"] { c.groups = try r.names(v, path: "\(at) when.groups", nonEmpty: true) }
        return c
    }

    static func window(_ node: Node, _ m: [String: (Node, Node)], path: String, r: YAMLReader) throws(ConfigError) -> TimeWindow {
        var days = Set(1...7)
        if let (_, v) = m["days"] { days = try parseDays(v, path: "\(path).days", r: r) }
        var start = 0, end = 24 * 60
        if let (_, v) = m["hours"] {
            let s = try r.string(v, path: "\(path).hours")
            let parts = s.split(separator: "-", omittingEmptySubsequences: false).map { String($0).trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let a = minutes(parts[0]), let b = minutes(parts[1]), a < 24 * 60 else {
                throw r.error(v, "\(path).hours", "'\(s)' is not an hour range; write it like \"09:00-18:00\" (or \"22:00-06:00\" across midnight)")
            }
            guard a != b % (24 * 60) || (a == 0 && b == 24 * 60) else {
                throw r.error(v, "\(path).hours", "'\(s)' starts where it ends, so it is empty and the rule could never apply; use \"00:00-24:00\" for all day")
            }
            start = a
            end = b
        }
        return TimeWindow(days: days, start: start, end: end)
    }

    static func minutes(_ s: String) -> Int? {
        let hm = s.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(hm.count), let h = Int(hm[0]), hm[0].count <= 2 else { return nil }
        var m = 0
        if hm.count == 2 {
            guard hm[1].count == 2, let mm = Int(hm[1]), (0..<60).contains(mm) else { return nil }
            m = mm
        }
        guard (0...24).contains(h), h < 24 || m == 0 else { return nil }
        return h * 60 + m
    }

    static func parseDays(_ v: Node, path: String, r: YAMLReader) throws(ConfigError) -> Set<Int> {
        var items: [Node] = []
        switch v {
        case .sequence(let seq): items = Array(seq)
        case .scalar: items = [v]
        default: throw r.error(v, path, "must be a list of days like [mon-fri, sat]")
        }
        var out = Set<Int>()
        for item in items {
            let s = try r.string(item, path: path).lowercased()
            func day(_ t: Substring) -> Int? { TimeWindow.dayNames.firstIndex(of: String(t.prefix(3))).map { $0 + 1 }.flatMap { t.count >= 3 ? $0 : nil } }
            let ends = s.split(separator: "-")
            if ends.count == 2, let a = day(ends[0]), let b = day(ends[1]) {
                var d = a
                while true {
                    out.insert(d)
                    if d == b { break }
                    d = d % 7 + 1
                }
            } else if ends.count == 1, let a = day(ends[0]) {
                out.insert(a)
            } else {
                throw r.error(item, path, "'\(s)' is not a day; use mon, tue, wed, thu, fri, sat, sun or a range like mon-fri")
            }
        }
        if out.isEmpty { throw r.error(v, path, "names no day, so the rule could never apply") }
        return out
    }

    /// Refuses rules that can never match because an earlier rule matches every request they would.
    static func lint(_ p: Policy, file: String) throws(ConfigError) {
        let rules = p.effectiveRules
        for (j, b) in rules.enumerated() {
            for a in rules[..<j] where shadows(a, b) {
                let what = b.name == "default"
                    ? "the 'policy:' request settings (the default rule) can never match: \(a.label) comes first and matches every request they would; remove those settings from 'policy:' or narrow the rule"
                    : "can never match: \(a.label) comes first and matches every request this rule would; narrow it, or move this rule above it"
                throw ConfigError(file: file, line: b.line, field: "rule \(b.name)", message: what)
            }
        }
    }

    /// Whether rule `a` matches every request that rule `b` matches (so `b`, after `a`, never decides).
    static func shadows(_ a: Rule, _ b: Rule) -> Bool {
        let req = Set(b.requesters.users).isSubset(of: a.requesters.users) && Set(b.requesters.groups).isSubset(of: a.requesters.groups)
        let env = a.environments.isEmpty || (!b.environments.isEmpty && Set(b.environments).isSubset(of: a.environments))
        let labels = Set(a.labels).isSubset(of: b.labels)
        let scopes = b.scopes.isSubset(of: a.scopes)
        let commands = !b.scopes.contains("commands") || a.commands.isEmpty || (!b.commands.isEmpty && Set(b.commands).isSubset(of: a.commands))
        let sudo = b.scopes == ["login"] || Set(b.runAs).isSubset(of: a.runAs)
        return req && env && labels && scopes && commands && sudo
    }

    /// Every group the policy names, with where: check-config warns about those this host does not know.
    public var groupReferences: [(group: String, line: Int?, field: String)] {
        var out: [(String, Int?, String)] = []
        for rule in policy.effectiveRules {
            let at = "rule \(rule.name)"
            for g in rule.requesters.groups { out.append((g, rule.line, "\(at): requesters")) }
            for g in rule.allApproverGroups { out.append((g, rule.line, "\(at): approvals")) }
            for g in rule.conditions.groups { out.append((g, rule.line, "\(at): when.groups")) }
        }
        if let b = policy.breakGlass { for g in b.groups { out.append((g, b.line, "break_glass.groups")) } }
        return out
    }
}
