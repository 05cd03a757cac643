public import Foundation
public import JITCore
public import Logging
import Synchronization

/// What happens outside the database when a grant starts or ends (sudoers files, sessions).
/// The sudoers helper implements it; tests use a recorder.
public protocol GrantEffects: Sendable {
    /// Called after a grant is stored. Throwing makes the grant fail (it is revoked at once).
    func started(_ g: Grant) throws(JITError)
    /// Called after a grant ended (expired or revoked).
    func ended(_ g: Grant)
    /// Called at start-up and periodically with every active grant: make the outside world match.
    func reconcile(active: [Grant])
    /// Refuses a request, before it is stored, that could never be put in place.
    func validate(user: String, scope: Scope, runAs: String) throws(JITError)
}

extension GrantEffects {
    public func validate(user: String, scope: Scope, runAs: String) throws(JITError) {}
}

public struct NoEffects: GrantEffects {
    public init() {}
    public func started(_ g: Grant) throws(JITError) {}
    public func ended(_ g: Grant) {}
    public func reconcile(active: [Grant]) {}
}

/// The agent's logic: every operation of the protocol, authorised against the kernel-given caller,
/// applied to the store through the life-cycle rules. Thread-safe: the server calls it from one thread
/// per connection.
public final class Engine: Sendable {
    public let store: Store
    /// Where requests, approvals, grants and one-time codes live: `store` on a host, PostgreSQL on the
    /// control plane (`DecisionStore`). The check path, sessions, uses and the host's trail stay on `store`.
    public let decisions: any DecisionStore
    /// The control plane's engine: host-only operations (check, sessions, uses, recordings) are refused.
    public let onControlPlane: Bool
    public let clock: any JITClock
    public let directory: any UserDirectory
    public let effects: any GrantEffects
    public let sessions: any SessionControl
    public let logger: Logger
    /// Tells approvers about new requests, escalations and break-glass (see `Notifier`).
    public let notifier: any Notifier
    /// Where the check path's audit events go first (nil: straight into the database).
    public let journal: CheckJournal?
    /// Forward-secure sealing of the trail (timed work on the shipper thread; nothing on the PAM path).
    public let sealer: AuditSealer
    public let startedAt: Date
    let configBox: Mutex<Config>
    let waiters = Mutex<[Int64: [Waker]]>([:])
    /// Woken whenever a new deadline may be earlier than the one the scheduler sleeps towards.
    public let schedulerWaker = Waker()
    /// Per-user budgets (`limits:`): non-root checks by peer uid, filings by the requesting user.
    let checkBudget = Mutex(RateBuckets<UInt32>())
    let filingBudget = Mutex(RateBuckets<String>())
    /// Held from counting a user's pending requests to storing a new one, so the cap holds under concurrency.
    let filingLock = Mutex<Void>(())

    public init(config: Config, store: Store, clock: any JITClock = SystemClock(), directory: any UserDirectory = SystemDirectory(),
                effects: any GrantEffects = NoEffects(), sessions: any SessionControl = ProcessSessions(), logger: Logger = Logger(label: "jitd"),
                notifier: any Notifier = NoNotifier(), journal: CheckJournal? = nil, decisions: (any DecisionStore)? = nil) {
        self.decisions = decisions ?? store
        self.onControlPlane = decisions != nil
        self.sessions = sessions
        self.journal = journal
        sealer = AuditSealer(store: store, path: config.audit.sealKey ?? ((store.path as NSString).deletingLastPathComponent + "/seal.key"),
                             clock: clock, logger: logger, ingest: { [journal] in journal?.ingest() })
        self.notifier = notifier
        self.configBox = Mutex(config)
        self.store = store
        self.clock = clock
        self.directory = directory
        self.effects = effects
        self.logger = logger
        self.startedAt = clock.now()
    }

    public var config: Config { configBox.withLock { $0 } }

    /// The fields of `check`: the user it is about, filing, and what the module knows about the event.
    static let checkKeys = Set(["user", "file", "reason"] + FieldRules.moduleContext)

    /// Swaps in a new, already validated config (SIGHUP). Pending requests and connections are untouched.
    public func replaceConfig(_ c: Config) { configBox.withLock { $0 = c } }

    // MARK: dispatch

    /// Handles one request message from `caller` and returns the reply. Never throws: every failure is an
    /// error reply, and a failed operation changes nothing.
    public func handle(_ m: Message, from caller: Identity) -> Message {
        // Every field's bound and syntax first, for every operation (FieldRules).
        do { try FieldRules.validate(m) } catch { return .error(error.code, error.message) }
        do {
            return try dispatch(m, caller)
        } catch {
            if error.code == .internal { logger.error("\(m.word) from \(caller.name): \(error.message)") }
            return .error(error.code, error.message)
        }
    }

