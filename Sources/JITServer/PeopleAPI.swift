import Foundation
import Hummingbird
public import JITCore
import JITFleet
import Logging
import NIOCore

/// The person a bearer token proves (`jit login`, or an API token), as the server's NSS knows them now.
public struct CallerPerson: Sendable {
    public var token: PersonToken
    /// Name from the token; uid and groups from the server's NSS at this call.
    public var identity: Identity
}

/// What the people routes need from outside JITServer: the decision engine's handler (the same one the
/// server's Unix socket uses: `handle(message, from: identity)`) and the server's NSS.
public struct PeopleServices: Sendable {
    /// Runs one protocol message for a person (nil: the server's own engine). `wait` must answer at once: the
    /// decision, or `decision=pending`.
    public var call: (@Sendable (Message, Identity) async -> Message)?
    /// The user as the server's NSS knows them now (nil: unknown, so their keys and tokens stop working).
    public var lookup: @Sendable (String) -> Identity?

    public init(call: (@Sendable (Message, Identity) async -> Message)?, lookup: @escaping @Sendable (String) -> Identity?) {
        self.call = call
        self.lookup = lookup
    }

    /// Nobody: no token works (a server that passes no directory lets no person in).
    public static let none = PeopleServices(call: nil, lookup: { _ in nil })
}

/// What a bearer token may ask: a login may make every call a person makes at a terminal, except those only
/// the PAM module, a host or root makes; an API token only what `--may` lists.
enum PeopleKinds {
    static let person: Set<String> = ["request", "list", "show", "approve", "deny", "cancel", "grants", "revoke", "extend", "explain", "mfa_enroll", "wait", "audit"]
    static let api: [String: Set<String>] = [
        "request": ["request", "show", "list", "cancel", "grants", "wait", "explain"],
        "approve": ["approve", "deny", "show", "list"],
    ]
    /// Calls whose answer is about one request (`id` or `request`): checked against an API token's environments.
    static let aboutRequest: Set<String> = ["show", "approve", "deny", "cancel", "wait"]
}

/// Fills `context.person` from `Authorization: Bearer TOKEN`: an active token in PostgreSQL whose user the
/// server's NSS still knows (and who is not root: root acts on the server's own socket, never over the network).
struct PersonAuthMiddleware: RouterMiddleware {
    typealias Context = FleetContext
    let db: FleetDatabase
    let services: PeopleServices

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer "), case let token = String(auth.dropFirst(7)), !token.isEmpty, token.count < 200 else {
            throw APIError(.unauthorized, "login_required", "this call needs a bearer token: log in with 'jit login --server URL', or set JIT_TOKEN to an API token")
        }
        let t: PersonToken
        do throws(FleetError) { t = try await db.authenticatePerson(token: token, peer: PeopleAPI.address(context.peer)) } catch {
            if error.code == "database" { throw error }
            throw APIError(.unauthorized, error.code, error.message)
        }
        guard let id = services.lookup(t.user) else {
            throw APIError(.forbidden, "user_unknown", "user '\(t.user)' is not known to the control plane's user directory any more; their logins and tokens no longer work")
        }
        guard !id.isRoot else { throw APIError(.forbidden, "root_refused", "root does not act over the network; use the server's own socket") }
        var context = context
        context.person = CallerPerson(token: t, identity: id)
        return try await next(request, context)
    }
}

/// `/v1/login/challenge`, `/v1/login`, `/v1/logout` and `/v1/call`.
struct PeopleAPI: Sendable {
    let db: FleetDatabase
    let config: ServerConfig
    let services: PeopleServices
    /// Failed logins allowed in `failureWindow` seconds, per user and per peer address, before refusing all.
    static let failuresPerUser = 10
    static let failuresPerPeer = 30
    static let failureWindow: Int64 = 300
    static let nonceTTL: Int64 = 60
    /// The longest one `wait` call holds (the client asks again until its own --timeout).
    static let waitSlice: Double = 25

    /// The peer's address without its port (the unit of rate limits).
    static func address(_ peer: String) -> String {
        guard let i = peer.lastIndex(of: ":") else { return peer }
        return String(peer[..<i])
    }

