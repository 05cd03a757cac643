public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What this host is, as far as rules care: its environment and its labels. The policy is the same on
/// every host; only these facts differ.
public struct HostFacts: Equatable, Sendable {
    public var environment: String
    public var labels: Set<String>
    public init(environment: String, labels: Set<String> = []) {
        self.environment = environment
        self.labels = labels
    }
}

/// Who a rule is for: named users, or members of groups (resolved through NSS).
public struct Requesters: Equatable, Sendable {
    public var users: [String] = []
    public var groups: [String] = []
    public init(users: [String] = [], groups: [String] = []) {
        self.users = users
        self.groups = groups
    }

    public func include(_ who: Identity) -> Bool {
        users.contains(who.name) || !who.groups.isDisjoint(with: groups)
    }

    public var summary: String {
        var parts: [String] = []
        if !groups.isEmpty { parts.append("groups " + groups.joined(separator: ", ")) }
        if !users.isEmpty { parts.append("users " + users.joined(separator: ", ")) }
        return parts.isEmpty ? "nobody" : parts.joined(separator: "; ")
    }
}

/// One step of approval: `required` distinct approvers from `groups` (or one from each group), allowed to
/// decide from `after` seconds after the request was filed. The first tier has `after == 0`; later tiers
/// are escalation: if nobody decided in time, the next tier may decide too (and is notified).
public struct ApprovalTier: Equatable, Sendable {
    public var after: Int64
    public var groups: [String]
    public var required: Int
    public var oneFromEach: Bool
    public init(after: Int64 = 0, groups: [String], required: Int = 1, oneFromEach: Bool = false) {
        self.after = after
        self.groups = groups
        self.required = required
        self.oneFromEach = oneFromEach
    }

    public var summary: String {
        let who = oneFromEach
            ? "one approver from each of \(groups.joined(separator: ", "))" + (required > groups.count ? " (\(required) in all)" : "")
            : "\(required) approver\(required == 1 ? "" : "s") from \(groups.joined(separator: ", "))"
        return after > 0 ? "after \(Durations.format(after)): \(who)" : who
    }
}

/// How a rule's requests are decided.
public enum ApprovalMode: Equatable, Sendable {
    /// Granted at once when the rule matches and its conditions hold; recorded with the rule's name.
    case automatic
    /// Decided by people, tier by tier.
    case approvers([ApprovalTier])
}

/// A weekly window: these ISO weekdays (1 = Monday ... 7 = Sunday), from `start` to `end` minutes after
/// local midnight. `end < start` crosses midnight (22:00-06:00 belongs to the day it starts on).
public struct TimeWindow: Equatable, Sendable {
    public var days: Set<Int>
    public var start: Int
    public var end: Int
    public init(days: Set<Int>, start: Int, end: Int) {
        self.days = days
        self.start = start
        self.end = end
    }

    static let dayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    public var summary: String {
        let ds = days.sorted().map { TimeWindow.dayNames[$0 - 1] }.joined(separator: ",")
        func hm(_ m: Int) -> String { String(format: "%02d:%02d", m / 60, m % 60) }
        return "\(ds) \(hm(start))-\(hm(end))"
    }
}

/// An IPv4 or IPv6 network, like `10.0.0.0/8` or `2001:db8::/32`.
public struct CIDR: Equatable, Sendable, CustomStringConvertible {
    public var address: [UInt8]
    public var prefix: Int
    public let description: String

