public import Foundation
public import Hummingbird
public import JITCore
public import JITFleet
import NIOCore

/// What the web page needs from the rest of the control plane, injected so that the page is built and tested
/// on its own: who a bearer token is (the people of `jit login`), who a user is now (the server's NSS), and the
/// decision engine (`handle(_:from:)`, the same operations the CLI sends).
public struct WebServices: Sendable {
    /// The person a login's bearer token (from `peer`) belongs to, and that login's id; nil when it is unknown,
    /// expired, ended, an API token (scoped to less than the person may do, so it never opens a web session)
    /// or root's.
    public var person: @Sendable (_ token: String, _ peer: String) async throws(FleetError) -> (identity: Identity, login: String)?
    /// Whether a login still holds: a session lives no longer than the login its link was asked with.
    public var loginAlive: @Sendable (_ login: String) async throws(FleetError) -> Bool
    /// The user `name` as the server knows them now (their groups may have changed since they signed in);
    /// nil when they no longer exist, which ends what their session may do.
    public var identity: @Sendable (String) async -> Identity?
    /// Runs one operation as `person` and returns the engine's reply.
    public var call: @Sendable (Message, Identity) async -> Message
    public var sessions: any WebSessionStore
    public var now: @Sendable () -> Date

    public init(person: @escaping @Sendable (_ token: String, _ peer: String) async throws(FleetError) -> (identity: Identity, login: String)?,
                loginAlive: @escaping @Sendable (_ login: String) async throws(FleetError) -> Bool, identity: @escaping @Sendable (String) async -> Identity?,
                call: @escaping @Sendable (Message, Identity) async -> Message, sessions: any WebSessionStore,
                now: @escaping @Sendable () -> Date = { Date() }) {
        self.person = person
        self.loginAlive = loginAlive
        self.identity = identity
        self.call = call
        self.sessions = sessions
        self.now = now
    }
}

extension WebServices {
    /// A server built without people or an engine: no bearer token is known, so no link is handed out and
    /// nobody is signed in; every engine call is refused with the reason.
    public static func unwired(sessions: any WebSessionStore, identity: @escaping @Sendable (String) async -> Identity? = { _ in nil }) -> WebServices {
        WebServices(person: { _, _ in nil }, loginAlive: { _ in false }, identity: identity, call: noEngine, sessions: sessions)
    }

    static let noEngine: @Sendable (Message, Identity) async -> Message = { _, _ in
        .error(.internal, "this control plane has no decision engine wired to its web page")
    }

    /// The page over the people of `jit login` (tokens in PostgreSQL, users in the server's NSS) and the engine
    /// behind `/v1/call`.
    static func wired(people: PeopleServices, db: FleetDatabase) -> WebServices {
        let sessions = PostgresWebSessions(db: db)
        return WebServices(person: { token, peer throws(FleetError) in
            guard token.utf8.count < 200 else { return nil }
            let t: PersonToken
            do throws(FleetError) { t = try await db.authenticatePerson(token: token, peer: PeopleAPI.address(peer)) } catch {
                if error.code == "database" { throw error }
                return nil
            }
            guard t.kind == "login", let id = people.lookup(t.user), !id.isRoot else { return nil }
            return (id, t.id)
        }, loginAlive: { id throws(FleetError) in try await sessions.loginAlive(id: id) },
        identity: { people.lookup($0) }, call: people.call ?? noEngine, sessions: sessions)
    }
}

/// The web approval page (`/web/...`) and the call that opens it (`POST /v1/web/link`).
///
/// Sign-in has no password: a person already signed in with `jit login` asks for a one-time link (60 s, one
/// use, stored hashed); opening it shows a page that sets a pre-session cookie (`__Host-jit_signin`, 120 s) and
/// pressing "Sign in" there posts the code with a token bound to that cookie (login CSRF: a cross-site page
/// cannot sign a browser in, nor use a link up); that sets a session cookie (`__Host-`, Secure, HttpOnly,
/// SameSite=Strict, 8 h, stored hashed). Every form carries the session's CSRF token and every POST checks it.
/// Every page is sent with a CSP that allows no script, no frame and forms only to this origin.
public struct WebRoutes: Sendable {
    public static let linkLifetime: TimeInterval = 60
    public static let sessionLifetime: TimeInterval = 8 * 3600
    static let cookie = "__Host-jit_session"
    /// The pre-session cookie of the sign-in page (login CSRF), and how long it lasts: the link's 60 s and a
    /// minute to press the button.
    static let signInCookie = "__Host-jit_signin"
    static let signInLifetime: TimeInterval = 120
    static let maxForm = 16 * 1024

