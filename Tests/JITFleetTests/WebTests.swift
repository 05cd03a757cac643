import Foundation
import Hummingbird
import HummingbirdTesting
import JITCore
import JITFleet
@testable import JITServer
import Logging
import NIOCore
import Synchronization
import Testing
import Yams

/// A stand-in for the decision engine: a few requests as the engine's `show` fields, the operations the page
/// sends, and the rules that matter here (an approver cannot approve their own request; the MFA rule needs
/// the code 123456). It records every call, so a refused form can be shown to have reached nothing.
final class FakeEngine: Sendable {
    struct State {
        var requests: [Int64: [(String, String)]] = [:]
        var calls: [(String, String)] = []
    }
    let state = Mutex(State())
    static let approvers: Set<String> = ["alice", "bob"]

    init() {
        state.withLock {
            $0.requests[7] = [("id", "7"), ("state", "pending"), ("user", "carol"), ("uid", "1003"), ("environment", "prod"), ("scope", "sudo"),
                              ("runas", "root"), ("duration", "1800"), ("reason", "fix <script>alert(1)</script> & \"quotes\""),
                              ("created_at", "2026-12-02T01:00:00Z"), ("expires_at", "2026-12-02T02:00:00Z"), ("rule", "prod-sudo"), ("mfa", "1"), ("ticket", "OPS-12")]
            $0.requests[8] = [("id", "8"), ("state", "pending"), ("user", "alice"), ("uid", "1001"), ("environment", "prod"), ("scope", "login"),
                              ("runas", "root"), ("duration", "600"), ("reason", "mine"), ("created_at", "2026-12-02T01:00:00Z"),
                              ("expires_at", "2026-12-02T02:00:00Z"), ("rule", "prod-login")]
        }
    }

    var calls: [(String, String)] { state.withLock { $0.calls } }
    func fields(_ id: Int64) -> [(String, String)] { state.withLock { $0.requests[id] ?? [] } }

    func handle(_ m: Message, _ who: Identity) -> Message {
        state.withLock { s -> Message in
            s.calls.append((m.word, who.name))
            switch m.word {
            case "list":
                let rs = s.requests.keys.sorted().compactMap { s.requests[$0] }
                    .filter { r in m["mine"] == "1" ? r.first { $0.0 == "user" }?.1 == who.name : r.contains { $0 == ("state", "pending") } }
                return Message("ok", records: rs)
            case "grants": return Message("ok")
            case "show":
                guard let id = Int64(m["id"] ?? ""), let r = s.requests[id] else { return .error(.notFound, "there is no request \(m["id"] ?? "")") }
                return Message("ok", r)
            case "approve", "deny":
                guard let id = Int64(m["id"] ?? ""), var r = s.requests[id] else { return .error(.notFound, "there is no request") }
                guard Self.approvers.contains(who.name) else { return .error(.unauthorized, "you are not an approver of rule prod-sudo") }
                guard r.first(where: { $0.0 == "user" })?.1 != who.name else { return .error(.unauthorized, "you cannot approve your own request") }
                if m.word == "approve" {
                    guard m["otp"] == "123456" else { return .error(.unauthorized, "rule prod-sudo needs a TOTP code from the approver: pass --otp") }
                    r.append(("approval", who.name))
                }
                r = r.map { $0.0 == "state" ? ("state", m.word == "approve" ? "approved" : "denied") : $0 }
                if let c = m["comment"] { r.append(("comment", c)) }
                s.requests[id] = r
                return Message("ok", r)
            default: return .error(.badRequest, "unknown")
            }
        }
    }
}

/// Time that tests move by hand.
final class TestTime: Sendable {
    let now = Mutex(Date(timeIntervalSince1970: 1_796_000_000))
    func advance(_ s: TimeInterval) { now.withLock { $0 += s } }
    func get() -> Date { now.withLock { $0 } }
}

final class EndedLogins: Sendable {
    let set = Mutex(Set<String>())
}