    func addRoutes(to router: Router<FleetContext>) {
        router.post("v1/login/challenge") { request, context in
            let body = try await request.decode(as: FleetWire.LoginChallengeRequest.self, context: context)
            try checkUser(body.user)
            try await admit(user: body.user, peer: Self.address(context.peer))
            let (nonce, exp): (String, Date)
            do throws(FleetError) { (nonce, exp) = try await db.createNonce(user: body.user, peer: Self.address(context.peer), ttl: Self.nonceTTL) } catch {
                if error.code == "rate_limited" { throw APIError(.tooManyRequests, error.code, error.message) }
                throw error
            }
            return try FleetAPI.json(FleetWire.LoginChallenge(user: body.user, nonce: nonce, namespace: FleetWire.loginNamespace, server: config.publicURL, expiresAt: Timestamps.format(exp)))
        }
        router.post("v1/login") { request, context in
            let body = try await request.decode(as: FleetWire.LoginRequest.self, context: context)
            try checkUser(body.user)
            let peer = Self.address(context.peer)
            try await admit(user: body.user, peer: peer)
            do {
                let answer = try await login(body, peer: peer, logger: context.logger)
                context.logger.info("login of \(body.user) with key \(answer.key) from \(peer)")
                return try FleetAPI.json(answer, status: .created)
            } catch let e as FleetError where e.code != "database" {
                await db.recordFailure(user: body.user, peer: peer, code: e.code, reason: e.message)
                throw APIError(.unauthorized, e.code, e.message)
            }
        }
        let people = router.group("v1").add(middleware: PersonAuthMiddleware(db: db, services: services))
        people.post("logout") { _, context in
            let p = try person(context)
            guard p.token.kind == "login" else {
                throw APIError(.badRequest, "not_a_login", "an API token cannot log out; an admin revokes it with 'jitd server token revoke-api \(p.token.name ?? "NAME")'")
            }
            try await db.endLogin(id: p.token.id, user: p.token.user)
            return try FleetAPI.json(FleetWire.Done(message: "logged out of \(config.publicURL)"))
        }
        people.post("call") { request, context in
            let p = try person(context)
            let body = try await request.decode(as: FleetWire.Call.self, context: context)
            let m: Message
            do throws(WireError) { m = try body.message() } catch { throw APIError(.badRequest, error.code.rawValue, error.message) }
            let reply = try await call(m, as: p)
            guard reply.isOK else { throw Self.refusal(reply) }
            return try FleetAPI.json(FleetWire.Call(reply))
        }
    }

    func person(_ context: FleetContext) throws -> CallerPerson {
        guard let p = context.person else { throw APIError(.unauthorized, "login_required", "this call needs a bearer token: log in with 'jit login'") }
        return p
    }

    func checkUser(_ user: String) throws {
        guard Names.isValid(user) else { throw APIError(.badRequest, "bad_request", "'user' must be a user name (letters, digits, '_', '-', '.')") }
    }

    /// Refuses a login attempt once the user or the peer has failed too often lately.
    func admit(user: String, peer: String) async throws {
        let f = try await db.recentFailures(user: user, peer: peer, window: Self.failureWindow)
        if f.user >= Self.failuresPerUser || f.peer >= Self.failuresPerPeer {
            throw APIError(.tooManyRequests, "rate_limited", "too many failed logins for \(f.user >= Self.failuresPerUser ? "user \(user)" : "this address") in the last \(Self.failureWindow / 60) minutes; wait and try again")
        }
    }

    /// Verifies the signed nonce and makes the login's bearer token. Every refusal is a FleetError.
    func login(_ body: FleetWire.LoginRequest, peer: String, logger: Logger) async throws(FleetError) -> FleetWire.LoginAnswer {
        guard let id = services.lookup(body.user) else {
            throw FleetError("user_unknown", "user '\(body.user)' is not known to the control plane's user directory")
        }
        guard !id.isRoot else { throw FleetError("root_refused", "root does not log in over the network; use the server's own socket") }
        let sig = try SSHSignature(armored: body.signature)
        let fp = sig.publicKey.fingerprint
        var keys = try await db.listKeys(user: body.user).map(\.fingerprint)
        if let path = config.allowedSigners {
            // A file with an error lets no one in through it; the keys registered in PostgreSQL still work.
            do throws(FleetError) { keys += try AllowedSigners.load(path: path).keys(of: body.user).map(\.fingerprint) } catch {
                logger.error("login.allowed_signers is not used until it is fixed: \(error.message)")
            }
        }
        guard keys.contains(fp) else {
            throw FleetError("key_unregistered", "key \(fp) is not registered for \(body.user); an admin adds it with 'jitd server key add \(body.user) KEY'")
        }
        let message = FleetWire.loginMessage(server: config.publicURL, user: body.user, nonce: body.nonce)
        do throws(FleetError) { try sig.verify(message: Array(message.utf8), namespace: FleetWire.loginNamespace) } catch {
            throw FleetError(error.code, error.message + " (the text signed must name this server, \(config.publicURL): log in with --server \(config.publicURL))")
        }
        try await db.consumeNonce(user: body.user, nonce: body.nonce)
        await db.keyUsed(user: body.user, fingerprint: fp)
        let (token, row) = try await db.createPersonToken(kind: "login", user: body.user, name: nil, may: [], environments: [], keyFingerprint: fp,
                                                          ttl: config.loginTokenTTL, by: "person:\(body.user) from \(peer)")
        return FleetWire.LoginAnswer(token: token, id: row.id, user: body.user, key: fp, expiresAt: Timestamps.format(row.expiresAt))
    }

