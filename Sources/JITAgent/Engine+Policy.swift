import Foundation
public import JITCore
import Logging

/// The outcome of an approval: the request as it is now, its grant when this approval decided it, and
/// how many more approvals the easiest open tier still needs.
public struct ApprovalResult: Sendable {
    public var request: AccessRequest
    public var grant: Grant?
    public var decided: Bool
    public var needed: Int
}

/// Where a request is filed on the control plane: by an enrolled host (`host`, with its outbox `seq`), or on
/// the server's own socket (`host` nil). `facts` are what the rules see (the filing host's environment and
/// labels); `hosts` are the targets asked for.
public struct Filing: Sendable, Equatable {
    public var host: String?
    public var seq: Int64?
    public var facts: HostFacts
    public var hosts: [String]
    public init(host: String?, seq: Int64?, facts: HostFacts, hosts: [String]) {
        self.host = host
        self.seq = seq
        self.facts = facts
        self.hosts = hosts
    }

    /// Records where the grant will apply: under an automatic rule a host's filing covers only that host (a
    /// host's word alone never opens others); otherwise the named hosts, or (none named) every host of the
    /// environment holding the rule's labels. A use-limited grant must name exactly one host: a use cannot be
    /// spent once fleet-wide.
    func place(_ r: inout AccessRequest, rule: Rule, automatic: Bool) throws(JITError) {
        r.hosts = automatic ? (host.map { [$0] } ?? hosts) : hosts
        r.labels = rule.labels
        r.filedByHost = host
        r.hostSeq = seq
        if r.uses != nil && r.hosts.count != 1 {
            throw JITError(.invalid, "a grant with a use limit (--once, or the rule's uses) must name exactly one host; name it with --host")
        }
    }
}

/// The rule-driven operations: filing under the rules (pending or automatic), break-glass, approving
/// tier by tier with optional TOTP, extending, explaining, MFA enrolment and escalation. The decisions
/// themselves are `Policy`'s pure functions; this wires them to the store, the clock and the log.
extension Engine {
    func host(_ c: Config) -> HostFacts { HostFacts(environment: c.environment, labels: Set(c.labels)) }

    /// A grant's use limit: the fewer of what the request asked for (`--once`) and the rule's `uses`.
    static func uses(asked: Int?, rule: Int?) -> Int? {
        switch (asked, rule) {
        case (nil, nil): nil
        case (let a?, nil): a
        case (nil, let r?): r
        case (let a?, let r?): min(a, r)
        }
    }

