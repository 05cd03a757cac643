import Foundation
public import JITCore
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Paths given on the command line that win over the config file (tests run the agent in temp folders).
public struct Overrides: Sendable {
    public var socket: String?
    public var database: String?
    public var sudoersDir: String?
    public init(socket: String? = nil, database: String? = nil, sudoersDir: String? = nil) {
        self.socket = socket
        self.database = database
        self.sudoersDir = sudoersDir
    }

    public func apply(_ c: Config) -> Config {
        var c = c
        if let s = socket { c.socket = s }
        if let d = database { c.database = d }
        if let s = sudoersDir { c.sudoersDir = s }
        return c
    }
}

/// The whole agent: config → store → engine → server and scheduler; stops on SIGTERM/SIGINT, reloads on SIGHUP.
public final class Agent: Sendable {
    public let engine: Engine
    public let server: Server
    let configPath: String
    let overrides: Overrides
    let stopped = Atomic<Bool>(false)
    public let trail: AuditTrail
    /// Delivers notifications from the outbox (its own thread; see `Notifications`).
    public let notifications: Notifications
    /// Set by SIGHUP: reconcile at once.
    let reconcileNow = Atomic<Bool>(false)
    /// Fleet mode (`server:`): the stream, outbox and trail worker (nil on a single host).
    public let fleetSync: FleetSync?

    public init(configPath: String, overrides: Overrides, logger: Logger,
                effects: (@Sendable (Config, Logger, Store) -> any GrantEffects)? = nil) throws(JITError) {
        let config: Config
        do { config = overrides.apply(try Config.load(path: configPath)) } catch {
            throw JITError(.invalid, "\(error.description)")
        }
        self.configPath = configPath
        self.overrides = overrides
        let store = try Store(path: config.database)
        let fx = effects?(config, logger, store) ?? NoEffects()
        // The journal's backlog is ingested in the background once the socket is bound (`shipAudit`): a
        // big backlog never keeps the agent from answering.
        let journal = try CheckJournal(store: store)
        engine = Engine(config: config, store: store, directory: CachingDirectory(), effects: fx, logger: logger, journal: journal)
        server = Server(engine: engine, path: config.socket)
        trail = AuditTrail(store: store, settings: config.audit, logger: logger)
        notifications = Notifications(engine: engine)
        fleetSync = try Agent.fleetSync(config: config, engine: engine)
    }

    /// Runs until SIGTERM or SIGINT. Returns the exit status.
    public func run() throws(JITError) -> Int32 {
        // Block the signals in every thread; one thread takes them with sigwait.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)

        try server.bind()
        engine.reconcile()
        engine.expireDue()
        let cfg = engine.config
        engine.logger.notice("jitd \(JITVersion.string) serving \(cfg.environment) on \(cfg.socket), database \(cfg.database)")
        for w in PolicyReport.warnings(cfg, file: configPath, directory: engine.directory) { engine.logger.warning("\(w)") }
        engine.audit("agent.start", data: [("version", JITVersion.string), ("environment", cfg.environment), ("config", configPath), ("pid", String(getpid()))])
        engine.sealer.start()
        if let (setup, epoch) = engine.sealer.status {
            if cfg.audit.sealInterval != engine.sealer.intervalInUse {
                engine.logger.warning("audit.seal_interval is \(Durations.format(cfg.audit.sealInterval)) but the sealing key was set up with epochs of \(Durations.format(engine.sealer.intervalInUse ?? 0)); run jit audit setup-keys --force to change it")
            }
            engine.logger.notice("audit: sealing with setup \(setup), epoch \(epoch)")
        }

        let serverThread = Thread { [server] in server.serve() }
        serverThread.start()
        let schedulerThread = Thread { [self] in self.schedule() }
        schedulerThread.start()
        let shipperThread = Thread { [self] in self.shipAudit() }
        shipperThread.start()
        let notifyThread = Thread { [self] in self.deliverNotifications() }
        notifyThread.start()
        if let sync = fleetSync {
            engine.logger.notice("fleet mode: control plane \(sync.plane.url), host \(sync.host.name) in \(sync.host.environment), offline: \(cfg.server?.offline.rawValue ?? "")")
            Task.detached { await sync.run() }
        }

        let signalSet = set
        while true {
            var sig: Int32 = 0
            var s = signalSet
            sigwait(&s, &sig)
            if sig == SIGHUP {
                reload()
                continue
            }
            engine.logger.notice("jitd stopping (signal \(sig))")
            engine.audit("agent.stop", data: [("signal", String(sig))])
            stopped.store(true, ordering: .sequentiallyConsistent)
            fleetSync?.stop()
            server.stop()
            engine.schedulerWaker.wake()
            engine.store.appended.wake()
            // Bounded work at stop: what is not ingested or shipped now stays for the next start.
            engine.journal?.finish(within: 2)
            engine.store.outboxWaker.wake()
            engine.sealer.seal("stop")
            notifications.transport.shutdown()
            trail.ship(until: Date().addingTimeInterval(1))
            trail.announceHead()
            return 0
        }
    }