struct WebHarness {
    let engine = FakeEngine()
    let time = TestTime()
    let sessions = MemoryWebSessions()
    let tokens = ["tok-alice": "alice", "tok-bob": "bob", "tok-carol": "carol"]
    /// Logins that ended (`jit logout`): their sessions end with them.
    let endedLogins = EndedLogins()

    func app() -> some ApplicationProtocol {
        let router = Router(context: FleetContext.self)
        router.add(middleware: ErrorShapeMiddleware())
        let engine = self.engine, time = self.time, tokens = self.tokens
        let ids: [String: Identity] = ["alice": Identity(uid: 1001, name: "alice", groups: ["ops"]),
                                       "bob": Identity(uid: 1002, name: "bob", groups: ["ops"]),
                                       "carol": Identity(uid: 1003, name: "carol", groups: [])]
        let ended = self.endedLogins
        let services = WebServices(person: { t, _ in tokens[t].flatMap { ids[$0] }.map { ($0, "login-" + t) } },
                                   loginAlive: { l in !ended.set.withLock { $0.contains(l) } }, identity: { ids[$0] },
                                   call: { m, who in engine.handle(m, who) }, sessions: sessions, now: { time.get() })
        WebRoutes(services: services, publicURL: "https://jit.example.org:8443").addRoutes(to: router)
        return Application(router: router)
    }
}

extension TestClientProtocol {
    /// `POST /v1/web/link` with a bearer token; returns the code of the link.
    func link(_ token: String) async throws -> String {
        try await execute(uri: "/v1/web/link", method: .post, headers: [.authorization: "Bearer \(token)"]) { r in
            #expect(r.status == .created)
            let l = try JSONDecoder().decode(FleetWire.WebLink.self, from: Data(buffer: r.body))
            #expect(l.url.hasPrefix("https://jit.example.org:8443/web/login?code="))
            return String(l.url.split(separator: "=", maxSplits: 1)[1])
        }
    }

    func post(_ uri: String, form: String, cookie: String? = nil) async throws -> TestResponse {
        var h: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
        if let cookie { h[.cookie] = cookie }
        return try await execute(uri: uri, method: .post, headers: h, body: ByteBuffer(string: form))
    }

    /// Opens a link's page as a browser does: returns the pre-session cookie it sets and the form's token.
    func open(code: String) async throws -> (cookie: String, csrf: String) {
        let page = try await get("/web/login?code=\(code)", cookie: nil)
        #expect(page.status == .ok)
        let set = try #require(page.headers[.setCookie])
        return (String(set.split(separator: ";")[0]), try csrf(in: text(page)))
    }

    /// Signs in with a fresh link for `token` (opens its page, presses Sign in); returns the Cookie header value.
    func signIn(_ token: String) async throws -> String {
        let code = try await link(token)
        let (pre, form) = try await open(code: code)
        let r = try await post("/web/login", form: "code=\(code)&csrf=\(form)", cookie: pre)
        #expect(r.status == .seeOther)
        #expect(r.headers[.location] == "/web/")
        let set = try #require(r.headers[.setCookie])
        #expect(set.hasPrefix("__Host-jit_session="))
        return String(set.split(separator: ";")[0])
    }

    func get(_ uri: String, cookie: String?) async throws -> TestResponse {
        var h: HTTPFields = [:]
        if let cookie { h[.cookie] = cookie }
        return try await execute(uri: uri, method: .get, headers: h)
    }
}

func text(_ r: TestResponse) -> String { String(buffer: r.body) }

/// The CSRF token a page carries in its forms.
func csrf(in page: String) throws -> String {
    let marker = "name=\"csrf\" value=\""
    let start = try #require(page.range(of: marker)).upperBound
    return String(page[start...].prefix { $0 != "\"" })
}

