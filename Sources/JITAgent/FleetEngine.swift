import Foundation
import JITCore
public import JITFleet
import Logging

/// The engine in fleet mode (`server:` in jit.yaml): requests filed here (by the PAM module or `jit
/// request`) go to the control plane through the outbox; approvals happen there, never here; break-glass
/// stays local (the local policy governs it) and reaches the central trail as an event. The check path is
/// unchanged: it reads the store's cache, which holds the grants the stream brought.
extension Engine {
    public var isFleetHost: Bool { config.server != nil }

    /// A host agent forwards requests but never decides them: a compromised host must not approve anything.
    func refuseFleetDecision(_ what: String) throws(JITError) {
        guard isFleetHost else { return }
        throw JITError(.unauthorized, "this host is part of a fleet: requests are \(what) on the control plane (\(store.fleet.server)), with 'jit \(what == "approved" ? "approve" : "deny") ID' there, not on a host")
    }

    /// Files a draft with the control plane: a pending local request and its outbox entry, in one
    /// transaction. The server's rules decide; nothing is evaluated here but what the user may file at all.
    func fleetFile(_ d: Draft, for who: Identity, extending: Grant?) throws(JITError) -> Store.Decision {
        if extending != nil {
            throw JITError(.invalid, "this host is part of a fleet: ask for an extension on the control plane (\(store.fleet.server)), or file a new request")
        }
        let cfg = config
        if let env = d.environment, env != cfg.environment {
            throw JITError(.invalid, "this host is in environment \(cfg.environment); a request for \(env) is filed from a host of \(env)")
        }
        guard d.reason.trimmingCharacters(in: .whitespaces).count > 0 || !d.service.isEmpty else {
            throw JITError(.invalid, "a reason is required: --reason TEXT")
        }
        let runAs = d.runAs ?? (d.scope == .login ? "" : "root")
        try effects.validate(user: who.name, scope: d.scope, runAs: runAs)
        try CommandFolders.refuseWritable(d.scope, for: who)
        try admitFiling(for: who)
        let now = clock.now()
        let r = AccessRequest(
            user: who.name, uid: who.uid, environment: cfg.environment, scope: d.scope, runAs: runAs,
            duration: d.duration ?? cfg.policy.defaultDuration, reason: d.reason, createdAt: now,
            expiresAt: now.addingTimeInterval(Double(cfg.pendingTTL)), rule: "fleet", rhost: d.rhost, service: d.service,
            ticket: d.ticket, uses: d.uses)
        let (stored, seq) = try filingLock.withLock { _ throws(JITError) in
            try admitPending(for: who, cap: cfg.limits.pendingPerUser)
            return try store.insertFleetRequest(r, askedDuration: d.duration, hosts: d.hosts, at: now)
        }
        logger.info("request \(stored.id) of \(who.name) (\(stored.scope.summary)) queued for the control plane as outbox entry \(seq)")
        schedulerWaker.wake()
        return Store.Decision(request: stored, grant: nil, decided: false)
    }

    /// What a user filing on a fleet host is told: where the request went, or that it waits for the server.
    func fleetPendingMessage(_ r: AccessRequest, serverID: Int64?) -> String {
        let url = store.fleet.server
        if let serverID {
            return "request \(serverID) is waiting for approval on the control plane (\(url)); an approver runs there: jit approve \(serverID) (this host's request \(r.id))"
        }
        if !store.fleet.reachable {
            return "the control plane (\(url)) cannot be reached: your request \(r.id) is queued and will be sent when it is back; break-glass exists: jit request --break-glass --reason TEXT"
        }
        return "request \(r.id) is queued for the control plane (\(url)); approvers find it there with: jit list --pending"
    }

    /// The longest a filing waits for the control plane to number it, so that the user is told the id
    /// approvers see (the PAM module's call allows 5 s; a login that needs approval waits anyway).
    static let serverIDWait = 1.5

    /// The control plane's id of a request filed here: waits, bounded, for the outbox to be answered while
    /// the agent is shipping and the control plane is reachable; nil otherwise (the request stays queued).
    func serverRequestID(_ local: Int64, within: Double = Engine.serverIDWait) -> Int64? {
        let deadline = Date().addingTimeInterval(within)
        while true {
            if let id = try? store.fleetServerID(request: local) { return id }
            guard store.fleet.shipping, store.fleet.reachable, Date() < deadline else { return nil }
            usleep(50_000)
        }
    }

    /// After a stream batch committed: put new grants in place, rewrite changed ends, remove ended grants
    /// and end their sessions, wake those waiting for the requests it decided.
    public func fleetApplied(_ a: Store.FleetApplied) {
        for g in a.started {
            do { try effects.started(g) } catch {
                logger.error("fleet grant \(g.id) of \(g.user) could not be put in place: \(error.message); it was revoked here")
                if let e = try? store.endGrant(id: g.id, as: .revoked, by: "jitd (failed: \(error.message))", at: clock.now()) { effects.ended(e) }
                continue
            }
            logger.notice("fleet grant \(g.id) of \(g.user): \(g.scope.summary) until \(Timestamps.format(g.expiresAt))")
        }
        for g in a.changed {
            do { try effects.started(g) } catch {
                logger.error("fleet grant \(g.id) now ends at \(Timestamps.format(g.expiresAt)) but its sudoers file could not be rewritten: \(error.message); reconcile will retry")
            }
        }
        for g in a.ended {
            effects.ended(g)
            endSessions(of: g)
            logger.notice("fleet grant \(g.id) of \(g.user) ended (\(g.state.rawValue), \(g.endedBy ?? "control plane"))")
        }
        for (id, why) in a.refused { logger.warning("refused grant \(id) from the control plane: \(why)") }
        for r in a.decided { notifyWaiters(r) }
        if let ids = try? store.activeFleetGrantIDs() { store.fleet.setFleetGrants(ids) }
        schedulerWaker.wake()
    }

    /// The control plane said how a request filed here ended (denied, cancelled, expired): the local copy
    /// ends the same way and its waiters are told. An approval is learnt from the stream (with its grant).
    public func fleetLearn(localID: Int64, status s: FleetWire.RequestStatus) {
        let next: RequestState
        switch s.state {
        case "denied": next = .denied
        case "cancelled": next = .cancelled
        case "expired": next = .expired
        default: return
        }
        do {
            _ = try store.end(id: localID, as: next, by: "control plane", comment: s.message.isEmpty ? nil : s.message, at: clock.now()) { _ throws(JITError) in }
            logger.info("request \(localID) (server request \(s.id)) was \(s.state) on the control plane")
            notifyWaiters(localID)
        } catch {
            if error.code != .conflict { logger.warning("request \(localID): \(error.message)") }
        }
    }
}
