import Foundation
import JITCore

/// The audit trail's side of the engine: the check path's events, and the `audit`, `audit_verify` and
/// `note` operations (docs/PROTOCOL.md).
extension Engine {
    /// Records what a PAM check decided: one append to the check journal (see `CheckJournal`), or without
    /// a journal one database write that does not wait for fsync. Either way the event survives the agent
    /// being killed once this returns, and the reply is sent after. Failing to record fails the check closed.
    func auditCheck(_ m: Message, user: String, reply: Message) -> Message {
        let decision = reply["decision"] ?? "deny"
        guard decision != "ignore", !dropUnrecorded(decision: decision, user: user) else { return reply }
        var data: [(String, String)] = [("service", m["service"] ?? ""), ("decision", decision)]
        for k in ["rhost", "tty", "pid"] { if let v = m[k], !v.isEmpty { data.append((k, v)) } }
        if ServiceKind(service: m["service"] ?? "") == .sudo {
            // What sudo runs, as the module read it from sudo's argv, or a sentence saying it is not known.
            let use = sudoUse(m)
            data.append(("command", use.commandForTrail))
            if let r = use.runAs { data.append(("runas", r)) }
        } else if let v = m["command"], !v.isEmpty {
            data.append(("command", v))
        }
        if decision != "allow", let msg = reply["message"] { data.append(("why", msg)) }
        let kind = decision == "allow" ? (ServiceKind(service: m["service"] ?? "") == .sudo ? "check.sudo" : "check.login") : "check.\(decision)"
        do {
            try recordFromPAM(kind, user: user, requestID: reply["request"].flatMap { Int64($0) },
                              grantID: reply["grant"].flatMap { Int64($0) }, data: data)
            return reply
        } catch {
            logger.error("audit: \(error.message); refusing the check")
            return Message("ok", [("decision", "deny"), ("message", "access denied: jitd could not record the audit event (\(error.message))")])
        }
    }

    /// A `check` from a peer that is not root. Every field of a check but `user` is something only the PAM
    /// module knows (`FieldRules.moduleContext`, and `file`/`reason` file through the module's path), so
    /// from anyone else it is a claim: refused, and recorded under the caller the kernel named (finding 1, 6).
    /// The event holds only the names of the fields sent, never their values.
    func refuseModuleQuestion(_ m: Message, from c: Identity) -> JITError {
        let sent = m.fields.map(\.0).filter { $0 != "user" }
        do {
            try recordFromPAM("check.refused", actor: c.name, user: m["user"] ?? "", requestID: nil, grantID: nil,
                              data: [("why", "not a root peer"), ("uid", String(c.uid)), ("fields", sent.joined(separator: ","))])
        } catch {
            logger.error("audit: \(error.message)")
        }
        logger.warning("check from uid \(c.uid) (\(c.name)) refused: only the PAM module (a root peer) asks 'check'")
        return JITError(.unauthorized, "'check' is the PAM module's question and only a root peer may ask it: its fields ("
                        + FieldRules.moduleContext.joined(separator: ", ")
                        + ", file) describe a login or sudo that only the module sees; see your grants with 'jit grants --active'")
    }

    /// An event from the PAM path: into the check journal (one append), or without a journal into the
    /// database without waiting for fsync. It survives the agent being killed once this returns.
    func recordFromPAM(_ kind: String, actor: String = "pam", user: String, requestID: Int64?, grantID: Int64?, data: [(String, String)]) throws(JITError) {
        if let journal {
            try journal.append(at: clock.now(), kind: kind, actor: actor, user: user, requestID: requestID, grantID: grantID, data: data)
        } else {
            try store.record(kind, actor: actor, user: user, requestID: requestID, grantID: grantID, data: data, at: clock.now(), durable: false)
        }
    }

    /// Records an event that is not a state change (agent start, reload, sudoers writes). Logs on failure.
    public func audit(_ kind: String, actor: String = "jitd", user: String = "", grantID: Int64? = nil, data: [(String, String)] = []) {
        do {
            try store.record(kind, actor: actor, user: user, grantID: grantID, data: data, at: clock.now())
        } catch {
            logger.error("audit: could not record \(kind): \(error.message)")
        }
    }