    /// What only a host's agent answers: the PAM question, sessions, sudo uses and recordings, and the
    /// host's own trail (the control plane's is `jitd server audit`).
    static let hostOnlyWords: Set<String> = ["check", "session_open", "session_close", "recordings", "audit", "audit_verify"]

    func dispatch(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        if onControlPlane, Engine.hostOnlyWords.contains(m.word) {
            throw JITError(.badRequest, "'\(m.word)' is answered by a host's jitd, not by the control plane: run it on the host; the control plane's trail is read with 'jitd server audit', or 'jit audit' over HTTPS (jit login)")
        }
        do {
            switch m.word {
            case "hello":
                try m.onlyKeys([])
                return Message("ok", [("version", String(Wire.version)), ("agent", "jitd \(JITVersion.string)"), ("environment", config.environment)])
            case "check":
                try m.onlyKeys(Engine.checkKeys)
                // A non-root peer's check is refused, but rate-limited and journal-capped first: its refusal is
                // recorded, and one user's flood of refusals must not fill the journal or the disk.
                try admitCheck(from: c, user: m["user"] ?? "")
                guard c.isRoot else { throw refuseModuleQuestion(m, from: c) }
                return auditCheck(m, user: m["user"] ?? "", reply: try check(m, c))
            case "cancel":
                try m.onlyKeys(["request"])
                let r = try cancel(id: try id(m, "request"), by: c, why: nil)
                return Message("ok", r.fields)
            case "session_open":
                try m.onlyKeys(["user", "service", "rhost", "tty", "pid"])
                return try sessionOpen(m, c)
            case "session_close":
                try m.onlyKeys(["session", "user", "service", "pid"])
                return try sessionClose(m, c)
            case "request":
                try m.onlyKeys(["for", "reason", "env", "scope", "command", "runas", "user", "ticket", "break_glass", "uses", "host"])
                let r = try fileRequest(m, c)
                guard isFleetHost, r.state == .pending else { return Message("ok", r.fields) }
                let sid = serverRequestID(r.id)
                return Message("ok", r.fields + (sid.map { [("approve_id", String($0)), ("approve_at", store.fleet.server)] } ?? [])
                               + [("message", fleetPendingMessage(r, serverID: sid))])
            case "list":
                try m.onlyKeys(["pending", "mine", "before"])
                let mine = try m.bool("mine")
                let everyone = (c.isRoot || config.policy.isApprover(c)) && !mine
                let rs = try decisions.requests(user: everyone ? nil : c.name, pendingOnly: try m.bool("pending"), before: try m.int("before"))
                return Engine.page(rs.map { ($0.id, $0.fields) })
            case "show":
                try m.onlyKeys(["id"])
                let r = try loadRequest(try id(m, "id"))
                guard r.user == c.name || c.isRoot || config.policy.isApprover(c) else {
                    throw JITError(.unauthorized, "request \(r.id) is not yours; only its owner, root and approvers may see it")
                }
                // Whether approving it takes a one-time code (the web page shows the field only then; the
                // engine asks for the code in `approve` whatever a client shows).
                let mfa = config.policy.rule(named: r.rule)?.mfa == true
                return Message("ok", r.fields + (mfa ? [("mfa", "1")] : []))
            case "approve":
                try m.onlyKeys(["id", "comment", "otp"])
                let d = try approve(id: try id(m, "id"), by: c, comment: try comment(m), otp: m["otp"])
                var f = d.request.fields
                f.append(("approvals_needed", String(d.needed)))
                return Message("ok", f)
            case "deny":
                try m.onlyKeys(["id", "comment"])
                return Message("ok", try deny(id: try id(m, "id"), by: c, comment: try comment(m)).fields)
            case "grants":
                try m.onlyKeys(["active", "mine", "before"])
                let mine = try m.bool("mine")
                let everyone = (c.isRoot || config.policy.isApprover(c)) && !mine
                let gs = try decisions.grants(user: everyone ? nil : c.name, activeOnly: try m.bool("active"), before: try m.int("before"))
                return Engine.page(gs.map { ($0.id, $0.fields) })
            case "revoke":
                try m.onlyKeys(["id"])
                return Message("ok", try revoke(grantID: try id(m, "id"), by: c).fields)
            case "status":
                try m.onlyKeys([])
                return try status()
            case "extend":
                try m.onlyKeys(["grant", "for", "reason", "ticket"])
                return Message("ok", try extend(m, c).fields)
            case "explain":
                try m.onlyKeys(["user", "env", "scope", "command", "runas", "for", "rhost", "at", "ticket"])
                return try explain(m, c)
            case "mfa_enroll":
                try m.onlyKeys(["otp"])
                return try mfaEnroll(m, c)
            case "mfa_reset":
                try m.onlyKeys(["user"])
                return try mfaReset(m, c)
            case "wait":
                throw JITError(.badRequest, "'wait' is handled by the server")
            default:
                if let r = try dispatchAudit(m, c) { return r }
                if m.word == "recordings" {
                    try m.onlyKeys(["grant", "session"])
                    return try recordings(m, c)
                }
                throw JITError(.badRequest, "the operation '\(m.word)' is not known; see docs/PROTOCOL.md")
            }
        } catch let e as WireError {
            throw JITError(e)
        } catch let e as JITError {
            throw e
        } catch {
            throw JITError(.internal, "\(error)")
        }
    }