    /// SIGHUP: a new config replaces the old only when it is valid; the paths are fixed for the run.
    func reload() {
        do {
            var c = overrides.apply(try Config.load(path: configPath))
            let old = engine.config
            if c.socket != old.socket || c.database != old.database || c.sudoersDir != old.sudoersDir {
                engine.logger.warning("reload: socket, database and sudoers_dir changes take effect at the next restart")
                c.socket = old.socket
                c.database = old.database
                c.sudoersDir = old.sudoersDir
            }
            if (c.server == nil) != (old.server == nil) || c.server?.fleet != old.server?.fleet {
                engine.logger.warning("reload: turning fleet mode on or off, or server.fleet, takes effect at the next restart")
                c.server = old.server
            } else if let s = c.server {
                engine.store.fleet.configure(s, server: engine.store.fleet.server)
            }
            engine.replaceConfig(c)
            trail.update(c.audit)
            engine.logger.notice("reloaded \(configPath)")
            for w in PolicyReport.warnings(c, file: configPath, directory: engine.directory) { engine.logger.warning("\(w)") }
            engine.audit("agent.reload", data: [("config", configPath)])
            reconcileNow.store(true, ordering: .sequentiallyConsistent)
            engine.schedulerWaker.wake()
            engine.store.outboxWaker.wake()
        } catch {
            engine.logger.error("reload refused, the old config stays in force: \(error.description)")
            engine.audit("agent.reload_refused", data: [("config", configPath), ("why", error.description)])
        }
    }

    /// Feeds syslog from the audit trail as events arrive, writes the chain's head at intervals, and
    /// archives events past the retention age.
    func shipAudit() {
        trail.announceHead()
        trail.archive(sealer: engine.sealer)
        var nextHead = Date().addingTimeInterval(Double(engine.config.audit.headInterval))
        while !stopped.load(ordering: .sequentiallyConsistent) {
            // In slices, so a big backlog (after a restart) still lets syslog, heads and stop run between.
            let more = (engine.journal?.ingest(until: Date().addingTimeInterval(1)) ?? 0) > 0
            // Sealing is timed work here, never on the check path: the seal closing an epoch comes as it ends.
            let nextSeal = engine.sealer.tick()
            trail.ship(until: Date().addingTimeInterval(1))
            if Date() >= nextHead {
                trail.announceHead()
                trail.archive(sealer: engine.sealer)
                nextHead = Date().addingTimeInterval(Double(engine.config.audit.headInterval))
            }
            if more && engine.journal.map({ $0.backlogBytes > 0 }) == true { continue }
            let wake = min(nextHead, nextSeal ?? nextHead)
            engine.store.appended.wait(timeout: max(0.01, wake.timeIntervalSinceNow))
            // Let a burst of checks gather so one transaction ingests them all.
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    /// The notifier: a pass whenever the store changes or the next retry falls due (at least every 30 s).
    func deliverNotifications() {
        while !stopped.load(ordering: .sequentiallyConsistent) {
            let next = notifications.runOnce(wait: false)
            let wait = min(30, max(0.01, next?.timeIntervalSinceNow ?? 30))
            engine.store.outboxWaker.wait(timeout: wait)
        }
    }

    /// The expiry scheduler: sleeps until the store's next deadline (or a wake-up when a new one appears),
    /// expires what is due, and reconciles at least every `reconcileInterval` seconds. No periodic sweep
    /// decides expiry: the timer is set from the next `expires_at`.
    func schedule() {
        var nextReconcile = Date().addingTimeInterval(Double(engine.config.reconcileInterval))
        while !stopped.load(ordering: .sequentiallyConsistent) {
            let next = engine.expireDue()
            if Date() >= nextReconcile || reconcileNow.exchange(false, ordering: .sequentiallyConsistent) {
                engine.reconcile()
                nextReconcile = Date().addingTimeInterval(Double(engine.config.reconcileInterval))
            }
            var until = nextReconcile
            if let n = next, n < until { until = n }
            engine.schedulerWaker.wait(timeout: max(0.001, until.timeIntervalSinceNow))
        }
    }
}
