public import Foundation
public import JITCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The back-off between attempts: 1 s, doubling, capped.
public enum NotifyBackoff {
    /// The wait after the `attempts`-th failed attempt (1-based).
    public static func delay(afterAttempt attempts: Int, cap: Int64) -> Int64 {
        let shift = min(max(attempts - 1, 0), 30)
        return min(Int64(1) << shift, max(cap, 1))
    }

    /// What follows a failed attempt, on a host and on the control plane alike.
    public enum Next: Equatable, Sendable {
        case retry(after: Int64)
        case giveUp
    }

    /// The rule after the `attempts`-th failed attempt of a message `age` seconds old: give up when its channel
    /// is gone, it is older than `give_up_after` or `max_attempts` is reached; else retry after the back-off.
    public static func next(attempts: Int, age: TimeInterval, channelKnown: Bool, _ s: NotifySettings) -> Next {
        if !channelKnown || age >= Double(s.giveUpAfter) || (s.maxAttempts.map { attempts >= $0 } ?? false) { return .giveUp }
        return .retry(after: delay(afterAttempt: attempts, cap: s.maxBackoff))
    }
}

/// The background notifier: expands queued audit events into per-channel messages and delivers them
/// with retries. It runs on its own thread and never touches the PAM path: the check path only ever
/// writes audit rows (and a trigger queues the notifiable ones in the same transaction).
public final class Notifications: Sendable {
    let engine: Engine
    let transport: any NotifyTransport
    let hostname: String
    /// Group members for `to_groups` (NSS by default).
    let members: @Sendable (String) -> [String]
    /// One pass at a time (the thread, and tests).
    let running = Mutex<Void>(())
    /// Channels whose delivery worker is running: each channel delivers on its own, so a slow or dead
    /// channel never delays another channel's messages.
    let busy = Mutex<Set<String>>([])
    /// Each channel's delivery threads (made on first use, kept: real threads, so a hung delivery never
    /// holds a shared pool's thread that another channel needs).
    let lanes = Mutex<[String: DeliveryLanes]>([:])
    /// Deliveries in flight at once within one channel.
    static let laneCount = 4

    /// The control plane's public URL (`public_url`): messages about a request link to its web page.
    /// Nil on a single host, which has no web page.
    let publicURL: String?

    public init(engine: Engine, transport: (any NotifyTransport)? = nil, hostname: String? = nil,
                members: (@Sendable (String) -> [String])? = nil, publicURL: String? = nil) {
        self.engine = engine
        self.publicURL = publicURL.flatMap { $0.isEmpty ? nil : $0 }
        let h = hostname ?? Notifications.systemHostname()
        self.hostname = h
        self.transport = transport ?? LiveTransport(hostname: h)
        self.members = members ?? Notifications.groupMembers
    }

    static func systemHostname() -> String {
        var buf = [UInt8](repeating: 0, count: 256)
        gethostname(&buf, 255)
        let s = String(decoding: buf.prefix { $0 != 0 }, as: UTF8.self)
        return Names.isValid(s) ? s : "localhost"
    }

    /// The members listed for a group in NSS (`getgrnam_r`'s member list).
    public static let groupMembers: @Sendable (String) -> [String] = { name in
        var gr = group()
        var res: UnsafeMutablePointer<group>? = nil
        var buf = [CChar](repeating: 0, count: 65536)
        guard getgrnam_r(name, &gr, &buf, buf.count, &res) == 0, res != nil, var p = gr.gr_mem else { return [] }
        var out: [String] = []
        while let m = p.pointee {
            out.append(String(cString: m))
            p += 1
        }
        return out
    }

    /// One pass: expand the queue, send what is due, notice grants about to end. Returns when the next
    /// thing falls due (nil: nothing scheduled).
    /// `wait`: return only when this pass's deliveries are done (tests); the agent's thread does not wait,
    /// so new events are expanded and other channels served while a slow channel is still delivering.
    @discardableResult
    public func runOnce(wait: Bool = true) -> Date? {
        running.withLock { _ in
            let cfg = engine.config
            expand(cfg)
            let workers = deliverDue(cfg)
            if wait { workers.wait() }
            var next: Date? = nil
            do {
                if cfg.notify.wantsExpiring, cfg.notify.expiryNotice > 0 {
                    next = try engine.store.noticeExpiring(window: cfg.notify.expiryNotice, now: engine.clock.now())
                    expand(cfg)
                }
                let skip = busy.withLock { $0 }
                if let d = try engine.store.nextOutboxDue(excluding: skip), next == nil || d < next! { next = d }
            } catch {
                engine.logger.error("notify: \((error as? JITError)?.message ?? "\(error)")")
            }
            return next
        }
    }