    /// Packs records (newest first) into one reply that fits a frame. When some are left over, `next=ID`
    /// tells the client to ask again with `before=ID`.
    static func page(_ rows: [(Int64, [(String, String)])], budget: Int = Wire.maxFrame - 4096) -> Message {
        var out = Message("ok")
        var size = 64
        var lastID: Int64? = nil
        for (i, (id, fields)) in rows.enumerated() {
            // Worst case every byte of a value is percent-encoded.
            let n = fields.reduce(2) { $0 + $1.0.utf8.count + $1.1.utf8.count * 3 + 2 }
            if i >= Store.pageSize || size + n > budget {
                if let lastID { out.add("next", String(lastID)) }
                break
            }
            size += n
            out.records.append(fields)
            lastID = id
        }
        out.fields.insert(("count", String(out.records.count)), at: 0)
        return out
    }

    func id(_ m: Message, _ key: String) throws(JITError) -> Int64 {
        guard let s = m[key] else { throw JITError(.badRequest, "the field '\(key)' is missing") }
        guard let n = Int64(s), n > 0 else { throw JITError(.invalid, "'\(s)' is not a request or grant ID; IDs are positive whole numbers") }
        return n
    }

    func comment(_ m: Message) throws(JITError) -> String? {
        guard let c = m["comment"] else { return nil }
        guard c.utf8.count <= Limits.commentBytes else { throw JITError(.invalid, "the comment is over \(Limits.commentBytes) bytes; shorten it") }
        guard !c.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw JITError(.invalid, "the comment contains control characters; write it on one line")
        }
        return c.isEmpty ? nil : c
    }

    func loadRequest(_ id: Int64) throws(JITError) -> AccessRequest {
        guard let r = try decisions.request(id: id) else { throw JITError(.notFound, "there is no request \(id); list requests with 'jit list'") }
        return r
    }

    // MARK: requests

    func fileRequest(_ m: Message, _ c: Identity) throws(JITError) -> AccessRequest {
        var who = c
        if let u = m["user"], u != c.name {
            guard c.isRoot else { throw JITError(.unauthorized, "only root may file a request for another user") }
            guard let t = directory.user(name: u) else { throw JITError(.notFound, "there is no user '\(u)' on this host") }
            who = t
        }
        guard let f = m["for"] else { throw JITError(.badRequest, "the field 'for' (duration in seconds) is missing") }
        guard let secs = Int64(f) else { throw JITError(.invalid, "the duration '\(f)' is not a whole number of seconds") }
        guard secs > 0 else { throw JITError(.invalid, "the duration must be at least 1s; use --for like 30m or 1h") }
        let scope: Scope
        do { scope = try Scope(name: m["scope"] ?? "login", commands: m.all("command")) } catch { throw JITError(error) }
        var uses: Int? = nil
        if let u = m["uses"] {
            guard let n = Int(u), (1...1000).contains(n) else { throw JITError(.invalid, "uses must be a whole number from 1 to 1000 (--once is 1)") }
            guard scope.includesSudo else { throw JITError(.invalid, "uses counts sudo uses; a login request takes none") }
            uses = n
        }
        let hosts = Array(Set(m.all("host"))).sorted()
        guard hosts.count <= 100 else { throw JITError(.invalid, "a request names at most 100 hosts (--host); leave --host out to cover every host of the environment") }
        let draft = Draft(environment: m["env"], scope: scope, runAs: m["runas"], duration: secs, reason: m["reason"] ?? "", ticket: m["ticket"], uses: uses, hosts: hosts)
        if try m.boolField("break_glass") {
            guard hosts.isEmpty else { throw JITError(.invalid, "break-glass opens this host only: leave --host out") }
            guard !onControlPlane else {
                throw JITError(.invalid, "break-glass is local to a host (it must work when the control plane cannot be reached): run jit request --break-glass on the host")
            }
            return try breakGlass(draft, for: who).request
        }
        if onControlPlane {
            // Filed on the server's socket: for the environment named, every host of it that the rule's labels
            // allow (the rules see a host holding every label they ask for; the grant keeps the rule's labels).
            guard let env = m["env"], !env.isEmpty else {
                throw JITError(.badRequest, "the control plane serves every environment: name one with --env")
            }
            let labels = Set(config.policy.effectiveRules.flatMap(\.labels))
            // Named targets must be enrolled, unrevoked hosts of that environment.
            try decisions.checkTargets(hosts, environment: env)
            return try fileDecision(draft, for: who, extending: nil, origin: Filing(host: nil, seq: nil, facts: HostFacts(environment: env, labels: labels), hosts: hosts)).request
        }
        if !isFleetHost && !hosts.isEmpty {
            throw JITError(.invalid, "--host names target hosts of a fleet, and this agent is not in one ('server:' in /etc/jit/jit.yaml); leave --host out")
        }
        return try file(draft, for: who)
    }

    /// Admits a draft under the policy's rules and stores it: pending, or approved at once by an automatic rule.
    public func file(_ d: Draft, for who: Identity) throws(JITError) -> AccessRequest {
        try fileDecision(d, for: who, extending: nil).request
    }

    public func cancel(id: Int64, by c: Identity, why: String?) throws(JITError) -> AccessRequest {
        let r = try decisions.end(id: id, as: .cancelled, by: c.name, comment: why, at: clock.now()) { r throws(JITError) in
            guard r.user == c.name || c.isRoot else {
                throw JITError(.unauthorized, "request \(r.id) is not yours; only its owner or root may cancel it")
            }
        }
        logger.info("request \(id) cancelled by \(c.name)")
        if isFleetHost {
            // The control plane may hold it pending: the worker tells it (durably, after this commit).
            do { try store.queueFleetCancel(request: id, at: clock.now()) } catch {
                logger.error("request \(id) was cancelled here but the cancel could not be queued for the control plane: \(error.message); it stays pending there until it expires or is denied")
            }
        }
        notifyWaiters(id)
        return r
    }

    public func revoke(grantID: Int64, by c: Identity) throws(JITError) -> Grant {
        guard c.isRoot || config.policy.isApprover(c) else {
            throw JITError(.unauthorized, "only root or an approver may revoke a grant")
        }
        let g = try decisions.endGrant(id: grantID, as: .revoked, by: c.name, at: clock.now())
        effects.ended(g)
        endSessions(of: g)
        logger.info("grant \(grantID) revoked by \(c.name)")
        schedulerWaker.wake()
        return g
    }

    // MARK: the PAM question

    func check(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        let user = try field(m, "user")
        let service = try field(m, "service")
        // Only a root peer gets here (dispatch); bounds and syntax were checked by FieldRules.
        guard c.isRoot else { throw JITError(.unauthorized, "only root may ask 'check'") }
        let rhost = m["rhost"] ?? ""
        let cfg = config
        guard let who = directory.user(name: user) else {
            return Message("ok", [("decision", "deny"), ("message", "access denied: there is no user '\(user)' on this host")])
        }
        guard cfg.policy.gates(who) else {
            return Message("ok", [("decision", "ignore"), ("message", "\(user) is not gated by jit-access on this host")])
        }
        let kind = ServiceKind(service: service)
        let now = clock.now()
        if kind == .sudo {
            // #13 finding 2 / #17: a sudo use is admitted only by a grant covering its command line and
            // run-as user, and a grant with a use limit is spent by it (see Engine+Uses.swift).
            if let r = try checkSudoUse(m, c, user: user, now: now) { return r }
        } else if let g = try store.coveringGrant(user: user, kind: kind, now: now) {
            return Message("ok", [
                ("decision", "allow"), ("grant", String(g.id)), ("expires_at", Timestamps.format(g.expiresAt)),
                ("message", "access granted by grant \(g.id) until \(Timestamps.format(g.expiresAt))"),
            ])
        }
        if let r = try store.pendingRequest(user: user, kind: kind, opensLogin: { cfg.policy.rule(named: $0.rule)?.grantsLogin ?? false }) {
            return pendingReply(r)
        }
        let what = kind == .sudo ? "sudo" : "login"
        guard try m.boolField("file") else {
            return Message("ok", [("decision", "deny"), ("message", "no active \(what) grant for \(user) in \(cfg.environment); request one with: jit request --for 1h --reason TEXT\(kind == .sudo ? " --sudo" : "")")])
        }
        var reason = (m["reason"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        if reason.isEmpty {
            reason = "(no reason given) \(service) \(what) attempt" + (rhost.isEmpty ? "" : " from \(rhost)")
        }
        let (scope, runAs) = kind == .sudo ? sudoDraftScope(m) : (.login, nil)
        let draft = Draft(scope: scope, runAs: runAs, reason: reason, rhost: rhost, service: service)
        do {
            let d = try fileDecision(draft, for: who, extending: nil)
            if let g = d.grant {
                return Message("ok", [
                    ("decision", "allow"), ("grant", String(g.id)), ("expires_at", Timestamps.format(g.expiresAt)),
                    ("message", "access granted by rule '\(d.request.rule)' (automatic) until \(Timestamps.format(g.expiresAt))"),
                ])
            }
            return pendingReply(d.request)
        } catch {
            return Message("ok", [("decision", "deny"), ("message", "access denied: \(error.message)")])
        }
    }

    /// A pending request's reply. On a fleet host it names the control plane's id when the server has
    /// numbered it (`approve_id`, and `approve_at`: the control plane's URL), which is what approvers see.
    func pendingReply(_ r: AccessRequest) -> Message {
        guard isFleetHost else {
            return Message("ok", [
                ("decision", "pending"), ("request", String(r.id)), ("expires_at", Timestamps.format(r.expiresAt)),
                ("message", "request \(r.id) is waiting for approval; an approver runs: jit approve \(r.id)"),
            ])
        }
        let sid = serverRequestID(r.id)
        var fields: [(String, String)] = [("decision", "pending"), ("request", String(r.id)), ("expires_at", Timestamps.format(r.expiresAt))]
        if let sid { fields += [("approve_id", String(sid)), ("approve_at", store.fleet.server)] }
        fields.append(("message", fleetPendingMessage(r, serverID: sid)))
        return Message("ok", fields)
    }

    func field(_ m: Message, _ key: String) throws(JITError) -> String {
        guard let v = m[key], !v.isEmpty else { throw JITError(.badRequest, "the field '\(key)' is missing") }
        return v
    }

    // MARK: waiting

    /// Where a wait stands: decided (with the reply) or still pending.
    public enum WaitState: Sendable {
        case decided(Message)
        case pending(AccessRequest)
    }

    /// The reply a waiter gets for the request as it is now.
    public func waitState(id: Int64, caller c: Identity) throws(JITError) -> WaitState {
        let r = try loadRequest(id)
        guard r.user == c.name || c.isRoot else {
            throw JITError(.unauthorized, "request \(id) is not yours; only its owner or root may wait for it")
        }
        switch r.state {
        case .pending:
            return .pending(r)
        case .approved:
            if let gid = r.grantID, let g = try decisions.grant(id: gid), g.state == .active, g.expiresAt > clock.now() {
                return .decided(Message("ok", [
                    ("decision", "allow"), ("request", String(id)), ("state", r.state.rawValue), ("grant", String(g.id)),
                    ("expires_at", Timestamps.format(g.expiresAt)),
                    ("message", "request \(id) approved by \(r.decidedBy ?? "an approver"): access until \(Timestamps.format(g.expiresAt))"),
                ]))
            }
            return .decided(Message("ok", [("decision", "deny"), ("request", String(id)), ("state", "approved"),
                                           ("message", "request \(id) was approved but its grant is no longer active")]))
        case .denied, .cancelled, .expired:
            var msg = "request \(id) was \(r.state.rawValue)"
            if let b = r.decidedBy, r.state != .expired { msg += " by \(b)" }
            if let cm = r.comment, !cm.isEmpty { msg += ": \(cm)" }
            return .decided(Message("ok", [("decision", "deny"), ("request", String(id)), ("state", r.state.rawValue), ("message", msg)]))
        }
    }

    /// Registers a waker for a request's decision. Register first, then read the state, so no decision is missed.
    public func register(_ w: Waker, for id: Int64) {
        waiters.withLock { $0[id, default: []].append(w) }
    }

    public func unregister(_ w: Waker, for id: Int64) {
        waiters.withLock { d in
            d[id]?.removeAll { $0 === w }
            if d[id]?.isEmpty == true { d[id] = nil }
        }
    }

    func notifyWaiters(_ id: Int64) {
        let ws = waiters.withLock { $0[id] ?? [] }
        for w in ws { w.wake() }
    }

    public var waiterCount: Int { waiters.withLock { $0.values.reduce(0) { $0 + $1.count } } }

    // MARK: sessions

    func sessionOpen(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        guard c.isRoot else { throw JITError(.unauthorized, "only root (the PAM module) reports sessions") }
        let user = try field(m, "user"), service = try field(m, "service")
        guard let pidS = m["pid"], let pid = Int32(pidS), pid > 1 else { throw JITError(.badRequest, "the field 'pid' must be a process ID") }
        let now = clock.now()
        let g = try store.coveringGrant(user: user, kind: ServiceKind(service: service), now: now)
        let sid = try store.openSession(grantID: g?.id, user: user, service: service, rhost: m["rhost"] ?? "", tty: m["tty"] ?? "", pid: pid,
                                        startTicks: sessions.startTicks(pid: pid), at: now)
        schedulerWaker.wake()
        return Message("ok", [("session", String(sid)), ("grant", String(g?.id ?? 0))])
    }

    func sessionClose(_ m: Message, _ c: Identity) throws(JITError) -> Message {
        guard c.isRoot else { throw JITError(.unauthorized, "only root (the PAM module) reports sessions") }
        let found: Bool
        if let s = m["session"] {
            guard let sid = Int64(s) else { throw JITError(.badRequest, "the field 'session' must be a whole number") }
            found = try store.closeSession(id: sid, user: nil, service: nil, pid: nil, at: clock.now())
        } else {
            let user = try field(m, "user"), service = try field(m, "service")
            guard let pidS = m["pid"], let pid = Int32(pidS) else { throw JITError(.badRequest, "the field 'pid' must be a process ID") }
            found = try store.closeSession(id: nil, user: user, service: service, pid: pid, at: clock.now())
        }
        return Message("ok", [("closed", found ? "1" : "0")])
    }

    // MARK: status

    func status() throws(JITError) -> Message {
        let cfg = config
        let (p, a) = try decisions.counts()
        var f: [(String, String)] = [
            ("version", JITVersion.string), ("environment", cfg.environment),
            ("uptime", String(Int64(clock.now().timeIntervalSince(startedAt)))), ("pending", String(p)), ("active_grants", String(a)),
            ("database", decisions.describe), ("socket", cfg.socket), ("waiters", String(waiterCount)),
        ]
        if let n = try decisions.nextDeadline() { f.append(("next_expiry", Timestamps.format(n))) }
        let o = try store.outboxCounts()
        f += [("notify_channels", String(cfg.notify.channels.count)), ("outbox_pending", String(o.pending)), ("outbox_failed", String(o.failed))]
        return Message("ok", f)
    }

    // MARK: expiry

    /// Expires what is due now: pending requests past their TTL and grants past their end. Returns the
    /// next deadline. The scheduler calls this when its timer fires; tests call it with a manual clock.
    @discardableResult
    public func expireDue() -> Date? {
        let now = clock.now()
        do {
            for r in try decisions.expirePending(now: now) {
                logger.info("request \(r.id) expired unanswered")
                notifyWaiters(r.id)
            }
            for ended in try decisions.expireDueGrants(now: now) {
                effects.ended(ended)
                endSessions(of: ended)
                logger.info("grant \(ended.id) of \(ended.user) expired")
            }
            var next = try decisions.nextDeadline()
            if let e = escalate(now: now), next == nil || e < next! { next = e }
            if let w = warnSessions(), next == nil || w < next! { return w }
            return next
        } catch {
            logger.error("expiry: \(error.message)")
            return now.addingTimeInterval(1)
        }
    }

    /// Puts the outside world (sudoers files) in line with the store's active grants.
    public func reconcile() {
        do {
            effects.reconcile(active: try store.activeGrants().filter { $0.expiresAt > clock.now() })
            linkRecentRecordings()
        } catch {
            logger.error("reconcile: \(error.message)")
        }
    }
}

extension Message {
    func boolField(_ key: String) throws(JITError) -> Bool {
        do { return try bool(key) } catch { throw JITError(error) }
    }
}

public enum JITVersion {
    public static let string = "0.1.0"
}
