import Foundation
import Hummingbird
import HummingbirdTesting
import JITCore
import JITFleet
@testable import JITAgent
@testable import JITServer
import NIOCore
import Testing

/// The web page over the real engine (SQLite store, policy rules, TOTP): what the page sends is what the engine
/// takes, and the engine's rules hold through it (MFA, wrong and replayed codes, never your own request).
@Suite struct WebEngineTests {
    typealias D = FakeDirectory

    func app(_ h: Harness, _ sessions: MemoryWebSessions) -> some ApplicationProtocol {
        let router = Router(context: FleetContext.self)
        router.add(middleware: ErrorShapeMiddleware())
        let engine = h.engine, clock = h.clock
        let people = ["t-erin": D.erin, "t-judy": D.judy]
        let services = WebServices(person: { t, _ in people[t].map { ($0, t) } }, loginAlive: { _ in true }, identity: { D.standard.user(name: $0) },
                                   call: { m, who in engine.handle(m, from: who) }, sessions: sessions, now: { clock.now() })
        WebRoutes(services: services, publicURL: "https://jit.example.org").addRoutes(to: router)
        return Application(router: router)
    }

    static func signIn(_ c: some TestClientProtocol, _ token: String) async throws -> String {
        let code = try await c.execute(uri: "/v1/web/link", method: .post, headers: [.authorization: "Bearer \(token)"]) { r in
            String(try JSONDecoder().decode(FleetWire.WebLink.self, from: Data(buffer: r.body)).url.split(separator: "=", maxSplits: 1)[1])
        }
        // As a browser does: open the link's page (its pre-session cookie and form token), then press Sign in.
        let page = try await c.execute(uri: "/web/login?code=\(code)", method: .get)
        let pre = String(try #require(page.headers[.setCookie]).split(separator: ";")[0])
        let body = String(buffer: page.body), marker = "name=\"csrf\" value=\""
        let token = String(body[try #require(body.range(of: marker)).upperBound...].prefix { $0 != "\"" })
        let r = try await c.execute(uri: "/web/login", method: .post, headers: [.contentType: "application/x-www-form-urlencoded", .cookie: pre],
                                    body: ByteBuffer(string: "code=\(code)&csrf=\(token)"))
        #expect(r.status == .seeOther)
        return String(try #require(r.headers[values: .setCookie].first { $0.hasPrefix("__Host-jit_session=") }).split(separator: ";")[0])
    }

    static func page(_ c: some TestClientProtocol, _ uri: String, _ cookie: String) async throws -> (HTTPResponse.Status, String) {
        let r = try await c.execute(uri: uri, method: .get, headers: [.cookie: cookie])
        return (r.status, String(buffer: r.body))
    }

    static func decide(_ c: some TestClientProtocol, _ id: Int64, _ cookie: String, _ form: String) async throws -> (HTTPResponse.Status, String) {
        let (_, page) = try await Self.page(c, "/web/requests/\(id)", cookie)
        let marker = "name=\"csrf\" value=\""
        let csrf = String(page[try #require(page.range(of: marker)).upperBound...].prefix { $0 != "\"" })
        let r = try await c.execute(uri: "/web/requests/\(id)", method: .post, headers: [.cookie: cookie, .contentType: "application/x-www-form-urlencoded"],
                                    body: ByteBuffer(string: "csrf=\(csrf)&\(form)"))
        return (r.status, String(buffer: r.body))
    }

    @Test func anApproverApprovesWithTheirTOTPCodeOnThePage() async throws {
        let h = try Harness(yaml: PolicyEngineTests.yaml)
        let filed = h.call(D.judy, "request", [("for", "1800"), ("reason", "<script>alert('x')</script> login for OPS-7"), ("scope", "login")])
        let id = try #require(filed["id"].flatMap { Int64($0) }, "\(filed)")
        let text = try #require(h.call(D.erin, "mfa_enroll")["secret"])
        let secret = try #require(Base32.decode(text))
        let sessions = MemoryWebSessions()
        let engine = h.engine, clock = h.clock
        @Sendable func call(_ who: Identity, _ word: String, _ f: [(String, String)]) -> Message { engine.handle(Message(word, f), from: who) }
        try await app(h, sessions).test(.router) { c in
            let erin = try await Self.signIn(c, "t-erin")
            let (status, pending) = try await Self.page(c, "/web/", erin)
            #expect(status == .ok)
            #expect(pending.contains("href=\"/web/requests/\(id)\""))
            #expect(pending.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; login for OPS-7"))
            #expect(!pending.contains("<script>"))
            let (_, full) = try await Self.page(c, "/web/requests/\(id)", erin)
            for needle in ["judy", "office-login", "production", "30m", "Approvals so far"] { #expect(full.contains(needle), "\(needle)") }
            // office-login has mfa: true: its page asks for the code.
            #expect(full.contains("name=\"otp\""))
            // No code, a wrong code: the engine's own sentences, nothing decided.
            let (s1, noCode) = try await Self.decide(c, id, erin, "decision=approve")
            #expect(s1 == .forbidden)
            // The CLI's own sentence (what 'jit approve' without --otp prints), on the page.
            let cli = try #require(call(D.erin, "approve", [("id", String(id))])["message"])
            #expect(cli.contains("requires approvers to confirm with a one-time code"))
            #expect(noCode.contains(WebPages.esc(cli)), "\(noCode)")
            #expect(try engine.store.request(id: id)?.state == .pending)
            let code = TOTP.code(secret: secret, step: TOTP.step(at: clock.now()))
            let (_, wrong) = try await Self.decide(c, id, erin, "decision=approve&otp=\(code == "000000" ? "111111" : "000000")")
            #expect(wrong.contains("wrong"))
            #expect(try engine.store.request(id: id)?.state == .pending)
            let (s2, _) = try await Self.decide(c, id, erin, "decision=approve&otp=\(code)&comment=ok")
            #expect(s2 == .seeOther)
            let (_, after) = try await Self.page(c, "/web/requests/\(id)?done=approve", erin)
            #expect(after.contains(">approved<"))
            #expect(after.contains("erin"))
            #expect(try engine.store.request(id: id)?.state == .approved)
            // The requester sees it, and the grant, on their own page; they cannot decide their own.
            let judy = try await Self.signIn(c, "t-judy")
            let (_, mine) = try await Self.page(c, "/web/mine", judy)
            #expect(mine.contains("/web/requests/\(id)"))
            #expect(mine.contains(">active<"))
            let again = call(D.judy, "request", [("for", "1800"), ("reason", "again"), ("scope", "login")])
            let id2 = try #require(again["id"].flatMap { Int64($0) }, "\(again)")
            let (s3, own) = try await Self.decide(c, id2, judy, "decision=approve")
            #expect(s3 == .forbidden)
            #expect(try engine.store.request(id: id2)?.state == .pending, "\(own)")
        }
    }

    /// The code field is shown only where the request's rule asks for a code (two-sre has mfa: false).
    @Test func theCodeFieldOnlyWhereTheRuleAsksForIt() async throws {
        let h = try Harness(yaml: PolicyEngineTests.yaml)
        let filed = h.call(D.judy, "request", [("for", "1800"), ("reason", "sudo for OPS-8"), ("scope", "sudo")])
        let id = try #require(filed["id"].flatMap { Int64($0) }, "\(filed)")
        #expect(filed["rule"] == "two-sre")
        #expect(h.call(D.erin, "show", [("id", String(id))])["mfa"] == nil)
        let sessions = MemoryWebSessions()
        let engine = h.engine
        try await app(h, sessions).test(.router) { c in
            let erin = try await Self.signIn(c, "t-erin")
            let (status, page) = try await Self.page(c, "/web/requests/\(id)", erin)
            #expect(status == .ok)
            #expect(page.contains("two-sre"))
            #expect(page.contains("id=\"approve\""))
            #expect(!page.contains("name=\"otp\""))
            #expect(!page.contains("One-time code"))
            // Approving without a code works for such a rule (the first of its two approvals).
            let (s, _) = try await Self.decide(c, id, erin, "decision=approve")
            #expect(s == .seeOther)
            #expect(try engine.store.request(id: id)?.approvals == ["erin"])
        }
    }
}
