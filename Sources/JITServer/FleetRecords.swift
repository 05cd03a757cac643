import Synchronization
public import Foundation
public import JITFleet
import JITCore
import PostgresNIO
public import X509

/// A join token's row, without its secret.
public struct TokenRecord: Sendable, Codable, Equatable {
    public var id: String
    public var environment: String
    public var labels: [String]
    public var host: String?
    public var createdBy: String
    public var createdAt: Date
    public var expiresAt: Date
    public var usedAt: Date?
    public var usedByHost: String?
    public var revokedAt: Date?

    /// active, used, expired or revoked.
    public func state(now: Date) -> String {
        if revokedAt != nil { return "revoked" }
        if usedAt != nil { return "used" }
        if expiresAt <= now { return "expired" }
        return "active"
    }
}

/// An enrolled host's row.
public struct HostRecord: Sendable, Codable, Equatable {
    public var name: String
    public var environment: String
    public var labels: [String]
    public var serial: String
    public var previousSerial: String?
    public var notAfter: Date
    public var enrolledAt: Date
    public var revokedAt: Date?
    public var lastSeen: Date?

    public var identity: HostIdentity { HostIdentity(name: name, environment: environment, labels: labels) }
}

extension FleetDatabase {
    static let tokenColumns = "id, environment, labels, host_name, created_by, created_at, expires_at, used_at, used_by_host, revoked_at"
    static let hostColumns = "name, environment, labels, cert_serial, previous_serial, not_after, enrolled_at, revoked_at, last_seen"

    func tokens(_ rows: PostgresRowSequence) async throws -> [TokenRecord] {
        var out: [TokenRecord] = []
        for try await (id, env, labels, host, by, created, expires, used, usedBy, revoked) in rows.decode(
            (String, String, [String], String?, String, Date, Date, Date?, String?, Date?).self)
        {
            out.append(TokenRecord(id: id, environment: env, labels: labels, host: host, createdBy: by, createdAt: created, expiresAt: expires, usedAt: used, usedByHost: usedBy, revokedAt: revoked))
        }
        return out
    }

    func hosts(_ rows: PostgresRowSequence) async throws -> [HostRecord] {
        var out: [HostRecord] = []
        for try await (name, env, labels, serial, prev, notAfter, enrolled, revoked, seen) in rows.decode(
            (String, String, [String], String, String?, Date, Date, Date?, Date?).self)
        {
            out.append(HostRecord(name: name, environment: env, labels: labels, serial: serial, previousSerial: prev, notAfter: notAfter, enrolledAt: enrolled, revokedAt: revoked, lastSeen: seen))
        }
        return out
    }

    // MARK: tokens

    /// Stores a new token (its secret hashed) and audits it.
    public func createToken(_ token: JoinToken, environment: String, labels: [String], host: String?, ttl: Int64, by actor: String) async throws(FleetError) -> TokenRecord {
        let id = token.id, hash = token.secretHash
        let q: PostgresQuery = """
            INSERT INTO join_tokens (id, secret_hash, environment, labels, host_name, created_by, expires_at)
            VALUES (\(id), \(hash), \(environment), \(labels), \(host), \(actor), now() + make_interval(secs => \(Double(ttl))))
            RETURNING \(unescaped: Self.tokenColumns)
            """
        do {
            guard let t = try await tokens(try await client.query(q, logger: logger)).first else {
                throw FleetError("database", "the new token was not stored")
            }
            try await audit("token_created", actor: actor, host: host, token: id, data: ["environment": environment, "labels": labels.joined(separator: ","), "expires_at": Timestamps.format(t.expiresAt)])
            return t
        } catch {
            throw failure(error, doing: "storing the join token")
        }
    }

    public func listTokens() async throws(FleetError) -> [TokenRecord] {
        do { return try await tokens(try await client.query("SELECT \(unescaped: Self.tokenColumns) FROM join_tokens ORDER BY created_at", logger: logger)) } catch {
            throw failure(error, doing: "listing join tokens")
        }
    }

