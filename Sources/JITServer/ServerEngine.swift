import Foundation
public import JITAgent
public import JITCore
public import JITFleet
public import Logging
import NIOPosix
import PostgresNIO
import Synchronization

/// The control plane's decision engine: the agent's `Engine` (the same rules, life cycle and authorization
/// code) over `PostgresStore`, serving
/// - the server's own Unix socket (`socket:` in server.yaml, default /run/jit/server.sock, mode 0666 like the
///   agent's: who calls is the kernel's SO_PEERCRED, resolved in the server's NSS), so the same CLI works:
///   `jit --socket /run/jit/server.sock list|show|approve|deny|grants|revoke`; host-only operations (check,
///   sessions, uses, recordings, the host's trail) are refused there with a sentence;
/// - `HostFiling` for the host routes (a request filed by an enrolled host, decided under the policy with the
///   *filing host's* environment and labels);
/// - the timer loop (expiry of grants and pending requests, escalation) that every replica runs: its rows are
///   taken with `FOR UPDATE SKIP LOCKED`, so each is ended by exactly one replica.
///
/// Effects on the server: none (no sudoers, no sessions); the grant rows are what the stream distributes.
/// The engine's host-only parts (sessions, uses, the host's trail) keep a scratch SQLite file in a private
/// temporary folder that is removed at stop; nothing decided lives there.
public final class ServerEngine: HostFiling, Sendable {
    public let engine: Engine
    public let store: PostgresStore
    let scratch: String
    let socket: Server
    /// Plain threads for the blocking store protocol, never the event loops or the cooperative pool.
    let pool: NIOThreadPool
    let stopped = Atomic<Bool>(false)
    let logger: Logger
    let socketRequired: Bool
    /// The notifications this replica sends (`notify:` in server.yaml); every replica runs one.
    public let notifications: ServerNotifications

    /// The most time the timer sleeps: another replica may have filed something due sooner.
    static let maxTimerSleep = 2.0

    /// Keys of jit.yaml that only make sense on a host; refused in the control plane's policy file.
    static let hostKeys = ["socket", "database", "sudoers_dir", "sudo_io_dir", "audit", "notify", "labels", "reconcile_interval"]

