public import Foundation
import Crypto
import JITCore
public import JITFleet
import PostgresNIO

/// A signed-in browser: whose it is and until when. The cookie holds a random secret; the store only its hash.
public struct WebSession: Sendable, Equatable {
    public var user: String
    /// The id of the `jit login` the link was asked with (nil: the admin's `jitd server web link`): the
    /// session ends with that login (logout, a removed key, its expiry).
    public var login: String?
    public var expiresAt: Date
    public init(user: String, login: String? = nil, expiresAt: Date) {
        self.user = user
        self.login = login
        self.expiresAt = expiresAt
    }
}

/// Where one-time login links and web sessions live. Every key is a SHA-256 (hex) of a random secret that only
/// the browser holds: a copy of the table opens nothing. Redeeming a link is atomic: it works once.
public protocol WebSessionStore: Sendable {
    func addLink(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError)
    /// The link's user if it is unused and unexpired at `now`, without using it (the confirmation page).
    func peekLink(hash: String, now: Date) async throws(FleetError) -> String?
    /// Marks the link used and returns whose it is, or nil when it is unknown, used or expired.
    func redeemLink(hash: String, now: Date) async throws(FleetError) -> WebSession?
    func addSession(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError)
    func session(hash: String, now: Date) async throws(FleetError) -> WebSession?
    func endSession(hash: String, now: Date) async throws(FleetError)
}

/// The store in memory (tests, and a server run without PostgreSQL in unit tests).
public actor MemoryWebSessions: WebSessionStore {
    struct Link { var user: String; var login: String?; var expiresAt: Date; var used: Bool }
    var links: [String: Link] = [:]
    var sessions: [String: WebSession] = [:]
    public init() {}

    public func addLink(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError) {
        links[hash] = Link(user: user, login: login, expiresAt: expiresAt, used: false)
    }
    public func peekLink(hash: String, now: Date) async throws(FleetError) -> String? {
        guard let l = links[hash], !l.used, l.expiresAt > now else { return nil }
        return l.user
    }
    public func redeemLink(hash: String, now: Date) async throws(FleetError) -> WebSession? {
        guard let l = links[hash], !l.used, l.expiresAt > now else { return nil }
        links[hash]?.used = true
        return WebSession(user: l.user, login: l.login, expiresAt: l.expiresAt)
    }
    public func addSession(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError) {
        sessions[hash] = WebSession(user: user, login: login, expiresAt: expiresAt)
    }
    public func session(hash: String, now: Date) async throws(FleetError) -> WebSession? {
        guard let s = sessions[hash], s.expiresAt > now else { return nil }
        return s
    }
    public func endSession(hash: String, now: Date) async throws(FleetError) {
        sessions[hash] = nil
    }
}

/// The store in the control plane's PostgreSQL (migration 5: `web_links`, `web_sessions`), so every replica
/// knows every session and a link used on one cannot be used on another.
public struct PostgresWebSessions: WebSessionStore {
    let db: FleetDatabase
    public init(db: FleetDatabase) { self.db = db }

    /// Migration 5 of `FleetDatabase.migrations`.
    static let schema: [String] = [
        """
        CREATE TABLE web_links (
            code_hash text PRIMARY KEY,
            user_name text NOT NULL,
            login_id text,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz)
        """,
        """
        CREATE TABLE web_sessions (
            session_hash text PRIMARY KEY,
            user_name text NOT NULL,
            login_id text,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            ended_at timestamptz)
        """,
        "CREATE INDEX web_links_expires ON web_links (expires_at)",
        "CREATE INDEX web_sessions_expires ON web_sessions (expires_at)",
    ]

    public func addLink(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError) {
        do {
            // Old rows go as new ones come: nothing else needs them.
            try await db.client.query("DELETE FROM web_links WHERE expires_at < now() - interval '1 day'", logger: db.logger)
            try await db.client.query("INSERT INTO web_links (code_hash, user_name, login_id, expires_at) VALUES (\(hash), \(user), \(login), \(expiresAt))", logger: db.logger)
        } catch { throw db.failure(error, doing: "storing a web login link") }
    }