    /// Revokes an unused token; false when there is none by that id that is still unused.
    public func revokeToken(id: String, by actor: String) async throws(FleetError) -> Bool {
        do {
            let rows = try await tokens(try await client.query(
                "UPDATE join_tokens SET revoked_at = now() WHERE id = \(id) AND revoked_at IS NULL AND used_at IS NULL RETURNING \(unescaped: Self.tokenColumns)", logger: logger))
            if rows.isEmpty { return false }
            try await audit("token_revoked", actor: actor, token: id)
            return true
        } catch {
            throw failure(error, doing: "revoking the join token")
        }
    }

    // MARK: enrolment

    /// Uses a join token once and enrols the host it names, in one transaction: the token's row is locked,
    /// so of two concurrent uses exactly one wins. The identity is the token's; nothing in the CSR but its
    /// key is used. A refusal is audited (outside the failed transaction) and nothing else changes.
    public func enrol(token: JoinToken, wishedName: String?, csr: CertificateSigningRequest, ca: FleetCA, lifetime: Int64, peer: String) async throws(FleetError) -> (HostRecord, Certificate) {
        let logger = self.logger
        let id = token.id, hash = token.secretHash
        do {
            return try await client.withConnection { conn in
                try await conn.withTransaction(logger: logger) { c in
                    let found = try await tokens(try await c.query(
                        "SELECT \(unescaped: Self.tokenColumns) FROM join_tokens WHERE id = \(id) AND secret_hash = \(hash) FOR UPDATE", logger: logger))
                    guard let t = found.first else {
                        throw FleetError("token_unknown", "this join token is not known to the control plane (or its secret is wrong); ask an admin for a new one ('jitd server token create')")
                    }
                    let now = Date()
                    switch t.state(now: now) {
                    case "used":
                        throw FleetError("token_used", "this join token was already used\(t.usedByHost.map { " (by host \($0))" } ?? ""); a token works once: ask an admin for a new one")
                    case "revoked": throw FleetError("token_revoked", "this join token was revoked; ask an admin for a new one")
                    case "expired": throw FleetError("token_expired", "this join token expired at \(Timestamps.format(t.expiresAt)); ask an admin for a new one")
                    default: break
                    }
                    let name: String
                    if let bound = t.host {
                        if let w = wishedName, w != bound {
                            throw FleetError("token_host", "this join token is for host '\(bound)', not '\(w)'; enrol with --name \(bound) or ask for a token for '\(w)'")
                        }
                        name = bound
                    } else {
                        guard let w = wishedName ?? Self.commonName(csr.subject) else {
                            throw FleetError("invalid_name", "the request names no host; give --name")
                        }
                        name = w
                    }
                    try HostIdentity.checkHostName(name, field: "the host name")
                    let existing = try await hosts(try await c.query("SELECT \(unescaped: Self.hostColumns) FROM hosts WHERE name = \(name) FOR UPDATE", logger: logger))
                    if let e = existing.first, e.revokedAt == nil {
                        throw FleetError("host_exists", "a host named '\(name)' is already enrolled (in \(e.environment)); revoke it first with 'jitd server host revoke \(name)', or enrol under another --name")
                    }
                    let identity = HostIdentity(name: name, environment: t.environment, labels: t.labels)
                    let cert = try ca.issueHost(csr: csr, identity: identity, lifetime: TimeInterval(lifetime), now: now)
                    let serial = FleetCA.serialHex(cert), notAfter = cert.notValidAfter, labels = t.labels, env = t.environment
                    try await c.query("UPDATE join_tokens SET used_at = now(), used_by_host = \(name) WHERE id = \(id)", logger: logger)
                    let rows = try await hosts(try await c.query("""
                        INSERT INTO hosts (name, environment, labels, cert_serial, previous_serial, not_after, token_id, enrolled_at, revoked_at, last_seen)
                        VALUES (\(name), \(env), \(labels), \(serial), NULL, \(notAfter), \(id), now(), NULL, now())
                        ON CONFLICT (name) DO UPDATE SET environment = EXCLUDED.environment, labels = EXCLUDED.labels,
                            cert_serial = EXCLUDED.cert_serial, previous_serial = NULL, not_after = EXCLUDED.not_after,
                            token_id = EXCLUDED.token_id, enrolled_at = now(), revoked_at = NULL, last_seen = now()
                        RETURNING \(unescaped: Self.hostColumns)
                        """, logger: logger))
                    try await audit("token_used", actor: "host:\(name)", host: name, token: id, data: ["peer": peer], on: c)
                    try await audit("host_enrolled", actor: "host:\(name)", host: name, token: id,
                                    data: ["environment": env, "labels": labels.joined(separator: ","), "serial": serial, "not_after": Timestamps.format(notAfter), "peer": peer], on: c)
                    guard let h = rows.first else { throw FleetError("database", "the host row was not stored") }
                    return (h, cert)
                }
            }
        } catch {
            let e = unwrap(error)
            let f = failure(e, doing: "enrolment")
            if f.code.hasPrefix("token_") || f.code == "host_exists" || f.code == "invalid_name" {
                try? await audit("token_refused", actor: "peer:\(peer)", host: wishedName, token: id, data: ["code": f.code, "reason": f.message])
            }
            throw f
        }
    }