    /// Admits a draft under the rules and stores it: pending, or approved at once (with its grant) when
    /// the matching rule is automatic. `extending` makes it an extension of that grant.
    public func fileDecision(_ d: Draft, for who: Identity, extending: Grant?, origin: Filing? = nil) throws(JITError) -> Store.Decision {
        if isFleetHost { return try fleetFile(d, for: who, extending: extending) }
        let cfg = config
        let now = clock.now()
        var trace: [String] = []
        let a = try cfg.policy.evaluate(d, from: who, host: origin?.facts ?? host(cfg), at: now, trace: &trace)
        let draft = a.draft
        try effects.validate(user: who.name, scope: draft.scope, runAs: draft.runAs ?? "")
        // The commands' folders are the target hosts' to check (their agents do); the control plane has none.
        if origin == nil { try CommandFolders.refuseWritable(draft.scope, for: who) }
        var r = AccessRequest(
            user: who.name, uid: who.uid, environment: draft.environment ?? cfg.environment, scope: draft.scope, runAs: draft.runAs ?? "",
            duration: draft.duration ?? a.rule.defaultDuration, reason: draft.reason, createdAt: now,
            expiresAt: now.addingTimeInterval(Double(cfg.pendingTTL)), rule: a.rule.name, rhost: d.rhost, service: d.service,
            ticket: draft.ticket, extends: extending?.id, uses: Engine.uses(asked: d.uses, rule: a.rule.uses), record: a.rule.record)
        if let o = origin {
            try o.place(&r, rule: a.rule, automatic: a.automatic)
            if let g = extending { r.hosts = g.hosts; r.labels = g.labels }
        }
        let what = extending.map { "extension of grant \($0.id)" } ?? r.scope.summary
        try admitFiling(for: who, via: origin?.host)
        if a.automatic {
            let rule = a.rule
            let dec = try decisions.insertApproved(r, via: .auto, by: "rule:\(rule.name)", at: now, noPassword: cfg.policy.noPassword,
                                               login: rule.grantsLogin) { g in
                rule.grantEnd(duration: r.duration, at: now, extending: g?.expiresAt)
            }
            try putInPlace(dec)
            guard let g = dec.grant else { return dec }
            logger.notice("request \(dec.request.id) of \(who.name) (\(what)) approved automatically by rule '\(rule.name)': grant \(g.id) until \(Timestamps.format(g.expiresAt))")
            notifier.notify(.autoApproved(dec.request, g))
            notifyWaiters(dec.request.id)
            schedulerWaker.wake()
            return dec
        }
        let stored = try filingLock.withLock { _ throws(JITError) in
            try admitPending(for: who, via: origin?.host, cap: cfg.limits.pendingPerUser)
            return try decisions.insertRequest(r)
        }
        let groups = a.rule.tiers.first?.groups ?? []
        logger.info("request \(stored.id) filed by \(who.name) under rule '\(a.rule.name)': \(what) for \(Durations.format(stored.duration)); approvers notified: \(groups.joined(separator: ", "))")
        notifier.notify(.filed(stored, approverGroups: groups))
        schedulerWaker.wake()
        return Store.Decision(request: stored, grant: nil, decided: false)
    }

    /// Break-glass: access at once for a member of a break-glass group, with a mandatory reason; recorded
    /// as a bypass (`approved_via=break-glass`), logged loudly, and every approver is notified.
    public func breakGlass(_ d: Draft, for who: Identity) throws(JITError) -> Store.Decision {
        let cfg = config
        let now = clock.now()
        let a = try cfg.policy.admitBreakGlass(d, from: who, host: host(cfg))
        try effects.validate(user: who.name, scope: a.scope, runAs: a.runAs ?? "")
        try CommandFolders.refuseWritable(a.scope, for: who)
        let duration = a.duration ?? 3600
        let r = AccessRequest(
            user: who.name, uid: who.uid, environment: a.environment ?? cfg.environment, scope: a.scope, runAs: a.runAs ?? "",
            duration: duration, reason: a.reason, createdAt: now, expiresAt: now, rule: "break-glass", rhost: d.rhost, service: d.service,
            ticket: a.ticket)
        let dec = try decisions.insertApproved(r, via: .breakGlass, by: who.name, at: now, noPassword: cfg.policy.noPassword, login: true) { _ in
            now.addingTimeInterval(Double(duration))
        }
        try putInPlace(dec)
        guard let g = dec.grant else { return dec }
        let approvers = Array(Set(cfg.policy.effectiveRules.flatMap(\.allApproverGroups))).sorted()
        logger.critical("BREAK-GLASS by \(who.name): request \(dec.request.id), grant \(g.id), \(g.scope.summary) until \(Timestamps.format(g.expiresAt)); reason: \(a.reason); notifying approvers: \(approvers.joined(separator: ", "))")
        notifier.notify(.breakGlass(dec.request, g, approverGroups: approvers))
        notifyWaiters(dec.request.id)
        schedulerWaker.wake()
        return dec
    }