@Suite struct WebPageTests {
    @Test func aLinkSignsInOnceAndTheCookieIsLockedDown() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let code = try await c.link("tok-alice")
            // Opening the link only asks; a previewer that fetches it uses nothing up.
            let ask = try await c.get("/web/login?code=\(code)", cookie: nil)
            #expect(ask.status == .ok)
            #expect(text(ask).contains("Sign in as alice"))
            // The page's pre-session cookie is as locked down as the session's, and short.
            let preSet = try #require(ask.headers[.setCookie])
            #expect(preSet.hasPrefix("__Host-jit_signin="))
            for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=120"] { #expect(preSet.contains("; \(attr)"), "\(attr) in \(preSet)") }
            let pre = String(preSet.split(separator: ";")[0]), token = try csrf(in: text(ask))
            let r = try await c.post("/web/login", form: "code=\(code)&csrf=\(token)", cookie: pre)
            #expect(r.status == .seeOther)
            // The session cookie is set and the pre-session one cleared.
            let cookies = r.headers[values: .setCookie]
            #expect(cookies.contains { $0.hasPrefix("__Host-jit_signin=;") && $0.contains("Max-Age=0") })
            let set = try #require(cookies.first { $0.hasPrefix("__Host-jit_session=") })
            #expect(set.hasPrefix("__Host-jit_session="))
            for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] { #expect(set.contains("; \(attr)"), "\(attr) in \(set)") }
            // The store holds a hash, never the cookie's secret.
            let secret = String(set.split(separator: ";")[0].dropFirst("__Host-jit_session=".count))
            #expect(await h.sessions.sessions[secret] == nil)
            #expect(await h.sessions.sessions[WebSecret.hash(secret, purpose: "jit-web-session")]?.user == "alice")
            // The same link again: refused, whether opened or posted.
            let again = try await c.post("/web/login", form: "code=\(code)&csrf=\(token)", cookie: pre)
            #expect(again.status == .forbidden)
            #expect(again.headers[.setCookie] == nil)
            #expect(text(again).contains("already used or has expired"))
            #expect(try await c.get("/web/login?code=\(code)", cookie: nil).status == .forbidden)
        }
    }

    @Test func aLinkLastsSixtySeconds() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let code = try await c.link("tok-alice")
            let (pre, token) = try await c.open(code: code)
            h.time.advance(61)
            let late = try await c.post("/web/login", form: "code=\(code)&csrf=\(token)", cookie: pre)
            #expect(late.status == .forbidden)
            #expect(text(late).contains("already used or has expired"))
        }
    }

    /// Login CSRF: a page on another site posts an attacker's own link into the victim's browser. Without the
    /// pre-session cookie and its token (which only the sign-in page this browser opened holds) nobody is
    /// signed in, and the link is not used up.
    @Test func aSignInFormFromElsewhereSignsNobodyIn() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let code = try await c.link("tok-carol")
            let (pre, token) = try await c.open(code: code)
            let refusals: [(String, String?, HTTPFields)] = [
                ("code=\(code)", nil, [:]),                                   // a bare cross-site form
                ("code=\(code)&csrf=\(token)", nil, [:]),                     // the token without the browser's cookie
                ("code=\(code)", pre, [:]),                                    // the cookie without the token
                ("code=\(code)&csrf=\(String(repeating: "0", count: 64))", pre, [:]),
                ("code=\(code)&csrf=\(token)", pre, [.init("Sec-Fetch-Site")!: "cross-site"]),
            ]
            for (form, cookie, extra) in refusals {
                var headers: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
                if let cookie { headers[.cookie] = cookie }
                headers.append(contentsOf: extra)
                let r = try await c.execute(uri: "/web/login", method: .post, headers: headers, body: ByteBuffer(string: form))
                #expect(r.status == .forbidden, "\(form) \(cookie ?? "-")")
                #expect(text(r).contains("nobody was signed in"), "\(text(r))")
                #expect(!r.headers[values: .setCookie].contains { $0.hasPrefix("__Host-jit_session=") })
            }
            // Another link's page gives a token that does not fit this link.
            let other = try await c.link("tok-carol")
            let (otherPre, otherToken) = try await c.open(code: other)
            #expect(try await c.post("/web/login", form: "code=\(code)&csrf=\(otherToken)", cookie: otherPre).status == .forbidden)
            // None of it used the link up: the page this browser opened still signs in.
            let ok = try await c.post("/web/login", form: "code=\(code)&csrf=\(token)", cookie: pre + "; other=1")
            #expect(ok.status == .seeOther)
            #expect(await h.sessions.sessions.values.map(\.user) == ["carol"])
        }
    }

    @Test func linksNeedAKnownBearerToken() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            for headers: HTTPFields in [[:], [.authorization: "Bearer nope"], [.authorization: "Basic YWxpY2U6eA=="]] {
                try await c.execute(uri: "/v1/web/link", method: .post, headers: headers) { r in
                    #expect(r.status == .unauthorized)
                    let e = try JSONDecoder().decode(FleetWire.ErrorBody.self, from: Data(buffer: r.body))
                    #expect(e.error.code == "login_required")
                    #expect(e.error.message.contains("jit login"))
                }
            }
            #expect(await h.sessions.links.isEmpty)
        }
    }

    @Test func pagesNeedASessionAndSessionsEnd() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            for cookie in [nil, "__Host-jit_session=forged", "__Host-jit_session=" + WebSecret.make()] {
                let r = try await c.get("/web/", cookie: cookie)
                #expect(r.status == .unauthorized)
                #expect(text(r).contains("jit web"))
            }
            #expect(h.engine.calls.isEmpty)
            let cookie = try await c.signIn("tok-alice")
            #expect(try await c.get("/web/", cookie: cookie).status == .ok)
            h.time.advance(8 * 3600 + 1)
            #expect(try await c.get("/web/", cookie: cookie).status == .unauthorized)
        }
    }

    @Test func aSessionEndsWithTheLoginItCameFrom() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let alice = try await c.signIn("tok-alice"), bob = try await c.signIn("tok-bob")
            h.endedLogins.set.withLock { _ = $0.insert("login-tok-alice") }
            let r = try await c.get("/web/", cookie: alice)
            #expect(r.status == .unauthorized)
            #expect(text(r).contains("jit logout"))
            // Ended for good, server side; another person's session is untouched.
            h.endedLogins.set.withLock { $0.removeAll() }
            #expect(try await c.get("/web/", cookie: alice).status == .unauthorized)
            #expect(try await c.get("/web/", cookie: bob).status == .ok)
            #expect(h.engine.calls.allSatisfy { $0.1 != "alice" })
        }
    }

    @Test func thePendingPageAndTheRequestPageShowEverythingEscaped() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let cookie = try await c.signIn("tok-alice")
            let list = try await c.get("/web", cookie: cookie)
            #expect(list.status == .ok)
            for (k, v) in [("content-security-policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
                           ("x-content-type-options", "nosniff"), ("cache-control", "no-store"), ("referrer-policy", "no-referrer")] {
                #expect(list.headers.first { $0.name.canonicalName == k }?.value == v, "\(k)")
            }
            let page = text(list)
            #expect(page.contains("href=\"/web/requests/7\""))
            #expect(!page.contains("<script>"))
            #expect(page.contains("fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"))
            let one = try await c.get("/web/requests/7", cookie: cookie)
            #expect(one.status == .ok)
            let body = text(one)
            #expect(!body.contains("<script>"))
            for needle in ["carol", "prod", "OPS-12", "prod-sudo", "30m", "Approvals so far", "none", "id=\"approve\"", "id=\"deny\"", "name=\"otp\"", "Time left"] {
                #expect(body.contains(needle), "\(needle)")
            }
            // The reason comes before the decision form, the form before the details.
            let reason = try #require(body.range(of: "class=\"reason\"")), button = try #require(body.range(of: "id=\"approve\""))
            #expect(reason.lowerBound < button.lowerBound)
            #expect(try await c.get("/web/requests/99", cookie: cookie).status == .notFound)
            #expect(try await c.get("/web/requests/abc", cookie: cookie).status == .notFound)
        }
    }

    @Test func aFormWithoutItsSessionsCSRFTokenDoesNothing() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let alice = try await c.signIn("tok-alice"), bob = try await c.signIn("tok-bob")
            let bobsToken = try csrf(in: text(try await c.get("/web/requests/7", cookie: bob)))
            for form in ["decision=approve&otp=123456", "decision=approve&otp=123456&csrf=", "decision=approve&otp=123456&csrf=\(bobsToken)",
                         "decision=approve&otp=123456&csrf=\(String(repeating: "0", count: 64))"] {
                let r = try await c.post("/web/requests/7", form: form, cookie: alice)
                #expect(r.status == .forbidden)
                #expect(text(r).contains("CSRF"))
            }
            #expect(!h.engine.calls.contains { $0.0 == "approve" })
            #expect(h.engine.fields(7).contains { $0 == ("state", "pending") })
            // Logging out needs it too.
            #expect(try await c.post("/web/logout", form: "", cookie: alice).status == .forbidden)
            #expect(try await c.get("/web/", cookie: alice).status == .ok)
        }
    }

    @Test func approveWithTheCodeTheRuleAsksFor() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let cookie = try await c.signIn("tok-alice")
            let token = try csrf(in: text(try await c.get("/web/requests/7", cookie: cookie)))
            // A wrong code: the engine's sentence on the request's page, nothing decided.
            let bad = try await c.post("/web/requests/7", form: "csrf=\(token)&decision=approve&otp=000000", cookie: cookie)
            #expect(bad.status == .forbidden)
            #expect(text(bad).contains("needs a TOTP code"))
            #expect(text(bad).contains("id=\"approve\""))
            let ok = try await c.post("/web/requests/7", form: "csrf=\(token)&decision=approve&otp=123456&comment=ok+%3Cb%3Ego%3C%2Fb%3E", cookie: cookie)
            #expect(ok.status == .seeOther)
            #expect(ok.headers[.location] == "/web/requests/7?done=approve")
            let after = text(try await c.get("/web/requests/7?done=approve", cookie: cookie))
            #expect(after.contains("Your approval of request #7 is recorded."))
            #expect(after.contains(">approved<"))
            #expect(after.contains("ok &lt;b&gt;go&lt;/b&gt;"))
            #expect(!after.contains("id=\"approve\""))
            #expect(h.engine.fields(7).contains { $0 == ("approval", "alice") })
            // The engine saw alice (from the session), never a name from the form.
            #expect(h.engine.calls.filter { $0.0 == "approve" }.allSatisfy { $0.1 == "alice" })
        }
    }

    @Test func theEngineDecidesWhoMayApprove() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let cookie = try await c.signIn("tok-alice")
            let token = try csrf(in: text(try await c.get("/web/requests/8", cookie: cookie)))
            let r = try await c.post("/web/requests/8", form: "csrf=\(token)&decision=approve&otp=123456&user=bob", cookie: cookie)
            #expect(r.status == .forbidden)
            #expect(text(r).contains("cannot approve your own request"))
            let deny = try await c.post("/web/requests/7", form: "csrf=\(token)&decision=deny&comment=no", cookie: cookie)
            #expect(deny.status == .seeOther)
            #expect(h.engine.fields(7).contains { $0 == ("state", "denied") })
        }
    }

    @Test func myPageAndSigningOut() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let cookie = try await c.signIn("tok-carol")
            let mine = try await c.get("/web/mine", cookie: cookie)
            #expect(mine.status == .ok)
            #expect(text(mine).contains("/web/requests/7"))
            #expect(!text(mine).contains("/web/requests/8"))
            let token = try csrf(in: text(mine))
            let out = try await c.post("/web/logout", form: "csrf=\(token)", cookie: cookie)
            #expect(out.status == .ok)
            #expect(out.headers[.setCookie]?.contains("Max-Age=0") == true)
            #expect(try await c.get("/web/mine", cookie: cookie).status == .unauthorized)
        }
    }

    @Test func badFormsAreRefusedNotCrashed() async throws {
        let h = WebHarness()
        try await h.app().test(.router) { c in
            let cookie = try await c.signIn("tok-alice")
            #expect(try await c.post("/web/requests/7", form: "csrf=%zz", cookie: cookie).status == .badRequest)
            let json = try await c.execute(uri: "/web/requests/7", method: .post, headers: [.cookie: cookie, .contentType: "application/json"], body: ByteBuffer(string: "{}"))
            #expect(json.status == .unsupportedMediaType)
            #expect(try await c.post("/web/login", form: String(repeating: "a", count: 20_000)).status == .contentTooLarge)
        }
    }
}