    // MARK: expanding

    func expand(_ cfg: Config) {
        do {
            for e in try engine.store.notifyQueue() {
                let messages = self.messages(for: e, cfg)
                try engine.store.expand(auditID: e.id, into: messages, createdAt: e.date, now: engine.clock.now())
            }
        } catch {
            engine.logger.error("notify: expanding queued events failed: \(error.message)")
        }
    }

    /// The facts of one audit event, or nil when it is not worth telling anyone (a request a rule approved
    /// at once; the requester had the answer in the reply).
    func facts(_ e: AuditEvent, _ cfg: Config) -> NotifyFacts? {
        guard let ev = NotifyEvent.of(auditKind: e.kind) else { return nil }
        // A fleet host tells only what it alone knows (break-glass, its sudoers files): requests, escalations,
        // decisions and grant ends are the control plane's, which sends them with the request's page link.
        if cfg.server != nil, ev != .breakGlass, ev != .sudoers { return nil }
        let r = e.requestID.flatMap { try? engine.store.request(id: $0) }
        if let via = r?.approvedVia, via == .auto || via == .breakGlass, e.kind == "request.filed" || e.kind == "request.approved" {
            return nil
        }
        let data = e.pairs
        var groups: [String] = []
        var tier: Int? = nil
        let rule = r.flatMap { cfg.policy.rule(named: $0.rule) }
        switch ev {
        case .request: groups = rule?.tiers.first?.groups ?? []
        case .escalation:
            tier = data.first { $0.0 == "tier" }.flatMap { Int($0.1) }
            if let t = tier, let rule, t >= 1, t <= rule.tiers.count { groups = rule.tiers[t - 1].groups }
        case .breakGlass: groups = Array(Set(cfg.policy.effectiveRules.flatMap(\.allApproverGroups))).sorted()
        default: break
        }
        var grantID = e.grantID ?? r?.grantID
        var expires: Date? = nil
        if ev == .expiring || ev == .decision || ev == .breakGlass, let g = grantID.flatMap({ try? engine.store.grant(id: $0) }) {
            expires = g.expiresAt
            grantID = g.id
        }
        if ev == .decision && e.kind != "request.approved" { grantID = nil }
        let details = ev == .expiring ? [] : data.filter { ["why", "what", "file", "dir", "count"].contains($0.0) }
        return NotifyFacts(eventID: e.id, event: ev, kind: e.kind, at: e.date, host: hostname, environment: r?.environment ?? cfg.environment,
                           actor: e.actor, user: e.user, request: r, grantID: grantID, grantExpiresAt: expires, approverGroups: groups,
                           tier: tier, details: details,
                           pageURL: r.flatMap { r in publicURL.map { "\($0)/web/requests/\(r.id)" } })
    }

    func messages(for e: AuditEvent, _ cfg: Config) -> [(channel: String, kind: String, payload: String, recipients: [String])] {
        guard let f = facts(e, cfg) else { return [] }
        return Self.render(f, channels: cfg.notify.channels, messageID: "jit-\(e.id)", hostname: hostname, members: members) { [engine] in
            engine.logger.error("notify: \($0)")
        }
    }

    /// One rendered message per channel that wants the event (the host's notifier and the control plane's use
    /// this one function): the webhook body, the Slack text, or a whole mail with its recipients (`to`, and with
    /// `to_groups` the approver groups' members or the requester). `messageID`: unique per event (the mail's
    /// `Message-ID` is `<messageID-channel@hostname>`).
    public static func render(_ f: NotifyFacts, channels: [NotifyChannel], messageID: String, hostname: String,
                              members: (String) -> [String], problem: (String) -> Void)
        -> [(channel: String, kind: String, payload: String, recipients: [String])]
    {
        var out: [(channel: String, kind: String, payload: String, recipients: [String])] = []
        for c in channels where c.wants(f.event) {
            switch c.kind {
            case .webhook: out.append((c.name, f.kind, NotifyRender.webhook(f), []))
            case .slack: out.append((c.name, f.kind, NotifyRender.slack(f), []))
            case .email:
                var to = c.to
                if c.toGroups, let domain = c.domain {
                    var users: [String] = []
                    switch f.event {
                    case .request, .escalation, .breakGlass: users = f.approverGroups.flatMap(members).filter { $0 != f.user }
                    case .decision, .expiring: users = [f.user]
                    case .sudoers: users = []
                    }
                    for u in users where Names.isValid(u) {
                        let a = "\(u)@\(domain)"
                        if Email.isAddress(a) && !to.contains(a) { to.append(a) }
                    }
                }
                guard !to.isEmpty else { continue }
                do {
                    let msg = try EmailMessage.render(from: c.from, to: to, subject: NotifyRender.subject(f), body: NotifyRender.plain(f),
                                                      messageID: "\(messageID)-\(c.name)@\(hostname)", date: f.at)
                    out.append((c.name, f.kind, msg, to))
                } catch {
                    problem("channel '\(c.name)': event \(f.eventID): \(error.message)")
                }
            }
        }
        return out
    }