    /// Puts a new or extended grant in place outside the database. A new grant that cannot be put in place
    /// is revoked at once; an extension that cannot be written keeps its old end in sudoers (reconcile
    /// retries) and is reported.
    func putInPlace(_ d: Store.Decision) throws(JITError) {
        guard let g = d.grant else { return }
        if d.request.extends != nil {
            do { try effects.started(g) } catch {
                logger.error("grant \(g.id) was extended to \(Timestamps.format(g.expiresAt)) but its sudoers file could not be rewritten: \(error.message); reconcile will retry")
            }
            for s in (try? store.openSessions(grantID: g.id)) ?? [] { try? store.rebindSession(s.id, to: g.id) }
            return
        }
        do {
            try effects.started(g)
        } catch {
            logger.error("grant \(g.id) failed: \(error.message)")
            _ = try? decisions.endGrant(id: g.id, as: .revoked, by: "jitd (failed: \(error.message))", at: clock.now())
            notifyWaiters(d.request.id)
            throw JITError(.internal, "request \(d.request.id) was approved but grant \(g.id) could not be put in place (\(error.message)); it was revoked. Fix the cause and ask the user to request again")
        }
    }

    /// One approval under the request's rule: by an approver of a tier open now, never the requester,
    /// within the rule's conditions (time window, the requester's groups), with a TOTP code when the rule
    /// asks for one. The request is approved when some open tier has enough distinct approvers.
    public func approve(id: Int64, by c: Identity, comment: String?, otp: String? = nil) throws(JITError) -> ApprovalResult {
        try refuseFleetDecision("approved")
        let policy = config.policy
        let now = clock.now()
        let r = try loadRequest(id)
        let rule = try policy.mayDecide(r, by: c, at: now)
        guard r.state == .pending else { throw JITError(.conflict, "the request is \(r.state.rawValue) and cannot become approved") }
        guard let requester = directory.user(name: r.user) else {
            throw JITError(.conflict, "the requester \(r.user) is no longer known on this host; deny request \(id)")
        }
        if let why = rule.conditionRefusal(for: requester, rhost: r.rhost, at: now) {
            throw JITError(.unauthorized, "request \(id) cannot be approved now: \(why)")
        }
        if rule.mfa {
            guard let otp, !otp.isEmpty else {
                throw JITError(.unauthorized, "\(rule.label) requires approvers to confirm with a one-time code: jit approve \(id) --otp CODE (enrol once with 'jit mfa enroll')")
            }
            try decisions.consumeOTP(user: c.name, code: otp, at: now)
        }
        let d = try decisions.approveByRule(
            id: id, approver: c.name, groups: rule.approvalGroups(of: c), mfa: rule.mfa, comment: comment, at: now, noPassword: policy.noPassword,
            login: rule.grantsLogin,
            authorize: { cur throws(JITError) in
                guard try policy.mayDecide(cur, by: c, at: now) == rule else {
                    throw JITError(.conflict, "the policy changed while approving request \(id); try again")
                }
            },
            complete: { cur, records, current throws(JITError) in
                guard rule.satisfied(by: records, requester: cur.user, filedAt: cur.createdAt, now: now) else { return nil }
                return rule.grantEnd(duration: cur.duration, at: now, extending: current?.expiresAt)
            })
        guard let g = d.grant else {
            let needed = rule.approvalsNeeded(try decisions.approvalRecords(id: id), requester: r.user, filedAt: r.createdAt, now: now)
            logger.info("request \(id): approval by \(c.name) counted under rule '\(rule.name)' (\(needed) more needed)")
            return ApprovalResult(request: d.request, grant: nil, decided: false, needed: needed)
        }
        try putInPlace(d)
        logger.info("request \(id) approved by \(c.name) (\(d.request.approvals.joined(separator: ", "))) under rule '\(rule.name)': grant \(g.id) until \(Timestamps.format(g.expiresAt))")
        notifyWaiters(id)
        schedulerWaker.wake()
        return ApprovalResult(request: d.request, grant: g, decided: true, needed: 0)
    }