@Suite struct OpenAPISpecTests {
    /// Routes the spec describes that another part of this round registers (f-stream: requests, grants, events).
    /// Empty this once it is merged: the test then holds them to the spec too.
    /// Operations of the spec served by another part of the server (none: every route is held to the spec).
    static let builtElsewhere: Set<String> = []

    static func specOperations() throws -> Set<String> {
        let yaml = try #require(try Yams.load(yaml: String(decoding: PackageResources.openapi_yaml, as: UTF8.self)) as? [String: Any])
        #expect(yaml["openapi"] as? String == "3.0.3")
        let paths = try #require(yaml["paths"] as? [String: Any])
        var out = Set<String>()
        for (path, ops) in paths {
            for (method, _) in try #require(ops as? [String: Any]) where ["get", "post", "put", "delete", "patch"].contains(method) {
                out.insert("\(method.uppercased()) \(path)")
            }
        }
        return out
    }

    static func routerOperations() throws -> Set<String> {
        let (ca, _) = try FleetCA.create(commonName: "test", lifetime: 3600)
        let db = try FleetDatabase(config: ServerConfig(), logger: Logger(label: "test"))
        let router = Router(context: FleetContext.self)
        FleetAPI(ca: ca, db: db, config: ServerConfig(), stream: StreamHub(db: db, limits: StreamLimits(), logger: Logger(label: "test")), filing: nil, web: .unwired(sessions: MemoryWebSessions())).addRoutes(to: router)
        PeopleAPI(db: db, config: ServerConfig(), services: .none).addRoutes(to: router)
        return Set(router.routes.map { r in
            let path = "/" + r.path.description.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
            return "\(r.method) \(path)"
        }.filter { $0.contains(" /v1/") })
    }

    @Test func everyRouteIsInTheSpecAndEveryOperationIsARoute() throws {
        let spec = try Self.specOperations(), routes = try Self.routerOperations()
        #expect(routes.subtracting(spec).isEmpty, "routes missing from openapi.yaml: \(routes.subtracting(spec).sorted())")
        let unrouted = spec.subtracting(routes).subtracting(Self.builtElsewhere)
        #expect(unrouted.isEmpty, "operations in openapi.yaml that no route serves: \(unrouted.sorted())")
        #expect(routes.contains("GET /v1/openapi.yaml"))
        #expect(routes.contains("POST /v1/web/link"))
    }

    @Test func everyErrorIsTheOneShape() throws {
        let yaml = try #require(try Yams.load(yaml: String(decoding: PackageResources.openapi_yaml, as: UTF8.self)) as? [String: Any])
        let paths = try #require(yaml["paths"] as? [String: [String: Any]])
        for (path, ops) in paths where path != "/v1/openapi.yaml" {
            for (method, op) in ops {
                let responses = try #require((op as? [String: Any])?["responses"] as? [String: Any], "\(method) \(path)")
                let d = try #require(responses["default"] as? [String: Any], "\(method) \(path) has no default (error) response")
                #expect(d["$ref"] as? String == "#/components/responses/Error", "\(method) \(path)")
            }
        }
    }

    @Test func theServerServesTheSpec() async throws {
        let router = Router(context: FleetContext.self)
        let (ca, _) = try FleetCA.create(commonName: "test", lifetime: 3600)
        let db = try FleetDatabase(config: ServerConfig(), logger: Logger(label: "test"))
        FleetAPI(ca: ca, db: db, config: ServerConfig(), stream: StreamHub(db: db, limits: StreamLimits(), logger: Logger(label: "test")), filing: nil,
                 web: .unwired(sessions: MemoryWebSessions())).addRoutes(to: router)
        try await Application(router: router).test(.router) { c in
            try await c.execute(uri: "/v1/openapi.yaml", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.headers[.contentType] == "application/yaml")
                #expect(Array(r.body.readableBytesView) == PackageResources.openapi_yaml)
            }
        }
    }
}