    func dispatchAudit(_ m: Message, _ c: Identity) throws(JITError) -> Message? {
        do {
            switch m.word {
            case "audit":
                try m.onlyKeys(["since", "until", "user", "grant", "after"])
                // Bounded: a reader never waits for a whole backlog (the background ingest goes on).
                journal?.ingest(until: Date().addingTimeInterval(2))
                var q = Store.AuditQuery(limit: Store.pageSize + 1)
                if let s = m["since"] { q.since = try time(s, "since") }
                if let u = m["until"] { q.until = try time(u, "until") }
                q.grantID = try m.int("grant")
                q.after = try m.int("after")
                let everyone = c.isRoot || config.policy.isApprover(c)
                if let u = m["user"] {
                    guard everyone || u == c.name else {
                        throw JITError(.unauthorized, "only root and approvers may read other users' events")
                    }
                    q.user = u
                } else if !everyone {
                    q.user = c.name
                }
                // Oldest first; `next=ID` means ask again with `after=ID`.
                return Engine.page(try store.events(q).map { ($0.id, $0.fields) })
            case "audit_verify":
                try m.onlyKeys(["archive"])
                guard c.isRoot || config.policy.isApprover(c) else {
                    throw JITError(.unauthorized, "only root and approvers may verify the audit trail")
                }
                journal?.ingest()
                let walk: AuditChain.Walk
                if let path = m["archive"] {
                    guard c.isRoot else { throw JITError(.unauthorized, "only root may verify an archive file") }
                    walk = try AuditArchive.verify(path: path)
                } else {
                    walk = try store.verifyAudit()
                }
                var f: [(String, String)] = [("ok", walk.problem == nil ? "1" : "0"), ("count", String(walk.count)),
                                             ("last_id", String(walk.lastID)), ("last_hash", walk.lastHash)]
                if let p = walk.problem { f.append(("problem", p)) }
                if let b = walk.badID { f.append(("bad_id", String(b))) }
                if m["archive"] == nil {
                    for a in try store.anchors() { f.append(("archive", "\(a.file) through event \(a.lastID)")) }
                }
                return Message("ok", f)
            case "audit_setup_keys":
                try m.onlyKeys(["force"])
                guard c.isRoot else { throw JITError(.unauthorized, "only root may set up the sealing keys") }
                let k = try sealer.setup(interval: config.audit.sealInterval, force: m["force"] == "1")
                return Message("ok", [("verify_key", k.longForm), ("verify_key_short", k.shortForm), ("setup", k.setupID),
                                      ("start", Timestamps.format(k.begins(0))), ("interval", Durations.format(k.interval)), ("key_file", sealer.path)])
            case "audit_seal":
                try m.onlyKeys([])
                guard c.isRoot else { throw JITError(.unauthorized, "only root may seal the audit trail") }
                guard let (s, id) = sealer.seal("manual") else {
                    throw JITError(.conflict, sealer.offReason.map { "sealing is off: \($0)" } ?? "sealing is not set up; run jit audit setup-keys first")
                }
                return Message("ok", [("id", String(id)), ("epoch", String(s.epoch)), ("next", String(s.next)), ("count", String(s.count)), ("head", s.head)])
            case "note":
                // The PAM module reports passes that never reach a check: exempt users (break-glass).
                try m.onlyKeys(["kind", "user", "service", "rhost", "tty", "why"])
                guard c.isRoot else { throw JITError(.unauthorized, "only root (the PAM module) sends notes") }
                guard let kind = m["kind"], ["exempt"].contains(kind) else { throw JITError(.badRequest, "the note kind must be 'exempt'") }
                var data: [(String, String)] = []
                for k in ["service", "rhost", "tty", "why"] { if let v = m[k], !v.isEmpty { data.append((k, v)) } }
                try recordFromPAM("pam.\(kind)", user: m["user"] ?? "", requestID: nil, grantID: nil, data: data)
                logger.notice("exempt pass: \(m["user"] ?? "?") via \(m["service"] ?? "?") (\(m["why"] ?? ""))")
                return Message("ok")
            default:
                return nil
            }
        } catch let e as WireError {
            throw JITError(e)
        } catch let e as JITError {
            throw e
        } catch {
            throw JITError(.internal, "\(error)")
        }
    }

    func time(_ s: String, _ key: String) throws(JITError) -> Date {
        if let d = Timestamps.parse(s) { return d }
        if let d = try? Durations.parse(s) { return clock.now().addingTimeInterval(-Double(d)) }
        throw JITError(.invalid, "'\(s)' is not a time for \(key): use RFC 3339 (2026-11-22T10:00:00Z) or an age like 2h")
    }
}