    /// Denies a pending request: an approver of a tier open now (any approver when its rule is gone), never
    /// one's own.
    public func deny(id: Int64, by c: Identity, comment: String?) throws(JITError) -> AccessRequest {
        try refuseFleetDecision("denied")
        let policy = config.policy
        let now = clock.now()
        let r = try decisions.end(id: id, as: .denied, by: c.name, comment: comment, at: now) { r throws(JITError) in
            if policy.rule(named: r.rule) == nil {
                guard policy.isApprover(c) else { throw JITError(.unauthorized, "\(c.name) is not in an approver group; ask an approver") }
                guard c.uid != r.uid && c.name != r.user else {
                    throw JITError(.unauthorized, "nobody approves or denies their own request; ask another approver")
                }
                return
            }
            try policy.mayDecide(r, by: c, at: now)
        }
        logger.info("request \(id) denied by \(c.name)")
        notifyWaiters(id)
        return r
    }

    /// `extend`: asks for more time on one's own active grant, under the rules as they are now.
    func extend(_ m: Message, _ c: Identity) throws(JITError) -> AccessRequest {
        let gid = try id(m, "grant")
        guard let g = try decisions.grant(id: gid) else { throw JITError(.notFound, "there is no grant \(gid); list grants with 'jit grants'") }
        guard g.user == c.name || c.isRoot else {
            throw JITError(.unauthorized, "grant \(gid) is not yours; only its owner may ask to extend it")
        }
        guard g.state == .active, g.expiresAt > clock.now() else {
            throw JITError(.conflict, "grant \(gid) has ended (\(g.state.rawValue)); ask for a new one with 'jit request'")
        }
        guard let who = g.user == c.name ? c : directory.user(name: g.user) else {
            throw JITError(.notFound, "there is no user '\(g.user)' on this host")
        }
        guard let f = m["for"], let secs = Int64(f), secs > 0 else {
            throw JITError(.invalid, "the field 'for' must be a positive number of seconds; use --for like 30m")
        }
        let original = try decisions.request(id: g.requestID)
        let draft = Draft(
            environment: g.environment, scope: g.scope, runAs: g.scope == .login ? nil : g.runAs, duration: secs, reason: m["reason"] ?? "",
            rhost: original?.rhost ?? "", service: original?.service ?? "", ticket: m["ticket"] ?? original?.ticket)
        let origin = onControlPlane ? Filing(host: nil, seq: nil, facts: HostFacts(environment: g.environment, labels: Set(g.labels)), hosts: g.hosts) : nil
        return try fileDecision(draft, for: who, extending: g, origin: origin).request
    }