    /// Parses `ADDRESS/PREFIX` (or a bare address, meaning one host). Refuses host bits set after the prefix.
    public init(_ text: String) throws(ValidationError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let bytes = CIDR.parseAddress(String(parts[0])) else {
            throw ValidationError("'\(text)' is not an address range; write it like 10.0.0.0/8 or 2001:db8::/32")
        }
        let maxPrefix = bytes.count * 8
        var p = maxPrefix
        if parts.count == 2 {
            guard let n = Int(parts[1]), String(n) == parts[1], (0...maxPrefix).contains(n) else {
                throw ValidationError("'\(text)' has a bad prefix length; use 0 to \(maxPrefix)")
            }
            p = n
        }
        for i in 0..<bytes.count {
            let keep = max(0, min(8, p - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
            if bytes[i] & ~mask != 0 {
                throw ValidationError("'\(text)' has bits set after the /\(p) prefix; write the network address")
            }
        }
        address = bytes
        prefix = p
        description = text
    }

    /// IPv4 as 4 bytes, IPv6 as 16; an IPv4-mapped IPv6 address becomes its IPv4 form. Nil for anything else
    /// (host names are never matched: a rule with sources refuses them).
    public static func parseAddress(_ s: String) -> [UInt8]? {
        guard !s.isEmpty, s.utf8.count < 64, !s.contains("%") else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 {
            let b = withUnsafeBytes(of: &v6) { Array($0) }
            if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff { return Array(b[12..<16]) }
            return b
        }
        return nil
    }

    public func contains(_ host: String) -> Bool {
        guard let b = CIDR.parseAddress(host), b.count == address.count else { return false }
        for i in 0..<b.count {
            let keep = max(0, min(8, prefix - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
            if b[i] & mask != address[i] { return false }
        }
        return true
    }

    /// Whether every address of `other` is in this network.
    public func covers(_ other: CIDR) -> Bool {
        other.address.count == address.count && other.prefix >= prefix
            && contains(Self.format(other.address))
    }

    static func format(_ b: [UInt8]) -> String {
        if b.count == 4 { return b.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: 16, by: 2).map { String(Int(b[$0]) << 8 | Int(b[$0 + 1]), radix: 16) }.joined(separator: ":")
    }
}

/// What must hold, beyond matching, for a rule to let a request through; otherwise it is refused with the
/// rule's reason. Checked when the request is filed and again when it is approved.
public struct Conditions: Equatable, Sendable {
    /// An IANA zone name such as `Europe/Paris`; required with `windows`.
    public var timeZone: String?
    /// At least one must contain the moment (empty: any time).
    public var windows: [TimeWindow] = []
    /// The source address (`rhost`) must be in one of these (empty: any source, even none).
    public var sources: [CIDR] = []
    /// The requester must be in every one of these groups.
    public var groups: [String] = []
    public init(timeZone: String? = nil, windows: [TimeWindow] = [], sources: [CIDR] = [], groups: [String] = []) {
        self.timeZone = timeZone
        self.windows = windows
        self.sources = sources
        self.groups = groups
    }

    public var isEmpty: Bool { windows.isEmpty && sources.isEmpty && groups.isEmpty }

    func calendar() -> Calendar? {
        guard let id = timeZone, let tz = TimeZone(identifier: id) else { return nil }
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = tz
        return cal
    }

    /// The end of the window occurrence containing `now`, or nil when no window contains it (or there are none).
    public func windowEnd(at now: Date) -> Date? {
        guard !windows.isEmpty, let cal = calendar() else { return nil }
        let c = cal.dateComponents([.weekday, .hour, .minute], from: now)
        guard let wd = c.weekday, let h = c.hour, let m = c.minute else { return nil }
        let day = (wd + 5) % 7 + 1
        let prev = (day + 5) % 7 + 1
        let minute = h * 60 + m
        let today = cal.startOfDay(for: now)
        func at(_ dayStart: Date, _ minutes: Int) -> Date? {
            if minutes >= 24 * 60 {
                return cal.date(byAdding: .day, value: 1, to: dayStart)
            }
            return cal.date(bySettingHour: minutes / 60, minute: minutes % 60, second: 0, of: dayStart)
        }
        var best: Date? = nil
        for w in windows {
            var end: Date? = nil
            if w.start < w.end {
                if w.days.contains(day) && minute >= w.start && minute < w.end { end = at(today, w.end) }
            } else {
                if w.days.contains(day) && minute >= w.start, let tomorrow = cal.date(byAdding: .day, value: 1, to: today) {
                    end = at(tomorrow, w.end)
                } else if w.days.contains(prev) && minute < w.end {
                    end = at(today, w.end)
                }
            }
            if let e = end, e > now, best == nil || e > best! { best = e }
        }
        return best
    }

    /// Why these conditions refuse `who` from `rhost` at `now`, or nil when they hold.
    public func refusal(for who: Identity, rhost: String, at now: Date) -> String? {
        let missing = groups.filter { !who.groups.contains($0) }
        if !missing.isEmpty {
            return "\(who.name) is not in the group\(missing.count == 1 ? "" : "s") \(missing.joined(separator: ", "))"
        }
        if !sources.isEmpty {
            if rhost.isEmpty {
                return "the request has no source address (it must come from \(sources.map(\.description).joined(separator: ", ")); file it at login over ssh)"
            }
            if !sources.contains(where: { $0.contains(rhost) }) {
                return "the source address \(rhost) is not in \(sources.map(\.description).joined(separator: ", "))"
            }
        }
        if !windows.isEmpty && windowEnd(at: now) == nil {
            return "it is outside the allowed hours (\(windows.map(\.summary).joined(separator: "; ")) \(timeZone ?? "?"))"
        }
        return nil
    }

    public var summary: String {
        var parts: [String] = []
        if !windows.isEmpty { parts.append("hours " + windows.map(\.summary).joined(separator: "; ") + " " + (timeZone ?? "")) }
        if !sources.isEmpty { parts.append("from " + sources.map(\.description).joined(separator: ", ")) }
        if !groups.isEmpty { parts.append("requester in " + groups.joined(separator: ", ")) }
        return parts.isEmpty ? "none" : parts.joined(separator: "; ")
    }
}

/// One policy rule. Rules are tried in order; the first whose requesters, environments, host labels,
/// scope, commands and run-as user match the request decides it (later rules are not tried). A matching
/// rule whose conditions do not hold refuses the request with its reason.
public struct Rule: Equatable, Sendable {
    public var name: String
    /// Where the rule starts in the config (for messages).
    public var line: Int?
    public var requesters: Requesters
    /// Empty: every environment.
    public var environments: [String] = []
    /// The host must have every one of these labels.
    public var labels: [String] = []
    public var scopes: Set<String> = ["login"]
    /// Whether this rule's grants also open login: only when it lists `login` in `scopes`, i.e. when the same
    /// approval path would grant a login anyway (a commands- or sudo-only rule never opens ssh).
    public var grantsLogin: Bool { scopes.contains("login") }
    /// With the `commands` scope: only these exact commands (empty: any command).
    public var commands: [String] = []
    public var runAs: [String] = ["root"]
    public var maxDuration: Int64 = 3600
    public var defaultDuration: Int64 = 3600
    public var requireReason: Bool = true
    /// A regular expression a ticket (`--ticket`) must match; nil: no ticket needed.
    public var ticket: String?
    public var approval: ApprovalMode = .approvers([ApprovalTier(groups: ["jit-approvers"])])
    /// Approvers must confirm with a TOTP code.
    public var mfa: Bool = false
    public var conditions = Conditions()
    /// Said when the conditions refuse a request.
    public var refusal: String?
    /// Sudo uses each grant allows (nil: any number while it lasts); `uses: 1` makes one-shot grants.
    public var uses: Int?
    /// What sudo records of each use (`record: output` / `input,output`).
    public var record: RecordMode = .none

    public init(name: String, line: Int? = nil, requesters: Requesters) {
        self.name = name
        self.line = line
        self.requesters = requesters
    }

    public var isAutomatic: Bool { approval == .automatic }

    public var tiers: [ApprovalTier] {
        if case .approvers(let t) = approval { return t }
        return []
    }

    /// Every group that approves at some tier.
    public var allApproverGroups: [String] {
        var seen: [String] = []
        for t in tiers { for g in t.groups where !seen.contains(g) { seen.append(g) } }
        return seen
    }

    public var label: String { "rule '\(name)'" + (line.map { " (line \($0))" } ?? "") }

    var whose: String { name == "default" ? "the policy's" : "rule '\(name)''s" }

    /// The run-as user when the request names none.
    public var runAsDefault: String { runAs.contains("root") ? "root" : (runAs.first ?? "root") }

    /// Why this rule does not match, or nil when it does. Conditions are not part of matching.
    public func mismatch(_ who: Identity, environment: String, host: HostFacts, scope: Scope, runAs asked: String?) -> String? {
        guard requesters.include(who) else { return "\(who.name) is not among its requesters (\(requesters.summary))" }
        if !environments.isEmpty && !environments.contains(environment) {
            return "it is for environment\(environments.count == 1 ? "" : "s") \(environments.joined(separator: ", ")), not \(environment)"
        }
        let missing = labels.filter { !host.labels.contains($0) }
        if !missing.isEmpty { return "this host lacks the label\(missing.count == 1 ? "" : "s") \(missing.joined(separator: ", "))" }
        guard scopes.contains(scope.name) else {
            return "it allows \(scopes.sorted().joined(separator: ", ")) requests, not '\(scope.name)'"
        }
        if case .commands(let cs) = scope, !commands.isEmpty {
            let other = cs.filter { !commands.contains($0) }
            if !other.isEmpty { return "it does not list the command '\(other[0])' (it lists: \(commands.joined(separator: "; ")))" }
        }
        if scope != .login {
            let r = asked ?? runAsDefault
            guard runAs.contains(r) else { return "it does not allow running as '\(r)' (allowed: \(runAs.joined(separator: ", ")))" }
        }
        return nil
    }

    /// The tiers that may decide at `now` for a request filed at `filedAt`.
    public func openTiers(filedAt: Date, now: Date) -> [ApprovalTier] {
        // The first tier is always open, even if the clock stepped back since the request was filed.
        tiers.filter { $0.after == 0 || filedAt.addingTimeInterval(Double($0.after)) <= now }
    }

    /// Index of the highest open tier (0 for the first), or -1 for automatic rules.
    public func openTierCount(filedAt: Date, now: Date) -> Int { openTiers(filedAt: filedAt, now: now).count }

    /// When the next tier opens after the first `open` ones, if there is one.
    public func nextEscalation(filedAt: Date, open: Int) -> Date? {
        guard open < tiers.count else { return nil }
        return filedAt.addingTimeInterval(Double(tiers[open].after))
    }

    /// The groups of `who` that this rule's approval counts (recorded with the approval).
    public func approvalGroups(of who: Identity) -> [String] {
        allApproverGroups.filter { who.groups.contains($0) }
    }

    /// Whether `approvals` decide a request of `requester` filed at `filedAt`, at `now`: some open tier
    /// has enough distinct eligible approvers. The requester never counts; one approver counts once; an
    /// approval counts for a tier only if it was given after that tier opened.
    public func satisfied(by approvals: [ApprovalRecord], requester: String, filedAt: Date, now: Date) -> Bool {
        if isAutomatic { return true }
        return openTiers(filedAt: filedAt, now: now).contains { missing(tier: $0, approvals, requester: requester, filedAt: filedAt) == 0 }
    }

    /// How many more approvals the easiest open tier needs.
    public func approvalsNeeded(_ approvals: [ApprovalRecord], requester: String, filedAt: Date, now: Date) -> Int {
        if isAutomatic { return 0 }
        return openTiers(filedAt: filedAt, now: now).map { missing(tier: $0, approvals, requester: requester, filedAt: filedAt) }.min() ?? 1
    }

    func missing(tier t: ApprovalTier, _ approvals: [ApprovalRecord], requester: String, filedAt: Date) -> Int {
        let opened = filedAt.addingTimeInterval(Double(t.after))
        var seen = Set<String>()
        var eligible: [ApprovalRecord] = []
        for a in approvals where a.approver != requester && (t.after == 0 || a.at >= opened) && !a.groups.isDisjoint(with: t.groups) {
            if seen.insert(a.approver).inserted { eligible.append(a) }
        }
        guard t.oneFromEach else { return max(0, t.required - eligible.count) }
        let covered = Rule.matching(groups: t.groups, approvers: eligible.map(\.groups))
        return max(t.groups.count - covered, max(t.groups.count, t.required) - eligible.count, 0)
    }

    /// The largest number of groups that distinct approvers can each stand for (bipartite matching).
    static func matching(groups: [String], approvers: [Set<String>]) -> Int {
        var owner = [Int?](repeating: nil, count: groups.count)
        func assign(_ a: Int, _ visited: inout Set<Int>) -> Bool {
            for (gi, g) in groups.enumerated() where approvers[a].contains(g) && !visited.contains(gi) {
                visited.insert(gi)
                if owner[gi] == nil || assign(owner[gi]!, &visited) {
                    owner[gi] = a
                    return true
                }
            }
            return false
        }
        var n = 0
        for a in approvers.indices {
            var visited = Set<Int>()
            if assign(a, &visited) { n += 1 }
        }
        return n
    }

    /// When a grant approved at `now` ends: never more than `maxDuration` from now, never after the end of
    /// the time window it was approved in; an extension adds to the current end.
    public func grantEnd(duration: Int64, at now: Date, extending current: Date? = nil) -> Date {
        var end = (current.map { max($0, now) } ?? now).addingTimeInterval(Double(min(duration, maxDuration)))
        end = min(end, now.addingTimeInterval(Double(maxDuration)))
        if let w = conditions.windowEnd(at: now) { end = min(end, w) }
        return end
    }

    /// Why the rule refuses `who` now, or nil.
    public func conditionRefusal(for who: Identity, rhost: String, at now: Date) -> String? {
        guard let why = conditions.refusal(for: who, rhost: rhost, at: now) else { return nil }
        return "\(label) refuses this: \(refusal.map { "\($0) (\(why))" } ?? why)"
    }

    public var approvalSummary: String {
        switch approval {
        case .automatic: return "automatic"
        case .approvers(let ts): return ts.map(\.summary).joined(separator: "; then ") + (mfa ? "; approvers confirm with a one-time code" : "")
        }
    }
}

/// An approval as the policy counts it: who, in which of the rule's approver groups, and when.
public struct ApprovalRecord: Equatable, Sendable {
    public var approver: String
    public var groups: Set<String>
    public var at: Date
    public init(approver: String, groups: Set<String>, at: Date) {
        self.approver = approver
        self.groups = groups
        self.at = at
    }
}

/// Break-glass: members of these groups get access at once, with a mandatory reason. Always recorded as a
/// bypass and every approver is notified.
public struct BreakGlass: Equatable, Sendable {
    public var groups: [String]
    public var maxDuration: Int64 = 3600
    public var scopes: Set<String> = ["login", "sudo", "commands"]
    public var runAs: [String] = ["root"]
    public var line: Int?
    public init(groups: [String]) { self.groups = groups }
}

/// How an approved request was approved (stored as `approved_via`).
public enum ApprovedVia: String, Sendable, Equatable {
    case approvers
    case auto
    case breakGlass = "break-glass"
}

/// A request the policy accepts: completed with defaults, and the rule that governs it.
public struct Admission: Sendable {
    public var draft: Draft
    public var rule: Rule
    public var automatic: Bool
}