    /// The CSR's common name: only a wish for the host's name, used when neither the token nor the request names one.
    static func commonName(_ dn: DistinguishedName) -> String? {
        for rdn in dn {
            for a in rdn where a.type == .RDNAttributeType.commonName { return String(a.value) }
        }
        return nil
    }

    /// postgres-nio wraps what a transaction's closure threw.
    func unwrap(_ error: any Error) -> any Error {
        if let t = error as? PostgresTransactionError, let inner = t.closureError { return inner }
        return error
    }

    // MARK: hosts

    /// The row of the host a certificate names, when the certificate is the host's current or previous one
    /// and the host is not revoked. Called on every authenticated request (a read; `touch` marks it seen).
    /// How long checking a host's certificate against PostgreSQL may take before the call is refused (503).
    static let authenticateDeadline: Duration = .seconds(5)

    /// The connection, not the statement, failed: PostgreSQL ended it (SQLSTATE class 57P: admin shutdown,
    /// crash shutdown, cannot connect now) or it closed under the query.
    static func connectionWentAway(_ e: PSQLError) -> Bool {
        if let state = e.serverInfo?[.sqlState] { return state.hasPrefix("57P") }
        return e.code == .serverClosedConnection || e.code == .uncleanShutdown
    }

    public func authenticate(name: String, serial: String) async throws(FleetError) -> HostRecord {
        if let h = hostCache.host(name, serial: serial) { return h }
        let generation = hostCache.generation()
        let rows: [HostRecord]
        do {
            // Bounded: with PostgreSQL away the pool would hold the call until a connection comes; a host must
            // hear at once that the control plane cannot serve it (503), so it tells its users and retries.
            rows = try await FleetDatabase.within(Self.authenticateDeadline) {
                let q: PostgresQuery = "SELECT \(unescaped: Self.hostColumns) FROM hosts WHERE name = \(name)"
                do {
                    return try await self.hosts(try await self.client.query(q, logger: self.logger))
                } catch let e as PSQLError where Self.connectionWentAway(e) {
                    // A pooled connection PostgreSQL had just ended (a restart, pg_terminate_backend): a read,
                    // so asked once more on a fresh connection rather than refused.
                    return try await self.hosts(try await self.client.query(q, logger: self.logger))
                }
            }
        } catch is DeadlineExceeded {
            throw FleetError("database", "the control plane cannot reach its PostgreSQL (\(describe)) to check host '\(name)'; it answers again when the database is back")
        } catch {
            throw failure(error, doing: "checking the host")
        }
        guard let h = rows.first else {
            throw FleetError("host_unknown", "host '\(name)' is not enrolled with this control plane; enrol it with 'jitd enrol'")
        }
        guard h.revokedAt == nil else {
            throw FleetError("host_revoked", "host '\(name)' was revoked at \(Timestamps.format(h.revokedAt!)); an admin must enrol it again with a new token")
        }
        guard serial == h.serial || serial == h.previousSerial else {
            throw FleetError("certificate_replaced", "this certificate of host '\(name)' has been replaced; use the newest one (in the fleet folder), or enrol again")
        }
        hostCache.store(h, readAt: generation)
        return h
    }