    // MARK: delivering

    /// Starts one worker per channel with messages due (unless that channel's worker still runs); each
    /// delivers up to `laneCount` messages at once on its own threads. Returns the group to wait on.
    func deliverDue(_ cfg: Config) -> DispatchGroup {
        let group = DispatchGroup()
        let channels: [String]
        do { channels = try engine.store.dueChannels(now: engine.clock.now()) } catch {
            engine.logger.error("notify: \(error.message)")
            return group
        }
        for name in channels {
            guard busy.withLock({ $0.insert(name).inserted }) else { continue }
            let rows: [Store.OutboxRow]
            do { rows = try engine.store.dueOutbox(now: engine.clock.now(), channel: name, limit: 50) } catch {
                busy.withLock { _ = $0.remove(name) }
                engine.logger.error("notify: \(error.message)")
                continue
            }
            let l = lanes.withLock { d in
                if let l = d[name] { return l }
                let l = DeliveryLanes(count: Notifications.laneCount) { [self] row, cfg in deliver(row, cfg) }
                d[name] = l
                return l
            }
            let batch = DispatchGroup()
            group.enter()
            l.submit(rows, cfg, batch)
            batch.notify(queue: .global()) { [self] in
                busy.withLock { _ = $0.remove(name) }
                engine.store.outboxWaker.wake()
                group.leave()
            }
        }
        return group
    }

    func deliver(_ row: Store.OutboxRow, _ cfg: Config) {
        let attempts = row.attempts + 1
        let result: DeliveryResult
        if let ch = cfg.notify.channel(named: row.channel) {
            result = transport.deliver(row, via: ch, timeout: cfg.notify.timeout)
        } else {
            result = .failed("the channel '\(row.channel)' is no longer in the config")
        }
        let now = engine.clock.now()
        do {
            switch result {
            case .sent:
                try engine.store.markSent(row.id, attempts: attempts, at: now)
                engine.logger.info("notify: \(row.kind) (event \(row.auditID)) delivered to '\(row.channel)'\(attempts > 1 ? " after \(attempts) attempts" : "")")
            case .failed(let why):
                switch NotifyBackoff.next(attempts: attempts, age: now.timeIntervalSince(row.createdAt),
                                          channelKnown: cfg.notify.channel(named: row.channel) != nil, cfg.notify) {
                case .giveUp:
                    try engine.store.markFailed(row, attempts: attempts, error: why, at: now)
                    engine.logger.error("notify: gave up on \(row.kind) (event \(row.auditID)) to '\(row.channel)' after \(attempts) attempts: \(why)")
                case .retry(let wait):
                    try engine.store.markRetry(row.id, attempts: attempts, next: now.addingTimeInterval(Double(wait)), error: why)
                    engine.logger.warning("notify: \(row.kind) (event \(row.auditID)) to '\(row.channel)' failed (attempt \(attempts)): \(why); retrying in \(wait) s")
                }
            }
        } catch {
            engine.logger.error("notify: \(error.message)")
        }
    }
}

/// A channel's delivery threads: `count` threads that take messages from one queue.
final class DeliveryLanes: Sendable {
    let jobs = Mutex<[(Store.OutboxRow, Config, DispatchGroup)]>([])
    let ready = DispatchSemaphore(value: 0)

    init(count: Int, deliver: @escaping @Sendable (Store.OutboxRow, Config) -> Void) {
        for _ in 0..<count {
            let t = Thread { [self] in
                while true {
                    ready.wait()
                    guard let (row, cfg, group) = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
                    deliver(row, cfg)
                    group.leave()
                }
            }
            t.stackSize = 512 * 1024
            t.start()
        }
    }

    func submit(_ rows: [Store.OutboxRow], _ cfg: Config, _ group: DispatchGroup) {
        for r in rows {
            group.enter()
            jobs.withLock { $0.append((r, cfg, group)) }
            ready.signal()
        }
    }
}
