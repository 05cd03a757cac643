import Crypto
public import Foundation
import JITCore
public import JITFleet
import PostgresNIO

/// A registered SSH key of a person (`jitd server key add`).
public struct PersonKey: Sendable, Codable, Equatable {
    public var user: String
    public var fingerprint: String
    public var type: String
    public var publicKey: String
    public var comment: String
    public var addedBy: String
    public var addedAt: Date
    public var lastUsedAt: Date?
}

/// A bearer token's row (never the token): a login's (`jit login`) or an API token's.
public struct PersonToken: Sendable, Codable, Equatable {
    public var id: String
    public var kind: String
    public var name: String?
    public var user: String
    /// API tokens: the kinds of call they may make (`request`, `approve`); empty for a login (everything a person may).
    public var may: [String]
    /// API tokens: the environments they may act in; empty for a login (any).
    public var environments: [String]
    public var keyFingerprint: String?
    public var createdBy: String
    public var createdAt: Date
    public var expiresAt: Date
    public var revokedAt: Date?
    public var lastUsedAt: Date?
    public var lastPeer: String?

    public func state(now: Date) -> String {
        if revokedAt != nil { return "revoked" }
        if expiresAt <= now { return "expired" }
        return "active"
    }
}

/// Secrets the server hands out (login nonces, bearer tokens): random, shown once, stored as SHA-256.
enum PeopleSecrets {
    static func random(_ prefix: String) -> String {
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
        return prefix + Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func hash(_ s: String) -> String { Hex.encode(Array(SHA256.hash(data: Array(s.utf8)))) }
}

extension FleetDatabase {
    /// Migration 4 (issue #15): people's keys, login nonces, bearer and API tokens, failed logins.
    static let peopleSchema: [String] = [
        """
        CREATE TABLE person_keys (
            user_name text NOT NULL,
            fingerprint text NOT NULL,
            key_type text NOT NULL,
            public_key text NOT NULL,
            comment text NOT NULL DEFAULT '',
            added_by text NOT NULL,
            added_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            PRIMARY KEY (user_name, fingerprint))
        """,
        """
        CREATE TABLE login_nonces (
            nonce_hash text PRIMARY KEY,
            user_name text NOT NULL,
            peer text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz)
        """,
        """
        CREATE TABLE person_tokens (
            token_hash text PRIMARY KEY,
            id text NOT NULL UNIQUE,
            kind text NOT NULL CHECK (kind IN ('login', 'api')),
            name text,
            user_name text NOT NULL,
            may text[] NOT NULL DEFAULT '{}',
            environments text[] NOT NULL DEFAULT '{}',
            key_fingerprint text,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            revoked_at timestamptz,
            last_used_at timestamptz,
            last_peer text)
        """,
        "CREATE UNIQUE INDEX person_tokens_api_name ON person_tokens (name) WHERE kind = 'api' AND revoked_at IS NULL",
        """
        CREATE TABLE login_failures (
            id bigserial PRIMARY KEY,
            user_name text NOT NULL,
            peer text NOT NULL,
            at timestamptz NOT NULL DEFAULT now())
        """,
        "CREATE INDEX login_failures_user ON login_failures (user_name, at)",
        "CREATE INDEX login_failures_peer ON login_failures (peer, at)",
        "CREATE INDEX login_nonces_expires ON login_nonces (expires_at)",
    ]

    static let keyColumns = "user_name, fingerprint, key_type, public_key, comment, added_by, added_at, last_used_at"
    static let personTokenColumns = "id, kind, name, user_name, may, environments, key_fingerprint, created_by, created_at, expires_at, revoked_at, last_used_at, last_peer"

    func personKeys(_ rows: PostgresRowSequence) async throws -> [PersonKey] {
        var out: [PersonKey] = []
        for try await (u, fp, t, pk, c, by, at, used) in rows.decode((String, String, String, String, String, String, Date, Date?).self) {
            out.append(PersonKey(user: u, fingerprint: fp, type: t, publicKey: pk, comment: c, addedBy: by, addedAt: at, lastUsedAt: used))
        }
        return out
    }