    let services: WebServices
    /// The server's public URL (`public_url`), the start of every link it hands out.
    let publicURL: String

    public init(services: WebServices, publicURL: String) {
        self.services = services
        self.publicURL = publicURL
    }

    /// The page URL of request `id` (for notifications), or nil without a public URL.
    public static func requestURL(publicURL: String, id: Int64) -> String? {
        publicURL.isEmpty ? nil : "\(publicURL)/web/requests/\(id)"
    }

    /// A one-time sign-in link for `user` (stored as its hash), for `POST /v1/web/link` and `jitd server web link`.
    public static func makeLink(user: String, login: String?, sessions: any WebSessionStore, now: Date, publicURL: String) async throws(FleetError) -> FleetWire.WebLink {
        let code = WebSecret.make()
        let expires = now.addingTimeInterval(linkLifetime)
        try await sessions.addLink(hash: WebSecret.hash(code, purpose: "jit-web-link"), user: user, login: login, expiresAt: expires)
        return FleetWire.WebLink(url: "\(publicURL)/web/login?code=\(code)", expiresAt: Timestamps.format(expires))
    }

    /// Sent with every page: no script, style only from here, forms only to here, never in a frame, never
    /// sniffed, no Referer (a login link never leaks), never cached.
    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy: "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        .xContentTypeOptions: "nosniff",
        .init("Referrer-Policy")!: "no-referrer",
        .cacheControl: "no-store",
    ]

    static func html(_ text: String, status: HTTPResponse.Status = .ok, extra: HTTPFields = [:]) -> Response {
        var h: HTTPFields = [.contentType: "text/html; charset=utf-8"]
        h.append(contentsOf: securityHeaders)
        h.append(contentsOf: extra)
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func redirect(_ to: String, extra: HTTPFields = [:]) -> Response {
        var h: HTTPFields = [.location: to]
        h.append(contentsOf: securityHeaders)
        h.append(contentsOf: extra)
        return Response(status: .seeOther, headers: h)
    }

    /// A signed-in browser on this request: who, their identity now, and the CSRF token of the session.
    struct Visitor {
        var identity: Identity
        var secret: String
        var csrf: String
        var sessionHash: String
    }

    /// Refusals rendered as pages (the JSON error shape is for `/v1`).
    struct PageError: Error {
        var status: HTTPResponse.Status
        var title: String
        var text: String
        /// Who is signed in, when they are (the page keeps its header and its way out).
        var visitor: (user: String, csrf: String)? = nil
    }

    static let notSignedIn = PageError(status: .unauthorized, title: "Not signed in",
                                       text: "This browser is not signed in, or its session ended. Run 'jit web' on a machine where you ran 'jit login': it opens a one-time sign-in link.")

    func visitor(_ request: Request) async throws -> Visitor {
        guard let secret = request.cookies[Self.cookie]?.value, WebSecret.wellFormed(secret) else { throw Self.notSignedIn }
        let hash = WebSecret.hash(secret, purpose: "jit-web-session")
        guard let s = try await services.sessions.session(hash: hash, now: services.now()) else { throw Self.notSignedIn }
        if let login = s.login, try await !services.loginAlive(login) {
            try await services.sessions.endSession(hash: hash, now: services.now())
            throw PageError(status: .unauthorized, title: "Not signed in",
                            text: "The login this session came from has ended ('jit logout', a removed key, or its expiry), and the session with it. Run 'jit login', then 'jit web'.")
        }
        guard let id = await services.identity(s.user) else {
            throw PageError(status: .forbidden, title: "Account unknown", text: "The server no longer knows the user '\(s.user)', so this session can do nothing.")
        }
        guard !id.isRoot else { throw PageError(status: .forbidden, title: "Root refused", text: "root does not act over the network; use the server's own socket.") }
        return Visitor(identity: id, secret: secret, csrf: WebSecret.csrf(session: secret), sessionHash: hash)
    }

    /// Reads an `application/x-www-form-urlencoded` body (bounded) into its fields.
    static func form(_ request: Request) async throws -> [String: String] {
        let type = request.headers[.contentType] ?? ""
        guard type.lowercased().hasPrefix("application/x-www-form-urlencoded") else {
            throw PageError(status: .unsupportedMediaType, title: "Not a form", text: "This address takes the page's form (application/x-www-form-urlencoded).")
        }
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: maxForm) } catch {
            throw PageError(status: .contentTooLarge, title: "Form too large", text: "The form is larger than \(maxForm) bytes.")
        }
        var out: [String: String] = [:]
        for pair in String(buffer: buffer).split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String? { String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncoding }
            guard let k = decode(kv[0]), let v = kv.count > 1 ? decode(kv[1]) : "" else {
                throw PageError(status: .badRequest, title: "Unreadable form", text: "The form's encoding is broken; reload the page and try again.")
            }
            // The first value counts; a second copy of a field cannot override it.
            if out[k] == nil { out[k] = v }
        }
        return out
    }

    /// The CSRF check of every POST from a signed-in page.
    static func checkCSRF(_ form: [String: String], _ v: Visitor) throws {
        guard let t = form["csrf"], WebSecret.same(t, v.csrf) else {
            throw PageError(status: .forbidden, title: "Form refused",
                            text: "This form did not come from your current session (its CSRF token is missing or wrong), so nothing was done. Reload the page and try again.")
        }
    }

    /// Runs a page handler; refusals and failures become pages, never a stack trace or JSON.
    func page(_ request: Request, _ context: FleetContext, _ body: () async throws -> Response) async -> Response {
        do { return try await body() } catch let e as PageError {
            return Self.html(WebPages.message(title: e.title, text: e.text, user: e.visitor?.user, csrf: e.visitor?.csrf), status: e.status)
        } catch let e as FleetError {
            context.logger.error("\(request.method) \(request.uri.path): \(e.message)")
            return Self.html(WebPages.message(title: "Server error", text: "The control plane could not answer (\(e.code)); its log says why."), status: HTTPResponse.Status.serviceUnavailable)
        } catch {
            context.logger.error("\(request.method) \(request.uri.path): \(error)")
            return Self.html(WebPages.message(title: "Server error", text: "The control plane could not answer; its log says why."), status: HTTPResponse.Status.internalServerError)
        }
    }

    /// The engine's refusal as an HTTP status.
    static func status(of reply: Message) -> HTTPResponse.Status {
        switch ErrorCode(rawValue: reply["code"] ?? "") {
        case .notFound: .notFound
        case .unauthorized: .forbidden
        case .conflict: .conflict
        case .busy: .tooManyRequests
        case .internal: .internalServerError
        default: .badRequest
        }
    }

    /// Calls the engine; an error reply becomes a page with the engine's own sentence.
    func call(_ m: Message, _ v: Visitor, title: String) async throws -> Message {
        let reply = await services.call(m, v.identity)
        guard reply.isOK else {
            throw PageError(status: Self.status(of: reply), title: title, text: reply["message"] ?? "refused", visitor: (v.identity.name, v.csrf))
        }
        return reply
    }

    static func requestID(_ context: FleetContext) throws -> Int64 {
        guard let s = context.parameters.get("id"), let id = Int64(s), id > 0 else {
            throw PageError(status: .notFound, title: "No such request", text: "Request numbers are positive whole numbers.")
        }
        return id
    }

    public func addRoutes(to router: Router<FleetContext>) {
        // The link: JSON, for `jit web`. The caller proves who they are with the bearer token of `jit login`.
        router.post("v1/web/link") { request, context in
            guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer "), case let token = String(auth.dropFirst(7)), !token.isEmpty else {
                throw APIError(.unauthorized, "login_required", "this call needs the bearer token of 'jit login' (Authorization: Bearer ...); run 'jit login' first")
            }
            let found: (identity: Identity, login: String)?
            do { found = try await services.person(token, context.peer) } catch let e as FleetError { throw APIError(e) }
            guard let found else {
                throw APIError(.unauthorized, "login_required", "the bearer token is unknown, expired or logged out, or is an API token (only a login opens the web page); run 'jit login' again")
            }
            let link: FleetWire.WebLink
            do { link = try await Self.makeLink(user: found.identity.name, login: found.login, sessions: services.sessions, now: services.now(), publicURL: publicURL) } catch let e as FleetError {
                throw APIError(e)
            }
            return try FleetAPI.json(link, status: .created)
        }
        router.get("web/style.css") { _, _ in
            var h = HTTPFields()
            h[.contentType] = "text/css; charset=utf-8"
            h[.cacheControl] = "max-age=300"
            h[.xContentTypeOptions] = "nosniff"
            return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(string: WebPages.css)))
        }
        router.get("web/login") { request, context in
            await page(request, context) {
                let code = request.uri.queryParameters.get("code") ?? ""
                guard WebSecret.wellFormed(code),
                      let user = try await services.sessions.peekLink(hash: WebSecret.hash(code, purpose: "jit-web-link"), now: services.now())
                else { throw Self.linkRefused }
                // The pre-session: a cookie only this browser holds (SameSite=Strict, so a cross-site POST never
                // carries it) and a token bound to it and to this link, which only this page shows.
                let pre = WebSecret.make()
                let cookie = "\(Self.signInCookie)=\(pre); Path=/; Max-Age=\(Int(Self.signInLifetime)); Secure; HttpOnly; SameSite=Strict"
                return Self.html(WebPages.confirmLogin(user: user, code: code, csrf: WebSecret.signInCSRF(pre: pre, code: code)),
                                 extra: [.setCookie: cookie])
            }
        }
        router.post("web/login") { request, context in
            await page(request, context) {
                let form = try await Self.form(request)
                let code = form["code"] ?? ""
                // Checked before the link is looked at: a forged form uses nothing up.
                try Self.checkSignIn(form, request)
                guard WebSecret.wellFormed(code),
                      let link = try await services.sessions.redeemLink(hash: WebSecret.hash(code, purpose: "jit-web-link"), now: services.now())
                else { throw Self.linkRefused }
                let user = link.user
                let secret = WebSecret.make()
                try await services.sessions.addSession(hash: WebSecret.hash(secret, purpose: "jit-web-session"), user: user, login: link.login,
                                                       expiresAt: services.now().addingTimeInterval(Self.sessionLifetime))
                context.logger.info("web session opened for \(user) from \(context.peer)")
                let cookie = "\(Self.cookie)=\(secret); Path=/; Max-Age=\(Int(Self.sessionLifetime)); Secure; HttpOnly; SameSite=Strict"
                var extra: HTTPFields = [.setCookie: cookie]
                extra.append(contentsOf: [.setCookie: "\(Self.signInCookie)=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"] as HTTPFields)
                return Self.redirect("/web/", extra: extra)
            }
        }
        router.post("web/logout") { request, context in
            await page(request, context) {
                let v = try await visitor(request)
                try Self.checkCSRF(try await Self.form(request), v)
                try await services.sessions.endSession(hash: v.sessionHash, now: services.now())
                return Self.html(WebPages.message(title: "Signed out", text: "This browser is signed out. Run 'jit web' to sign in again."),
                                 extra: [.setCookie: "\(Self.cookie)=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"])
            }
        }
        router.get("web") { request, context in
            await page(request, context) {
                let v = try await visitor(request)
                let reply = try await call(Message("list", [("pending", "1")]), v, title: "Cannot list requests")
                return Self.html(WebPages.pending(reply.records, user: v.identity.name, csrf: v.csrf, now: services.now()))
            }
        }
        router.get("web/mine") { request, context in
            await page(request, context) {
                let v = try await visitor(request)
                let rs = try await call(Message("list", [("mine", "1")]), v, title: "Cannot list your requests")
                let gs = try await call(Message("grants", [("mine", "1")]), v, title: "Cannot list your grants")
                return Self.html(WebPages.mine(requests: rs.records, grants: gs.records, user: v.identity.name, csrf: v.csrf, now: services.now()))
            }
        }
        router.get("web/requests/:id") { request, context in
            await page(request, context) {
                let v = try await visitor(request)
                let id = try Self.requestID(context)
                let r = try await call(Message("show", [("id", String(id))]), v, title: "Request #\(id)")
                let notice: WebPages.Notice? = switch request.uri.queryParameters.get("done") {
                case "approve": .init(kind: .good, text: "Your approval of request #\(id) is recorded.")
                case "deny": .init(kind: .good, text: "You denied request #\(id).")
                default: nil
                }
                return Self.html(WebPages.request(r.fields, user: v.identity.name, csrf: v.csrf, now: services.now(), notice: notice))
            }
        }
        router.post("web/requests/:id") { request, context in
            await page(request, context) {
                let v = try await visitor(request)
                let id = try Self.requestID(context)
                let f = try await Self.form(request)
                try Self.checkCSRF(f, v)
                var m: Message
                switch f["decision"] {
                case "approve":
                    m = Message("approve", [("id", String(id))])
                    if let otp = f["otp"], !otp.isEmpty { m.add("otp", otp) }
                case "deny": m = Message("deny", [("id", String(id))])
                default: throw PageError(status: .badRequest, title: "No decision", text: "Press Approve or Deny.")
                }
                if let c = f["comment"]?.trimmingCharacters(in: .whitespacesAndNewlines), !c.isEmpty { m.add("comment", c) }
                let reply = await services.call(m, v.identity)
                guard reply.isOK else {
                    // The request again, with the engine's sentence on top, so the person can fix the code and retry.
                    let shown = await services.call(Message("show", [("id", String(id))]), v.identity)
                    let text = reply["message"] ?? "refused"
                    guard shown.isOK else { throw PageError(status: Self.status(of: reply), title: "Request #\(id)", text: text, visitor: (v.identity.name, v.csrf)) }
                    return Self.html(WebPages.request(shown.fields, user: v.identity.name, csrf: v.csrf, now: services.now(),
                                                      notice: .init(kind: .bad, text: text)), status: Self.status(of: reply))
                }
                context.logger.info("\(v.identity.name) chose \(m.word) on request \(id) on the web page")
                return Self.redirect("/web/requests/\(id)?done=\(m.word)")
            }
        }
    }

    /// The sign-in form's check (login CSRF): the POST must come from the page `GET /web/login` showed in this
    /// browser: it carries that page's pre-session cookie and the token bound to it and to the link's code. A
    /// cross-site page can neither read the token nor make the browser send the SameSite=Strict cookie, so it
    /// cannot sign a victim's browser into the attacker's account, nor use up someone's link. A browser that
    /// says the form came from another site (`Sec-Fetch-Site`) is refused outright.
    static func checkSignIn(_ form: [String: String], _ request: Request) throws {
        if let site = request.headers[.init("Sec-Fetch-Site")!], site != "same-origin" {
            throw PageError(status: .forbidden, title: "Sign-in refused",
                            text: "This sign-in form was sent from another site (Sec-Fetch-Site: \(site.prefix(20))), so nobody was signed in. Open the link from 'jit web' in this browser and press Sign in there.")
        }
        guard let pre = request.cookies[Self.signInCookie]?.value, WebSecret.wellFormed(pre), let token = form["csrf"],
              WebSecret.same(token, WebSecret.signInCSRF(pre: pre, code: form["code"] ?? ""))
        else {
            throw PageError(status: .forbidden, title: "Sign-in refused",
                            text: "This sign-in form did not come from the sign-in page this browser opened (its sign-in cookie or token is missing, wrong or older than \(Int(signInLifetime)) seconds), so nobody was signed in and the link is still unused. Open the link from 'jit web' again in this browser and press Sign in.")
        }
    }

    static let linkRefused = PageError(status: .forbidden, title: "Link not valid",
                                       text: "This sign-in link was already used or has expired (a link works once, within 60 seconds). Run 'jit web' again for a new one.")
}