    /// Reads the policy (`policy:` in server.yaml): jit.yaml's policy keys, parsed by the agent's own parser.
    /// `environment:` may be left out (the control plane serves every environment).
    public static func loadPolicy(_ config: ServerConfig) throws(ConfigError) -> Config {
        guard let path = config.policyPath else {
            var c = Config()
            c.environment = "fleet"
            return c
        }
        let text: String
        do {
            try SecureFiles.checkNotWritableByOthers(path, what: "the policy file")
            text = try SecureFiles.read(path, what: "the policy file")
        } catch {
            throw ConfigError(file: path, line: nil, field: "", message: error.message + "; fix 'policy:' in the server config")
        }
        var hasEnvironment = false
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            guard let key = line.split(separator: ":", maxSplits: 1).first.map(String.init), !key.hasPrefix(" "), !key.hasPrefix("#") else { continue }
            if key == "environment" { hasEnvironment = true }
            if hostKeys.contains(key) {
                if key == "notify" {
                    throw ConfigError(file: path, line: n + 1, field: key, message: "goes in the server config (server.yaml, 'notify:' with the same keys), not in the policy file")
                }
                throw ConfigError(file: path, line: n + 1, field: key, message: "is a host setting (jit.yaml); the control plane's policy file holds only rules, policy, break_glass, pending_ttl and limits")
            }
        }
        // Appended, so the line numbers of every error stay the file's own.
        return try Config.parse(hasEnvironment ? text : text + "\nenvironment: fleet\n", file: path)
    }

    /// `notifyTransport`, `members`: the notifier's transport and group members (tests; default: the agent's
    /// live transports and NSS).
    public init(config: ServerConfig, db: FleetDatabase, logger: Logger, directory: any UserDirectory = CachingDirectory(),
                notifyTransport: (any NotifyTransport)? = nil, members: (@Sendable (String) -> [String])? = nil) throws(FleetError) {
        let policy: Config
        do { policy = try ServerEngine.loadPolicy(config) } catch { throw FleetError("config", error.description) }
        var template = Array("/tmp/jitd-server-XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { throw FleetError("internal", "cannot make a private temporary folder: \(String(cString: strerror(errno)))") }
        scratch = String(cString: d)
        var cfg = policy
        cfg.socket = config.socket
        cfg.database = scratch + "/engine/jit.db"
        let local: Store
        do { local = try Store(path: cfg.database) } catch { throw FleetError("internal", error.message) }
        store = PostgresStore(db: db, logger: logger)
        let engine = Engine(config: cfg, store: local, directory: directory, logger: logger, decisions: store)
        self.engine = engine
        socket = Server(engine: engine, path: config.socket)
        pool = NIOThreadPool(numberOfThreads: 8)
        pool.start()
        self.logger = logger
        socketRequired = config.socketRequired
        notifications = ServerNotifications(store: store, settings: config.notify, policy: { [engine] in engine.config }, publicURL: config.publicURL,
                                            transport: notifyTransport, members: members, clock: { [engine] in engine.clock.now() }, logger: logger)
    }

    /// Opens the socket and starts the socket's and the timer's threads (after the migrations ran).
    public func start() throws(FleetError) {
        do {
            try socket.bind()
            Thread { [socket] in socket.serve() }.start()
        } catch {
            guard !socketRequired else { throw FleetError("socket", error.message + " (socket: in the server config)") }
            logger.warning("the approvers' socket \(socket.path) is not open: \(error.message); set 'socket:' in the server config to give this replica its own")
        }
        Thread { [self] in self.timer() }.start()
        notifications.start()
        logger.info("decisions: \(store.describe); approvers' socket \(socket.path); policy of \(engine.config.policy.effectiveRules.count) rule(s)")
    }

    public func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        socket.stop()
        engine.schedulerWaker.wake()
        notifications.stop()
        try? pool.syncShutdownGracefully()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// Expires what is due and escalates, then sleeps until the next deadline (at most `maxTimerSleep`).
    func timer() {
        while !stopped.load(ordering: .sequentiallyConsistent) {
            let next = engine.expireDue()
            var until = Date().addingTimeInterval(Self.maxTimerSleep)
            if let n = next, n < until { until = n }
            _ = engine.schedulerWaker.wait(timeout: max(0.001, until.timeIntervalSinceNow))
        }
    }

    // MARK: HostFiling

    public func file(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        try await fileReportingReplay(request, from: caller).0
    }

    /// `file`, and whether this call filed it (true: 201) or answered a replay of `(caller, seq)` (false: 200).
    public func fileReportingReplay(_ request: FleetWire.HostRequest, from caller: CallerHost) async throws(FleetError) -> (FleetWire.RequestStatus, created: Bool) {
        let h = caller.record
        // Targets: enrolled, unrevoked hosts of the caller's own environment (never another's).
        let targets = Array(Set(request.hosts)).sorted()
        if !targets.isEmpty {
            let known = try await store.enrolledHosts(targets, environment: h.environment)
            let missing = targets.filter { !known.contains($0) }
            guard missing.isEmpty else {
                throw FleetError("invalid", "no enrolled host of environment '\(h.environment)' is named \(missing.joined(separator: ", ")); a request names hosts of its own environment only")
            }
        }
        return try await onPool { () throws(FleetError) in try self.fileNow(request, caller, targets) }
    }

    public func status(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        try await onPool { () throws(FleetError) in
            let r: AccessRequest?
            do throws(JITError) { r = try self.store.request(id: id) } catch { throw Self.fleetError(error) }
            // Another host's request and a missing one get the same answer.
            guard let r, r.filedByHost == caller.record.name else { throw FleetError("not_found", "there is no request \(id) filed by this host") }
            return self.status(of: r)
        }
    }

    public func cancel(id: Int64, for caller: CallerHost) async throws(FleetError) -> FleetWire.RequestStatus {
        try await onPool { () throws(FleetError) in
            do throws(JITError) {
                guard let r = try self.store.request(id: id), r.filedByHost == caller.record.name else {
                    throw JITError(.notFound, "there is no request \(id) filed by this host")
                }
                guard r.state == .pending else { return self.status(of: r) }
                guard let who = self.engine.directory.user(name: r.user) else {
                    throw JITError(.notFound, "the control plane does not know the user '\(r.user)' any more; request \(id) stays until it expires")
                }
                do throws(JITError) {
                    let ended = try self.engine.cancel(id: id, by: who, why: "cancelled on host \(caller.record.name)")
                    return self.status(of: ended)
                } catch where error.code == .conflict {
                    // Decided at the same moment (approved, denied, expired): that decision stands.
                    if let now = try self.store.request(id: id) { return self.status(of: now) }
                    throw error
                }
            } catch {
                throw Self.fleetError(error)
            }
        }
    }

    func onPool<T: Sendable>(_ body: @escaping @Sendable () throws(FleetError) -> T) async throws(FleetError) -> T {
        do {
            return try await pool.runIfActive { try body() }
        } catch let e as FleetError {
            throw e
        } catch {
            throw FleetError("internal", "the decision engine is stopping (\(error)); try again")
        }
    }

    static func fleetError(_ e: JITError) -> FleetError {
        let code: String
        switch e.code {
        case .notFound: code = "not_found"
        case .badRequest, .tooLarge, .version: code = "bad_request"
        default: code = e.code.rawValue
        }
        return FleetError(code, e.message)
    }

    func fileNow(_ q: FleetWire.HostRequest, _ caller: CallerHost, _ targets: [String]) throws(FleetError) -> (FleetWire.RequestStatus, created: Bool) {
        let h = caller.record
        do throws(JITError) {
            // The same (host, seq) again: the first answer again, nothing filed twice.
            if let r = try store.request(filedBy: h.name, seq: q.seq) { return (status(of: r), false) }
            guard q.seq > 0 else { throw JITError(.invalid, "seq must be a positive whole number (the host's outbox sequence)") }
            for (name, v, max) in [("rhost", q.rhost, 255), ("service", q.service, 64)] {
                guard v.utf8.count <= max, !v.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                    throw JITError(.invalid, "\(name) must be at most \(max) bytes without control characters")
                }
            }
            guard let who = engine.directory.user(name: q.user) else {
                throw JITError(.notFound, "the control plane does not know the user '\(q.user)' (its NSS: files, SSSD or LDAP); requests are decided only for users it knows")
            }
            let scope: Scope
            do { scope = try Scope(name: q.scope, commands: q.commands) } catch { throw JITError(error) }
            let draft = Draft(environment: h.environment, scope: scope, runAs: q.runAs, duration: q.duration, reason: q.reason, rhost: q.rhost,
                              service: q.service, ticket: q.ticket, uses: q.uses)
            let origin = Filing(host: h.name, seq: q.seq, facts: HostFacts(environment: h.environment, labels: Set(h.labels)), hosts: targets)
            do {
                return (status(of: try engine.fileDecision(draft, for: who, extending: nil, origin: origin).request), true)
            } catch where error.code == .conflict {
                // The same message at the same moment on another replica: its answer.
                if let r = try store.request(filedBy: h.name, seq: q.seq) { return (status(of: r), false) }
                throw error
            }
        } catch {
            throw Self.fleetError(error)
        }
    }

    /// The answer a host shows its user.
    func status(of r: AccessRequest) -> FleetWire.RequestStatus {
        let groups = engine.config.policy.rule(named: r.rule)?.tiers.first?.groups ?? []
        let message: String
        switch r.state {
        case .pending:
            message = "request \(r.id) is waiting for approval on the control plane (\(groups.isEmpty ? "an approver" : "someone in \(groups.joined(separator: ", "))")); there: jit --socket \(socket.path) approve \(r.id)"
        case .approved:
            message = "request \(r.id) was approved by \(r.decidedBy ?? "an approver")" + (r.grantID.map { ": grant \($0)" } ?? "")
        case .denied, .cancelled:
            message = "request \(r.id) was \(r.state.rawValue)" + (r.decidedBy.map { " by \($0)" } ?? "") + (r.comment.map { ": \($0)" } ?? "")
        case .expired:
            message = "request \(r.id) expired unanswered"
        }
        return FleetWire.RequestStatus(id: r.id, state: r.state.rawValue, rule: r.rule, user: r.user, environment: r.environment, hosts: r.hosts,
                                       approverGroups: groups, grantID: r.grantID, expiresAt: Timestamps.format(r.expiresAt), message: message)
    }
}

extension PostgresStore {
    /// Which of `names` are enrolled, unrevoked hosts of `environment`.
    public func enrolledHosts(_ names: [String], environment: String) async throws(FleetError) -> Set<String> {
        do {
            var out = Set<String>()
            let q: PostgresQuery = "SELECT name FROM hosts WHERE name = ANY(\(names)) AND environment = \(environment) AND revoked_at IS NULL"
            for try await n in try await db.client.query(q, logger: logger).decode(String.self) { out.insert(n) }
            return out
        } catch {
            throw db.failure(error, doing: "looking up the requested hosts")
        }
    }
}