    public func peekLink(hash: String, now: Date) async throws(FleetError) -> String? {
        do {
            let rows = try await db.client.query(
                "SELECT user_name FROM web_links WHERE code_hash = \(hash) AND used_at IS NULL AND expires_at > \(now)", logger: db.logger)
            for try await u in rows.decode(String.self) { return u }
            return nil
        } catch { throw db.failure(error, doing: "reading a web login link") }
    }

    public func redeemLink(hash: String, now: Date) async throws(FleetError) -> WebSession? {
        do {
            // One UPDATE: two browsers racing with the same link cannot both win.
            let rows = try await db.client.query(
                "UPDATE web_links SET used_at = \(now) WHERE code_hash = \(hash) AND used_at IS NULL AND expires_at > \(now) RETURNING user_name, login_id, expires_at",
                logger: db.logger)
            for try await (u, l, e) in rows.decode((String, String?, Date).self) { return WebSession(user: u, login: l, expiresAt: e) }
            return nil
        } catch { throw db.failure(error, doing: "using a web login link") }
    }

    public func addSession(hash: String, user: String, login: String?, expiresAt: Date) async throws(FleetError) {
        do {
            try await db.client.query("DELETE FROM web_sessions WHERE expires_at < now() - interval '1 day'", logger: db.logger)
            try await db.client.query("INSERT INTO web_sessions (session_hash, user_name, login_id, expires_at) VALUES (\(hash), \(user), \(login), \(expiresAt))", logger: db.logger)
        } catch { throw db.failure(error, doing: "storing a web session") }
    }

    public func session(hash: String, now: Date) async throws(FleetError) -> WebSession? {
        do {
            let rows = try await db.client.query(
                "SELECT user_name, login_id, expires_at FROM web_sessions WHERE session_hash = \(hash) AND ended_at IS NULL AND expires_at > \(now)", logger: db.logger)
            for try await (u, l, e) in rows.decode((String, String?, Date).self) { return WebSession(user: u, login: l, expiresAt: e) }
            return nil
        } catch { throw db.failure(error, doing: "reading a web session") }
    }

    /// Whether the login `id` (people, migration 4) still holds: not logged out, revoked or expired.
    public func loginAlive(id: String) async throws(FleetError) -> Bool {
        do {
            let rows = try await db.client.query(
                "SELECT 1 FROM person_tokens WHERE id = \(id) AND kind = 'login' AND revoked_at IS NULL AND expires_at > now()", logger: db.logger)
            for try await _ in rows.decode(Int.self) { return true }
            return false
        } catch { throw db.failure(error, doing: "checking the login of a web session") }
    }

    public func endSession(hash: String, now: Date) async throws(FleetError) {
        do {
            try await db.client.query("UPDATE web_sessions SET ended_at = \(now) WHERE session_hash = \(hash) AND ended_at IS NULL", logger: db.logger)
        } catch { throw db.failure(error, doing: "ending a web session") }
    }
}

/// Random secrets for links, cookies and CSRF tokens, and the hashes that stand for them.
enum WebSecret {
    /// 32 random bytes as URL-safe base64 without padding (43 characters, cookie- and URL-safe).
    static func make() -> String {
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func hash(_ secret: String, purpose: String) -> String {
        Hex.encode(Array(SHA256.hash(data: Data((purpose + ":" + secret).utf8))))
    }

    /// The session's CSRF token: derived from its secret, so the server stores nothing more and a page of one
    /// session cannot post for another.
    static func csrf(session secret: String) -> String {
        hash(secret, purpose: "jit-web-csrf")
    }

    /// The sign-in form's token: derived from the pre-session cookie's secret and the link's code, so it is
    /// good only in the browser that opened that link's page, and only for that link.
    static func signInCSRF(pre secret: String, code: String) -> String {
        hash(secret + ":" + code, purpose: "jit-web-signin")
    }

    /// Compares in time independent of where they differ.
    static func same(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var d: UInt8 = 0
        for i in 0..<x.count { d |= x[i] ^ y[i] }
        return d == 0
    }

    /// A secret as this server makes them: 43 URL-safe base64 characters (anything else is refused unread).
    static func wellFormed(_ s: String) -> Bool {
        s.utf8.count == 43 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x5f }
    }
}
