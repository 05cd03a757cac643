public import Foundation

/// An operation refused, with the wire error code and a sentence that says what to do.
public struct JITError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

extension JITError {
    public init(_ e: WireError) { self.init(e.code, e.message) }
    public init(_ e: ValidationError) { self.init(.invalid, e.message) }
    public init(_ e: TransitionError) { self.init(.conflict, e.description) }
}

/// A user as NSS knows them: who is calling (from SO_PEERCRED), or who a request is for.
public struct Identity: Equatable, Sendable {
    public var uid: UInt32
    public var name: String
    public var groups: Set<String>
    public init(uid: UInt32, name: String, groups: Set<String>) {
        self.uid = uid
        self.name = name
        self.groups = groups
    }
    public var isRoot: Bool { uid == 0 }
}

/// A new request before it is stored.
public struct Draft: Equatable, Sendable {
    public var environment: String?
    public var scope: Scope
    public var runAs: String?
    public var duration: Int64?
    public var reason: String
    public var rhost: String
    public var service: String
    /// A ticket reference (`--ticket`), checked against the rule's pattern.
    public var ticket: String?
    /// Sudo uses asked for (`jit run --once`: 1); the rule's `uses` caps it.
    public var uses: Int?
    /// Target hosts of a fleet (`jit request --host NAME`); empty: every host of the environment the rule's labels allow.
    public var hosts: [String]
    public init(environment: String? = nil, scope: Scope, runAs: String? = nil, duration: Int64? = nil, reason: String, rhost: String = "", service: String = "", ticket: String? = nil, uses: Int? = nil, hosts: [String] = []) {
        self.hosts = hosts
        self.uses = uses
        self.environment = environment
        self.scope = scope
        self.runAs = runAs
        self.duration = duration
        self.reason = reason
        self.rhost = rhost
        self.service = service
        self.ticket = ticket
    }
}

/// Limits on text from users, applied before anything is stored.
public enum Limits {
    public static let reasonBytes = 1000
    public static let commentBytes = 1000
    public static let commandBytes = 512
    public static let commands = 32
    public static let ticketBytes = 64
}


/// The policy's decisions: who is gated, which rule governs a request, who may decide it.
/// Pure: handed identities, host facts and a clock reading; no I/O.
extension Policy {
    /// The rule that the `policy:` block's request settings make: named "default", tried after `rules`.
    public var defaultRuleValue: Rule {
        var r = Rule(name: "default", line: line, requesters: Requesters(groups: requesterGroups))
        r.scopes = scopes
        r.runAs = runAs
        r.maxDuration = maxDuration
        r.defaultDuration = defaultDuration
        r.requireReason = requireReason
        r.approval = .approvers([ApprovalTier(groups: approverGroups, required: approvalsRequired)])
        return r
    }

    /// The rules in the order they are tried.
    public var effectiveRules: [Rule] { defaultRule ? rules + [defaultRuleValue] : rules }

    public func rule(named name: String) -> Rule? { effectiveRules.first { $0.name == name } }

    /// Whether some rule (or break-glass) lets `who` ask for access.
    public func isRequester(_ who: Identity) -> Bool {
        effectiveRules.contains { $0.requesters.include(who) } || isBreakGlass(who)
    }

    /// Whether `who` approves under some rule (approvers see everyone's requests and may revoke).
    public func isApprover(_ who: Identity) -> Bool {
        effectiveRules.contains { !who.groups.isDisjoint(with: $0.allApproverGroups) }
    }

    public func isBreakGlass(_ who: Identity) -> Bool {
        guard let b = breakGlass else { return false }
        return !who.groups.isDisjoint(with: b.groups)
    }

    /// Whether the PAM gate applies to this user (root never is; the module's exempt group never gets here).
    public func gates(_ who: Identity) -> Bool {
        if who.isRoot { return false }
        switch gate {
        case .all: return true
        case .requesters: return isRequester(who)
        }
    }

    /// Checks a draft against the rules as of now (for callers without a clock: rules with time windows
    /// are judged at the current time).
    public func admit(_ d: Draft, from who: Identity, hostEnvironment: String, at now: Date = Date()) throws(JITError) -> Draft {
        var trace: [String] = []
        return try evaluate(d, from: who, host: HostFacts(environment: hostEnvironment), at: now, trace: &trace).draft
    }