    func personTokens(_ rows: PostgresRowSequence) async throws -> [PersonToken] {
        var out: [PersonToken] = []
        for try await (id, kind, name, user, may, envs, fp, by, created, expires, revoked, used, peer) in rows.decode(
            (String, String, String?, String, [String], [String], String?, String, Date, Date, Date?, Date?, String?).self)
        {
            out.append(PersonToken(id: id, kind: kind, name: name, user: user, may: may, environments: envs, keyFingerprint: fp, createdBy: by,
                                   createdAt: created, expiresAt: expires, revokedAt: revoked, lastUsedAt: used, lastPeer: peer))
        }
        return out
    }

    // MARK: keys

    public func addKey(user: String, key: SSHPublicKey, by actor: String) async throws(FleetError) -> PersonKey {
        let fp = key.fingerprint, type = key.type, pk = Data(key.blob).base64EncodedString(), comment = key.comment
        do {
            let rows = try await personKeys(try await client.query("""
                INSERT INTO person_keys (user_name, fingerprint, key_type, public_key, comment, added_by)
                VALUES (\(user), \(fp), \(type), \(pk), \(comment), \(actor))
                ON CONFLICT (user_name, fingerprint) DO NOTHING
                RETURNING \(unescaped: Self.keyColumns)
                """, logger: logger))
            guard let k = rows.first else { throw FleetError("conflict", "key \(fp) is already registered for \(user); see 'jitd server key list \(user)'") }
            try await audit("person_key_added", actor: actor, data: ["user": user, "fingerprint": fp, "type": type])
            return k
        } catch {
            throw failure(error, doing: "registering the key")
        }
    }

    public func listKeys(user: String?) async throws(FleetError) -> [PersonKey] {
        do {
            if let user {
                return try await personKeys(try await client.query("SELECT \(unescaped: Self.keyColumns) FROM person_keys WHERE user_name = \(user) ORDER BY added_at", logger: logger))
            }
            return try await personKeys(try await client.query("SELECT \(unescaped: Self.keyColumns) FROM person_keys ORDER BY user_name, added_at", logger: logger))
        } catch {
            throw failure(error, doing: "listing keys")
        }
    }

    /// Removes a key; the logins it made end too (their tokens are revoked). False when there is no such key.
    public func removeKey(user: String, fingerprint: String, by actor: String) async throws(FleetError) -> Bool {
        do {
            let rows = try await personKeys(try await client.query(
                "DELETE FROM person_keys WHERE user_name = \(user) AND fingerprint = \(fingerprint) RETURNING \(unescaped: Self.keyColumns)", logger: logger))
            guard !rows.isEmpty else { return false }
            try await client.query(
                "UPDATE person_tokens SET revoked_at = now() WHERE kind = 'login' AND user_name = \(user) AND key_fingerprint = \(fingerprint) AND revoked_at IS NULL",
                logger: logger)
            try await audit("person_key_removed", actor: actor, data: ["user": user, "fingerprint": fingerprint])
            return true
        } catch {
            throw failure(error, doing: "removing the key")
        }
    }

    // MARK: login

    /// Counts failed logins in the last `window` seconds, for the user and for the peer address.
    public func recentFailures(user: String, peer: String, window: Int64) async throws(FleetError) -> (user: Int, peer: Int) {
        do {
            let secs = Double(window)
            var u = 0, p = 0
            for try await (a, b) in try await client.query("""
                SELECT count(*) FILTER (WHERE user_name = \(user))::int, count(*) FILTER (WHERE peer = \(peer))::int
                FROM login_failures WHERE at > now() - make_interval(secs => \(secs)) AND (user_name = \(user) OR peer = \(peer))
                """, logger: logger).decode((Int, Int).self) { u = a; p = b }
            return (u, p)
        } catch {
            throw failure(error, doing: "counting failed logins")
        }
    }

    public func recordFailure(user: String, peer: String, code: String, reason: String) async {
        _ = try? await client.query("INSERT INTO login_failures (user_name, peer) VALUES (\(user), \(peer))", logger: logger)
        _ = try? await client.query("DELETE FROM login_failures WHERE at < now() - interval '1 day'", logger: logger)
        try? await audit("login_refused", actor: "peer:\(peer)", data: ["user": user, "code": code, "reason": reason])
    }