    /// `explain`: which rule would decide a request, and why (a dry run: nothing is stored).
    func explain(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        let cfg = config
        let policy = cfg.policy
        let user = try field(m, "user")
        guard c.isRoot || policy.isApprover(c) || c.name == user else {
            throw JITError(.unauthorized, "only root and approvers may explain the policy for another user; try --user \(c.name)")
        }
        guard let who = directory.user(name: user) else { throw JITError(.notFound, "there is no user '\(user)' on this host") }
        let scope: Scope
        do { scope = try Scope(name: m["scope"] ?? "login", commands: m.all("command")) } catch { throw JITError(error) }
        var now = clock.now()
        if let at = m["at"] {
            guard let t = Timestamps.parse(at) else { throw JITError(.invalid, "'\(at)' is not a time; write it like 2026-11-23T10:00:00Z") }
            now = t
        }
        var duration: Int64? = nil
        if let f = m["for"] {
            guard let s = Int64(f), s > 0 else { throw JITError(.invalid, "the field 'for' must be a positive number of seconds") }
            duration = s
        }
        let env = m["env"] ?? cfg.environment
        let hostFacts = HostFacts(environment: env, labels: Set(cfg.labels))
        let draft = Draft(environment: env, scope: scope, runAs: m["runas"], duration: duration, reason: "(policy explain)",
                          rhost: m["rhost"] ?? "", ticket: m["ticket"])
        var trace: [String] = ["\(who.name) is in groups: \(who.groups.sorted().joined(separator: ", "))",
                               "evaluated for environment \(env), host labels [\(cfg.labels.joined(separator: ", "))], at \(Timestamps.format(now))"]
        var f: [(String, String)] = [("user", who.name), ("environment", env), ("scope", scope.name)]
        let matched = policy.effectiveRules.first { $0.mismatch(who, environment: env, host: hostFacts, scope: scope, runAs: m["runas"]) == nil }
        do {
            let a = try policy.evaluate(draft, from: who, host: hostFacts, at: now, trace: &trace)
            f.append(("decision", a.automatic ? "auto" : "approvers"))
            f.append(("message", a.automatic
                ? "rule '\(a.rule.name)' grants this at once (automatic approval)"
                : "rule '\(a.rule.name)' applies: \(a.rule.approvalSummary)"))
        } catch {
            f.append(("decision", "refused"))
            f.append(("message", error.message))
        }
        if let rule = matched {
            f.append(("rule", rule.name))
            if let l = rule.line { f.append(("line", String(l))) }
            f += [
                ("max_duration", String(rule.maxDuration)), ("default_duration", String(rule.defaultDuration)),
                ("approvals", rule.approvalSummary), ("mfa", rule.mfa ? "1" : "0"), ("conditions", rule.conditions.summary),
                ("require_reason", rule.requireReason ? "1" : "0"),
            ]
            if let t = rule.ticket { f.append(("ticket_pattern", t)) }
            if let end = rule.conditions.windowEnd(at: now) { f.append(("window_ends", Timestamps.format(end))) }
        }
        if policy.isBreakGlass(who) { trace.append("\(who.name) may also use break-glass (jit request --break-glass)") }
        for s in trace { f.append(("step", s)) }
        return Message("ok", f)
    }

    /// `mfa_enroll`: a new TOTP secret for the caller, shown once. Replacing one needs a current code.
    func mfaEnroll(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        let secret = TOTP.newSecret()
        try decisions.enrollMFA(user: c.name, secret: secret, at: clock.now(), replacing: m["otp"])
        logger.notice("mfa: \(c.name) enrolled a one-time code secret")
        return Message("ok", [("user", c.name), ("secret", Base32.encode(secret)), ("uri", TOTP.uri(secret: secret, account: c.name)),
                              ("digits", String(TOTP.digits)), ("period", String(TOTP.period))])
    }

    /// `mfa_reset` (root): removes a user's secret, so they can enrol again.
    func mfaReset(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        guard c.isRoot else { throw JITError(.unauthorized, "only root may reset another user's one-time code secret") }
        let user = try field(m, "user")
        guard try decisions.resetMFA(user: user) else { throw JITError(.notFound, "\(user) has no one-time code secret") }
        logger.notice("mfa: root reset the secret of \(user)")
        return Message("ok", [("user", user)])
    }

    /// Opens the approval tiers that are due: logs and notifies the newly eligible approvers. Returns when
    /// the next tier opens, for the scheduler.
    func escalate(now: Date) -> Date? {
        let policy = config.policy
        var next: Date? = nil
        do {
            for (r, done) in try decisions.pendingWithEscalation() {
                guard let rule = policy.rule(named: r.rule) else { continue }
                let open = rule.openTierCount(filedAt: r.createdAt, now: now)
                // Marked first: of several replicas, only the one whose mark changed the row notifies.
                if open > done, try decisions.markEscalated(id: r.id, tiers: open) {
                    for t in done..<open {
                        let groups = rule.tiers[t].groups
                        logger.notice("request \(r.id) of \(r.user) was not decided in time: escalated under rule '\(rule.name)' to tier \(t + 1) (\(groups.joined(separator: ", "))), who may now decide it and are notified")
                        notifier.notify(.escalated(r, tier: t + 1, approverGroups: groups))
                    }
                }
                if let e = rule.nextEscalation(filedAt: r.createdAt, open: open), e < r.expiresAt, next == nil || e < next! { next = e }
            }
        } catch {
            logger.error("escalation: \(error.message)")
        }
        return next
    }
}