    /// Finds the rule that governs a draft request and checks the request against it: the first rule
    /// whose requesters, environments, labels, scope, commands and run-as match; then its limits (duration,
    /// reason, ticket) and conditions (groups, source address, time window). Every step is added to `trace`
    /// (what `jit policy explain` shows). Fails closed: no matching rule, no access.
    public func evaluate(_ d: Draft, from who: Identity, host: HostFacts, at now: Date, trace: inout [String]) throws(JITError) -> Admission {
        let rules = effectiveRules
        let legacy = rules.count == 1 && rules[0].name == "default"
        guard rules.contains(where: { $0.requesters.include(who) }) else {
            trace.append("\(who.name) is a requester of no rule")
            if legacy {
                throw JITError(.unauthorized, "\(who.name) is not in a requester group (\(requesterGroups.joined(separator: ", "))); ask an admin to add you")
            }
            let groups = Set(rules.flatMap(\.requesters.groups)).sorted()
            throw JITError(.unauthorized, "\(who.name) is not a requester under any rule (requester groups: \(groups.joined(separator: ", "))); ask an admin to add you")
        }
        var out = d
        let env = d.environment ?? host.environment
        guard env == host.environment else {
            throw JITError(.invalid, "this host is in environment '\(host.environment)', not '\(env)'; drop --env or ask on a host of '\(env)'")
        }
        out.environment = env
        let reason = try Policy.checkedReason(d.reason)
        out.reason = reason
        try Policy.checkCommands(d.scope)
        if let r = d.runAs, d.scope != .login {
            guard Names.isValid(r), r.utf8.count <= 32 else { throw JITError(.invalid, "'\(r)' is not a valid user name for --runas") }
        }
        let ticket = d.ticket.map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        if let t = ticket {
            guard t.utf8.count <= Limits.ticketBytes, !t.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " }) else {
                throw JITError(.invalid, "the ticket must be one word of at most \(Limits.ticketBytes) bytes, like OPS-123")
            }
        }
        out.ticket = ticket
        var misses: [String] = []
        for rule in rules {
            if let why = rule.mismatch(who, environment: env, host: host, scope: d.scope, runAs: d.runAs) {
                trace.append("\(rule.label) does not match: \(why)")
                misses.append("\(rule.label): \(why)")
                continue
            }
            trace.append("\(rule.label) matches (the first rule that matches decides)")
            out.runAs = d.scope == .login ? "" : (d.runAs ?? rule.runAsDefault)
            let duration = d.duration ?? rule.defaultDuration
            guard duration > 0 else { throw JITError(.invalid, "the duration must be at least 1s") }
            guard duration <= rule.maxDuration else {
                trace.append("\(Durations.format(duration)) is over its maximum of \(Durations.format(rule.maxDuration))")
                throw JITError(.invalid, "\(Durations.format(duration)) is over \(rule.whose) maximum of \(Durations.format(rule.maxDuration)); ask for less with --for")
            }
            out.duration = duration
            if rule.requireReason && reason.isEmpty {
                trace.append("it requires a reason")
                throw JITError(.invalid, rule.name == "default" ? "the policy requires a reason; give one with --reason TEXT" : "\(rule.label) requires a reason; give one with --reason TEXT")
            }
            if let pattern = rule.ticket {
                guard let t = ticket else {
                    trace.append("it requires a ticket matching \(pattern)")
                    throw JITError(.invalid, "\(rule.label) requires a ticket matching \(pattern); give one with --ticket")
                }
                guard Policy.ticket(t, matches: pattern) else {
                    trace.append("the ticket '\(t)' does not match \(pattern)")
                    throw JITError(.invalid, "the ticket '\(t)' does not match \(pattern), which \(rule.label) requires")
                }
            }
            if let why = rule.conditionRefusal(for: who, rhost: d.rhost, at: now) {
                trace.append(why)
                throw JITError(.unauthorized, why)
            }
            trace.append(rule.isAutomatic ? "it approves automatically" : "approval: \(rule.approvalSummary)")
            return Admission(draft: out, rule: rule, automatic: rule.isAutomatic)
        }
        if legacy, let r = rules.first {
            if !r.scopes.contains(d.scope.name) {
                throw JITError(.invalid, "the policy does not allow '\(d.scope.name)' requests; allowed: \(r.scopes.sorted().joined(separator: ", "))")
            }
            throw JITError(.invalid, "the policy does not allow running as '\(d.runAs ?? r.runAsDefault)'; allowed: \(r.runAs.joined(separator: ", "))")
        }
        throw JITError(.invalid, "no rule allows \(who.name) \(d.scope.summary) in \(env): " + misses.joined(separator: "; ") + "; an admin can check with: jit policy explain")
    }

    /// Break-glass: immediate access for members of the break-glass groups, with a mandatory reason.
    public func admitBreakGlass(_ d: Draft, from who: Identity, host: HostFacts) throws(JITError) -> Draft {
        guard let b = breakGlass else {
            throw JITError(.invalid, "this policy has no break-glass; ask an approver instead")
        }
        guard isBreakGlass(who) else {
            throw JITError(.unauthorized, "\(who.name) is not in a break-glass group (\(b.groups.joined(separator: ", "))); ask an approver instead")
        }
        var out = d
        let env = d.environment ?? host.environment
        guard env == host.environment else {
            throw JITError(.invalid, "this host is in environment '\(host.environment)', not '\(env)'; drop --env")
        }
        out.environment = env
        let reason = try Policy.checkedReason(d.reason)
        guard !reason.isEmpty else { throw JITError(.invalid, "break-glass always needs a reason; give one with --reason TEXT") }
        out.reason = reason
        try Policy.checkCommands(d.scope)
        guard b.scopes.contains(d.scope.name) else {
            throw JITError(.invalid, "break-glass does not allow '\(d.scope.name)' requests; allowed: \(b.scopes.sorted().joined(separator: ", "))")
        }
        if d.scope == .login {
            out.runAs = ""
        } else {
            let r = d.runAs ?? (b.runAs.contains("root") ? "root" : b.runAs.first ?? "root")
            guard Names.isValid(r), b.runAs.contains(r) else {
                throw JITError(.invalid, "break-glass does not allow running as '\(r)'; allowed: \(b.runAs.joined(separator: ", "))")
            }
            out.runAs = r
        }
        let duration = d.duration ?? b.maxDuration
        guard duration > 0, duration <= b.maxDuration else {
            throw JITError(.invalid, "\(Durations.format(duration)) is over the break-glass maximum of \(Durations.format(b.maxDuration)); ask for less with --for")
        }
        out.duration = duration
        return out
    }

    /// Whether `who` may approve or deny `r` at `now` (default: when it was filed), and under which rule:
    /// an approver of a tier open by then, and never for their own request.
    @discardableResult
    public func mayDecide(_ r: AccessRequest, by who: Identity, at now: Date? = nil) throws(JITError) -> Rule {
        let now = now ?? r.createdAt
        guard let rule = rule(named: r.rule) else {
            throw JITError(.conflict, "request \(r.id) was filed under rule '\(r.rule)', which the policy no longer has; deny it and ask for a new request")
        }
        let open = rule.openTiers(filedAt: r.createdAt, now: now)
        let groups = Array(Set(open.flatMap(\.groups))).sorted()
        guard !who.groups.isDisjoint(with: groups) else {
            if let later = rule.tiers.first(where: { !who.groups.isDisjoint(with: $0.groups) }) {
                let at = r.createdAt.addingTimeInterval(Double(later.after))
                throw JITError(.unauthorized, "\(who.name) may decide request \(r.id) only from \(Timestamps.format(at)), when \(rule.label) escalates to them; ask a current approver (\(groups.joined(separator: ", ")))")
            }
            throw JITError(.unauthorized, "\(who.name) is not in an approver group (\(groups.joined(separator: ", "))); ask an approver")
        }
        guard who.uid != r.uid && who.name != r.user else {
            throw JITError(.unauthorized, "nobody approves or denies their own request; ask another approver")
        }
        return rule
    }

    static func checkedReason(_ text: String) throws(JITError) -> String {
        let reason = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard reason.utf8.count <= Limits.reasonBytes else {
            throw JITError(.invalid, "the reason is \(reason.utf8.count) bytes; keep it under \(Limits.reasonBytes)")
        }
        guard !reason.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw JITError(.invalid, "the reason contains control characters; write it on one line")
        }
        return reason
    }

    static func checkCommands(_ scope: Scope) throws(JITError) {
        guard case .commands(let cs) = scope else { return }
        guard cs.count <= Limits.commands else { throw JITError(.invalid, "ask for at most \(Limits.commands) commands at once") }
        for c in cs {
            guard c.hasPrefix("/") else {
                throw JITError(.invalid, "the command '\(c)' is not an absolute path; write it like /usr/bin/systemctl restart nginx")
            }
            guard c.utf8.count <= Limits.commandBytes else { throw JITError(.invalid, "a command is longer than \(Limits.commandBytes) bytes") }
            guard !c.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw JITError(.invalid, "a command contains control characters")
            }
        }
    }

    /// Whether a ticket matches a rule's pattern (a regular expression, validated when the config is read).
    public static func ticket(_ t: String, matches pattern: String) -> Bool {
        guard let re = try? NSRegularExpression(pattern: pattern) else { return false }
        return re.firstMatch(in: t, range: NSRange(t.startIndex..., in: t)) != nil
    }
}