    /// A new nonce for `user`, single use, valid `ttl` seconds; only its hash is stored. Refused when the user
    /// or the peer already holds `maxOpen` unused, unexpired ones (anyone may ask: the table must stay small).
    public func createNonce(user: String, peer: String, ttl: Int64, maxOpen: Int = 20) async throws(FleetError) -> (nonce: String, expiresAt: Date) {
        let nonce = PeopleSecrets.random("n_"), h = PeopleSecrets.hash(nonce), secs = Double(ttl)
        do {
            try await client.query("DELETE FROM login_nonces WHERE expires_at < now() - interval '1 hour'", logger: logger)
            var open = (0, 0)
            for try await (u, p) in try await client.query("""
                SELECT count(*) FILTER (WHERE user_name = \(user))::int, count(*) FILTER (WHERE peer = \(peer))::int
                FROM login_nonces WHERE used_at IS NULL AND expires_at > now() AND (user_name = \(user) OR peer = \(peer))
                """, logger: logger).decode((Int, Int).self) { open = (u, p) }
            if open.0 >= maxOpen || open.1 >= maxOpen * 3 {
                throw FleetError("rate_limited", "too many open login challenges for \(open.0 >= maxOpen ? "user \(user)" : "this address"); finish or wait a minute")
            }
            var exp = Date()
            for try await e in try await client.query(
                "INSERT INTO login_nonces (nonce_hash, user_name, peer, expires_at) VALUES (\(h), \(user), \(peer), now() + make_interval(secs => \(secs))) RETURNING expires_at",
                logger: logger).decode(Date.self) { exp = e }
            return (nonce, exp)
        } catch {
            throw failure(error, doing: "storing the login challenge")
        }
    }

    /// Uses a nonce once: of two concurrent uses exactly one wins. Refused: unknown, another user's, used, expired.
    public func consumeNonce(user: String, nonce: String) async throws(FleetError) {
        let h = PeopleSecrets.hash(nonce)
        do {
            var ok = false
            for try await _ in try await client.query(
                "UPDATE login_nonces SET used_at = now() WHERE nonce_hash = \(h) AND user_name = \(user) AND used_at IS NULL AND expires_at > now() RETURNING 1",
                logger: logger).decode(Int.self) { ok = true }
            if ok { return }
            var state: (String, Date?)? = nil
            for try await (u, used) in try await client.query("SELECT user_name, used_at FROM login_nonces WHERE nonce_hash = \(h)", logger: logger).decode((String, Date?).self) {
                state = (u, used)
            }
            switch state {
            case nil: throw FleetError("nonce_unknown", "this login challenge is not known to the control plane; start again with jit login")
            case let (u, _)? where u != user: throw FleetError("nonce_unknown", "this login challenge was not made for \(user); start again with jit login")
            case (_, .some)?: throw FleetError("nonce_used", "this login challenge was already used (a replayed signature is refused); start again with jit login")
            default: throw FleetError("nonce_expired", "this login challenge expired (it lasts 60 s); start again with jit login")
            }
        } catch {
            throw failure(error, doing: "checking the login challenge")
        }
    }

    public func keyUsed(user: String, fingerprint: String) async {
        _ = try? await client.query("UPDATE person_keys SET last_used_at = now() WHERE user_name = \(user) AND fingerprint = \(fingerprint)", logger: logger)
    }

    // MARK: tokens