    /// Runs one message for a person: the kinds their token may ask, an API token's environments, then the engine.
    func call(_ m: Message, as p: CallerPerson) async throws -> Message {
        guard let handler = services.call else {
            throw APIError(.serviceUnavailable, "no_engine", "this control plane has no decision engine wired yet; use jit on the server's own socket")
        }
        let t = p.token
        if t.kind == "api" {
            let allowed = t.may.reduce(into: Set<String>()) { $0.formUnion(PeopleKinds.api[$1] ?? []) }
            guard allowed.contains(m.word) else {
                throw APIError(.forbidden, "unauthorized", "API token '\(t.name ?? t.id)' may \(t.may.joined(separator: ", ")), not '\(m.word)'")
            }
            try await checkEnvironments(m, token: t, identity: p.identity, handler)
        } else {
            guard PeopleKinds.person.contains(m.word) else {
                throw APIError(.forbidden, "unauthorized", "'\(m.word)' is not a call a person makes through the control plane's API")
            }
        }
        if m.word == "wait" { return try await wait(m, p.identity, handler) }
        var reply = await handler(m, p.identity)
        if t.kind == "api", !t.environments.isEmpty, reply.isOK, ["list", "grants"].contains(m.word) {
            reply.records = reply.records.filter { r in r.first { $0.0 == "environment" }.map { t.environments.contains($0.1) } ?? false }
        }
        return reply
    }

    /// An API token scoped to environments acts only there: a request must name one of them, and a call
    /// about a request only reaches requests in them.
    func checkEnvironments(_ m: Message, token t: PersonToken, identity: Identity, _ handler: @Sendable (Message, Identity) async -> Message) async throws {
        guard !t.environments.isEmpty else { return }
        let name = t.name ?? t.id, envs = t.environments.joined(separator: ", ")
        if m.word == "request" || m.word == "explain" {
            guard let env = m["env"], t.environments.contains(env) else {
                throw APIError(.forbidden, "unauthorized", "API token '\(name)' may act only in \(envs)\(m["env"].map { ", not in \($0)" } ?? "; name one with --env")")
            }
        }
        if PeopleKinds.aboutRequest.contains(m.word) {
            guard let id = m["id"] ?? m["request"] else { return }
            let shown = await handler(Message("show", [("id", id)]), identity)
            guard shown.isOK else { throw Self.refusal(shown) }
            guard let env = shown["environment"], t.environments.contains(env) else {
                throw APIError(.forbidden, "unauthorized", "API token '\(name)' may act only in \(envs); request \(id) is in \(shown["environment"] ?? "another environment")")
            }
        }
    }

    /// `wait` over HTTP: asks the engine until the decision or `waitSlice` seconds, then answers `pending`
    /// (the client asks again until its own timeout).
    func wait(_ m: Message, _ identity: Identity, _ handler: @Sendable (Message, Identity) async -> Message) async throws -> Message {
        let asked = Double(m["timeout"].flatMap { Int($0) } ?? 0)
        guard let id = m["request"] else { throw APIError(.badRequest, "bad-request", "the field 'request' must be a request ID") }
        let deadline = Date().addingTimeInterval(min(max(asked, 0), Self.waitSlice))
        while true {
            let r = await handler(Message("wait", [("request", id)]), identity)
            guard r.isOK else { throw Self.refusal(r) }
            if r["decision"] != "pending" || Date() >= deadline { return r }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// An engine's error reply as the API's error shape (the code is the protocol's, the sentence the engine's).
    static func refusal(_ m: Message) -> APIError {
        let code = m["code"] ?? "internal"
        let status: HTTPResponse.Status
        switch ErrorCode(rawValue: code) {
        case .unauthorized: status = .forbidden
        case .notFound: status = .notFound
        case .conflict: status = .conflict
        case .busy: status = .tooManyRequests
        case .internal, nil: status = .internalServerError
        default: status = .badRequest
        }
        return APIError(status, code, m["message"] ?? "the control plane refused the call")
    }
}