    /// Issues a new certificate for an authenticated host (same identity; the CSR's key may be new).
    /// The certificate before it stays valid until it expires, so a host that crashed mid-renewal can retry.
    public func renew(host: HostRecord, presented serial: String, newKey: Bool, csr: CertificateSigningRequest, ca: FleetCA, lifetime: Int64) async throws(FleetError) -> (HostRecord, Certificate) {
        let cert = try ca.issueHost(csr: csr, identity: host.identity, lifetime: TimeInterval(lifetime))
        let new = FleetCA.serialHex(cert), na = cert.notValidAfter, name = host.name, current = host.serial
        hostCache.invalidate(name)
        defer { hostCache.invalidate(name) }
        let rows: [HostRecord]
        do {
            rows = try await hosts(try await client.query("""
                UPDATE hosts SET previous_serial = cert_serial, cert_serial = \(new), not_after = \(na)
                WHERE name = \(name) AND revoked_at IS NULL AND cert_serial = \(current)
                RETURNING \(unescaped: Self.hostColumns)
                """, logger: logger))
        } catch {
            throw failure(error, doing: "renewing the host certificate")
        }
        guard let h = rows.first else {
            throw FleetError("conflict", "host '\(name)' was revoked or renewed at the same moment; try again")
        }
        try await audit("host_renewed", actor: "host:\(name)", host: name,
                        data: ["serial": new, "previous_serial": serial, "not_after": Timestamps.format(na),
                               "new_key": newKey ? "true" : "false"])
        return (h, cert)
    }

    public func listHosts() async throws(FleetError) -> [HostRecord] {
        do { return try await hosts(try await client.query("SELECT \(unescaped: Self.hostColumns) FROM hosts ORDER BY name", logger: logger)) } catch {
            throw failure(error, doing: "listing hosts")
        }
    }

    /// Revokes a host: every call it makes from now on is refused, whatever certificate it holds.
    public func revokeHost(name: String, by actor: String) async throws(FleetError) -> HostRecord? {
        hostCache.invalidate(name)
        defer { hostCache.invalidate(name) }
        do {
            let rows = try await hosts(try await client.query(
                "UPDATE hosts SET revoked_at = now() WHERE name = \(name) AND revoked_at IS NULL RETURNING \(unescaped: Self.hostColumns)", logger: logger))
            guard let h = rows.first else { return nil }
            try await audit("host_revoked", actor: actor, host: name, data: ["serial": h.serial])
            return h
        } catch {
            throw failure(error, doing: "revoking the host")
        }
    }
}



/// `FleetDatabase.within` ran out of time.
struct DeadlineExceeded: Error {}

/// One answer to one waiting caller, from whichever side comes first.
final class FirstAnswer<T: Sendable>: Sendable {
    private let waiting = Mutex<CheckedContinuation<T, any Error>?>(nil)
    private let other = Mutex<Task<Void, Never>?>(nil)
    func wait(_ k: CheckedContinuation<T, any Error>) { waiting.withLock { $0 = k } }
    func setOther(_ t: Task<Void, Never>) { other.withLock { $0 = t } }
    /// Answers the caller if nobody has yet; true when this call did.
    @discardableResult
    func answer(_ r: Result<T, any Error>) -> Bool {
        guard let k = waiting.withLock({ $0.take() }) else { return false }
        other.withLock { $0 }?.cancel()
        k.resume(with: r)
        return true
    }
}

extension FleetDatabase {
    /// Runs `body`, or throws `DeadlineExceeded` after `limit` and cancels it. The caller is answered at the
    /// deadline even when the body does not stop at once (a pool waiting for a connection).
    static func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let first = FirstAnswer<T>()
        return try await withCheckedThrowingContinuation { (k: CheckedContinuation<T, any Error>) in
            first.wait(k)
            let work = Task {
                do { first.answer(.success(try await body())) } catch { first.answer(.failure(error)) }
            }
            first.setOther(Task {
                try? await Task.sleep(for: limit)
                guard !Task.isCancelled else { return }
                if first.answer(.failure(DeadlineExceeded())) { work.cancel() }
            })
        }
    }
}