    /// Stores a new bearer token (hashed) and returns it with its row. The secret is never stored or shown again.
    public func createPersonToken(kind: String, user: String, name: String?, may: [String], environments: [String], keyFingerprint: String?,
                                  ttl: Int64, by actor: String) async throws(FleetError) -> (String, PersonToken) {
        let token = PeopleSecrets.random(kind == "api" ? "jitapi_" : "jitl_"), h = PeopleSecrets.hash(token), id = String(h.prefix(12)), secs = Double(ttl)
        do {
            let rows = try await personTokens(try await client.query("""
                INSERT INTO person_tokens (token_hash, id, kind, name, user_name, may, environments, key_fingerprint, created_by, expires_at)
                VALUES (\(h), \(id), \(kind), \(name), \(user), \(may), \(environments), \(keyFingerprint), \(actor), now() + make_interval(secs => \(secs)))
                RETURNING \(unescaped: Self.personTokenColumns)
                """, logger: logger))
            guard let t = rows.first else { throw FleetError("database", "the new token was not stored") }
            try await audit(kind == "api" ? "api_token_created" : "login", actor: actor, token: id,
                            data: ["user": user, "name": name ?? "", "may": may.joined(separator: ","), "environments": environments.joined(separator: ","),
                                   "key": keyFingerprint ?? "", "expires_at": Timestamps.format(t.expiresAt)])
            return (token, t)
        } catch let e as PSQLError where e.serverInfo?[.sqlState] == "23505" {
            throw FleetError("conflict", "an API token named '\(name ?? "")' exists already; revoke it first ('jitd server token revoke-api \(name ?? "")') or pick another --name")
        } catch {
            throw failure(error, doing: "storing the token")
        }
    }

    /// The row of a presented bearer token, if it is active; records its use. Refusals say which state it is in.
    public func authenticatePerson(token: String, peer: String) async throws(FleetError) -> PersonToken {
        let h = PeopleSecrets.hash(token)
        let rows: [PersonToken]
        do {
            rows = try await personTokens(try await client.query(
                "UPDATE person_tokens SET last_used_at = now(), last_peer = \(peer) WHERE token_hash = \(h) AND revoked_at IS NULL AND expires_at > now() RETURNING \(unescaped: Self.personTokenColumns)",
                logger: logger))
            if let t = rows.first { return t }
            let seen = try await personTokens(try await client.query("SELECT \(unescaped: Self.personTokenColumns) FROM person_tokens WHERE token_hash = \(h)", logger: logger))
            guard let t = seen.first else {
                throw FleetError("token_unknown", "this bearer token is not known to the control plane; log in again with 'jit login'")
            }
            if t.revokedAt != nil {
                throw FleetError("token_revoked", t.kind == "api" ? "API token '\(t.name ?? t.id)' was revoked" : "this login was ended (jit logout, or its key was removed); log in again with 'jit login'")
            }
            throw FleetError("token_expired", t.kind == "api" ? "API token '\(t.name ?? t.id)' expired at \(Timestamps.format(t.expiresAt))" : "this login expired at \(Timestamps.format(t.expiresAt)); log in again with 'jit login'")
        } catch {
            throw failure(error, doing: "checking the bearer token")
        }
    }

    /// Ends a login (the token presented to `POST /v1/logout`).
    public func endLogin(id: String, user: String) async throws(FleetError) {
        do {
            try await client.query("UPDATE person_tokens SET revoked_at = now() WHERE id = \(id) AND kind = 'login' AND revoked_at IS NULL", logger: logger)
            try await audit("logout", actor: "person:\(user)", token: id, data: ["user": user])
        } catch {
            throw failure(error, doing: "ending the login")
        }
    }

    public func revokeAPIToken(name: String, by actor: String) async throws(FleetError) -> PersonToken? {
        do {
            let rows = try await personTokens(try await client.query(
                "UPDATE person_tokens SET revoked_at = now() WHERE kind = 'api' AND name = \(name) AND revoked_at IS NULL RETURNING \(unescaped: Self.personTokenColumns)",
                logger: logger))
            guard let t = rows.first else { return nil }
            try await audit("api_token_revoked", actor: actor, token: t.id, data: ["name": name, "user": t.user])
            return t
        } catch {
            throw failure(error, doing: "revoking the API token")
        }
    }

    public func listAPITokens() async throws(FleetError) -> [PersonToken] {
        do {
            return try await personTokens(try await client.query("SELECT \(unescaped: Self.personTokenColumns) FROM person_tokens WHERE kind = 'api' ORDER BY created_at", logger: logger))
        } catch {
            throw failure(error, doing: "listing API tokens")
        }
    }
}
