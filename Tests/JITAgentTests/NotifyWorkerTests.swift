import Foundation
import Synchronization
import Testing
import JITCore
@testable import JITAgent

/// A transport that records attempts and answers what it is told.
final class FakeTransport: NotifyTransport {
    let log = Mutex<[(Int64, String)]>([])
    let answer = Mutex<DeliveryResult>(.sent)
    func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult {
        log.withLock { $0.append((m.id, c.name)) }
        return answer.withLock { $0 }
    }
    var count: Int { log.withLock { $0.count } }
}

@Suite struct NotifyWorkerTests {
    typealias D = FakeDirectory

    static func harness(_ edit: (inout NotifySettings) -> Void = { _ in }) throws -> Harness {
        try Harness { c in
            var hook = NotifyChannel(kind: .webhook, name: "hook")
            hook.url = HTTPURL(host: "127.0.0.1", port: 9, path: "/")
            var mail = NotifyChannel(kind: .email, name: "mail")
            mail.smtpHost = "127.0.0.1"
            mail.from = "jit@example.org"
            mail.toGroups = true
            mail.domain = "example.org"
            c.notify.channels = [hook, mail]
            c.notify.maxBackoff = 8
            edit(&c.notify)
        }
    }

    static func worker(_ h: Harness, _ t: FakeTransport) -> Notifications {
        Notifications(engine: h.engine, transport: t, hostname: "db1", members: { g in g == "jit-approvers" ? ["bob", "carol", "alice"] : [] })
    }

    @Test func aRequestBecomesOneMessagePerChannelInTheSameTransaction() throws {
        let h = try Self.harness()
        let id = try h.file()
        // The trigger queued the event with the request: nothing delivered yet, nothing lost.
        #expect(try h.engine.store.notifyQueue().map(\.kind) == ["request.filed"])
        let t = FakeTransport()
        Self.worker(h, t).runOnce()
        let rows = try h.engine.store.outboxRows()
        #expect(rows.map(\.channel) == ["hook", "mail"])
        #expect(rows.allSatisfy { $0.state == "sent" && $0.attempts == 1 })
        #expect(rows[1].recipients == ["bob@example.org", "carol@example.org"])  // never the requester
        #expect(rows[1].payload.contains("Subject: [jit] request \(id) by alice waits for approval (production)"))
        #expect(try h.engine.store.notifyQueue().isEmpty)
        // Sent is final: another pass sends nothing.
        Self.worker(h, t).runOnce()
        #expect(t.count == 2)
    }

    @Test func aFleetHostTellsOnlyBreakGlassAndSudoersTheControlPlaneTellsTheRest() throws {
        let h = try Self.harness()
        _ = try h.file()
        let w = Self.worker(h, FakeTransport())
        let filed = try #require(try h.engine.store.notifyQueue().first)
        #expect(w.facts(filed, h.engine.config)?.pageURL == nil, "a single host tells of its requests, with no page link")
        var fleet = h.engine.config
        fleet.server = FleetSettings()
        #expect(w.facts(filed, fleet) == nil, "in fleet mode the control plane tells of requests (with the page link)")
        let at = Timestamps.millis(h.clock.now())
        for kind in ["breakglass.bypass", "sudoers.write_failed"] {
            let e = AuditEvent(id: 99, at: at, kind: kind, actor: "dora", user: "dora", requestID: nil, grantID: nil, data: "", prevHash: "", hash: "")
            #expect(w.facts(e, fleet) != nil, "\(kind) is the host's own to tell")
        }
        for kind in ["request.escalated", "request.approved", "request.denied", "grant.expiring"] {
            let e = AuditEvent(id: 98, at: at, kind: kind, actor: "bob", user: "alice", requestID: nil, grantID: nil, data: "", prevHash: "", hash: "")
            #expect(w.facts(e, fleet) == nil, "\(kind) is the control plane's to tell")
        }
    }

    @Test func retriesBackOffFromOneSecondDoublingToTheCap() throws {
        let h = try Self.harness { $0.channels.removeLast() }
        _ = try h.file()
        let t = FakeTransport()
        t.answer.withLock { $0 = .failed("127.0.0.1:9: cannot connect (Connection refused)") }
        let w = Self.worker(h, t)
        let start = h.clock.now()
        var waits: [Double] = []
        w.runOnce()
        for _ in 0..<6 {
            let row = try #require(try h.engine.store.outboxRows().first)
            let wait = row.nextAt.timeIntervalSince(h.clock.now())
            waits.append(wait)
            // Not a moment early.
            h.clock.advance(wait - 0.5)
            let before = t.count
            w.runOnce()
            #expect(t.count == before)
            h.clock.advance(0.5)
            w.runOnce()
            #expect(t.count == before + 1)
        }
        #expect(waits == [1, 2, 4, 8, 8, 8])
        #expect(h.clock.now().timeIntervalSince(start) == 31)
        t.answer.withLock { $0 = .sent }
        h.clock.advance(8)
        w.runOnce()
        let row = try #require(try h.engine.store.outboxRows().first)
        #expect(row.state == "sent" && row.attempts == 8)
    }

    @Test func aMessageFailingPastItsLimitIsMarkedFailedAndAudited() throws {
        let h = try Self.harness {
            $0.channels.removeLast()
            $0.maxAttempts = 3
        }
        _ = try h.file()
        let t = FakeTransport()
        t.answer.withLock { $0 = .failed("127.0.0.1:9 answered HTTP 500") }
        let w = Self.worker(h, t)
        for _ in 0..<5 {
            w.runOnce()
            h.clock.advance(10)
        }
        #expect(t.count == 3)
        let row = try #require(try h.engine.store.outboxRows().first)
        #expect(row.state == "failed" && row.lastError == "127.0.0.1:9 answered HTTP 500")
        let failed = try h.engine.store.events(Store.AuditQuery()).filter { $0.kind == "notify.failed" }
        #expect(failed.count == 1 && failed[0].user == "alice")
        #expect(failed[0].pairs.contains { $0 == ("channel", "hook") })
        let st = h.call(D.root, "status")
        #expect(st["outbox_failed"] == "1" && st["outbox_pending"] == "0" && st["notify_channels"] == "1")
        #expect(try h.engine.store.verifyAudit().problem == nil)
    }

    @Test func theAgeLimitGivesUpToo() throws {
        let h = try Self.harness {
            $0.channels.removeLast()
            $0.giveUpAfter = 60
        }
        _ = try h.file()
        let t = FakeTransport()
        t.answer.withLock { $0 = .failed("down") }
        let w = Self.worker(h, t)
        for _ in 0..<20 {
            w.runOnce()
            h.clock.advance(8)
        }
        #expect(try h.engine.store.outboxRows().first?.state == "failed")
    }

    @Test func decisionsGoToTheRequesterAndAutomaticApprovalsAreNotAnnounced() throws {
        let h = try Self.harness()
        let id = try h.file()
        _ = h.call(D.bob, "approve", [("id", String(id)), ("comment", "ok")])
        let t = FakeTransport()
        Self.worker(h, t).runOnce()
        let mail = try h.engine.store.outboxRows().filter { $0.channel == "mail" }
        #expect(mail.map(\.kind) == ["request.filed", "request.approved"])
        #expect(mail[1].recipients == ["alice@example.org"])
        #expect(mail[1].payload.contains("Subject: [jit] request \(id) approved (production)"))
    }

    @Test func aGrantAboutToEndIsNoticedOnce() throws {
        let h = try Self.harness { $0.expiryNotice = 300 }
        let id = try h.file(seconds: 1800)
        _ = h.call(D.bob, "approve", [("id", String(id))])
        let t = FakeTransport()
        let w = Self.worker(h, t)
        let next = w.runOnce()
        #expect(try h.engine.store.outboxRows().filter { $0.kind == "grant.expiring" }.isEmpty)
        #expect(next == h.clock.now().addingTimeInterval(1500))
        h.clock.advance(1500)
        w.runOnce()
        w.runOnce()
        let rows = try h.engine.store.outboxRows().filter { $0.kind == "grant.expiring" }
        #expect(rows.map(\.channel) == ["hook", "mail"])
        #expect(rows[1].recipients == ["alice@example.org"])
    }

    @Test func escalationBreakGlassAndSudoersReachTheRightPeopleAndAutomaticRulesStayQuiet() throws {
        let h = try Harness(yaml: PolicyEngineTests.yaml + """

            notify:
              webhooks: [{name: hook, url: "http://127.0.0.1:9/"}]
              email: [{name: mail, smtp_host: 127.0.0.1, from: jit@example.org, to: [admins@example.org], to_groups: true, domain: example.org}]
            """)
        let members: @Sendable (String) -> [String] = { ["sre": ["erin", "frank", "judy"], "security": ["grace"], "managers": ["heidi"]][$0] ?? [] }
        let w = Notifications(engine: h.engine, transport: FakeTransport(), hostname: "db1", members: members)
        _ = h.call(D.judy, "request", [("for", "600"), ("reason", "r"), ("scope", "commands"), ("command", "/usr/bin/systemctl restart nginx")])
        _ = try h.file(D.judy, scope: "sudo")
        h.clock.advance(1800)
        h.engine.expireDue()
        _ = h.call(D.ivan, "request", [("for", "600"), ("reason", "db down"), ("scope", "sudo"), ("break_glass", "1")])
        try h.engine.store.record("sudoers.write_failed", actor: "jitd", user: "", grantID: 9, data: [("dir", "/etc/sudoers.d"), ("why", "disk full")], at: h.clock.now())
        w.runOnce()
        let mail = try h.engine.store.outboxRows().filter { $0.channel == "mail" }
        // The break-glass grant (10m) is inside the default 10m expiry notice: its requester is told too.
        #expect(mail.map(\.kind) == ["request.filed", "request.escalated", "breakglass.bypass", "sudoers.write_failed", "grant.expiring"])
        #expect(mail[4].recipients == ["admins@example.org", "ivan@example.org"])
        #expect(mail[0].recipients == ["admins@example.org", "erin@example.org", "frank@example.org", "grace@example.org"])  // not judy
        #expect(mail[1].recipients == ["admins@example.org", "heidi@example.org"])
        #expect(mail[1].payload.contains("Subject: [jit] request 2 by judy escalated to tier 2 (production)"))
        #expect(Set(mail[2].recipients) == ["admins@example.org", "erin@example.org", "frank@example.org", "judy@example.org", "grace@example.org", "heidi@example.org"])
        #expect(mail[3].recipients == ["admins@example.org"] && mail[3].payload.contains("why: disk full"))
        let hook = try h.engine.store.outboxRows().filter { $0.channel == "hook" }
        let esc = try #require(try JSONSerialization.jsonObject(with: Data(hook[1].payload.utf8)) as? [String: Any])
        #expect(esc["tier"] as? Int == 2 && esc["approver_groups"] as? [String] == ["managers"])
    }

    @Test func smtpDataIsDotStuffedWithCRLFLines() {
        let d = SMTPSession.dataSection("Subject: x\r\n\r\n.hidden\r\nline\r\n..two\r\n")
        #expect(String(decoding: d, as: UTF8.self) == "Subject: x\r\n\r\n..hidden\r\nline\r\n...two\r\n.\r\n")
    }

    /// The Standard Webhooks reference vector (the standardwebhooks libraries' own test): the same secret,
    /// id, timestamp and body give the same `webhook-signature`.
    @Test func standardWebhooksSignatureMatchesTheReferenceVector() throws {
        let key = try #require(Data(base64Encoded: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
        let h = LiveTransport.standardWebhooks(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", at: Date(timeIntervalSince1970: 1_614_265_330),
                                               body: Array(#"{"test": 2432232314}"#.utf8), key: Array(key))
        #expect(h.map(\.0) == ["webhook-id", "webhook-timestamp", "webhook-signature"])
        #expect(h[1].1 == "1614265330")
        #expect(h[2].1 == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    @Test func checkConfigNamesEachChannelsTransportAndWarnsOfAMissingSendmail() throws {
        let c = try Config.parse("""
            environment: prod
            notify:
              webhooks: [{name: hook, url: "https://hooks.example.org/x"}]
              email:
                - {name: mta, from: a@b.org, to: [c@d.org], sendmail: /nonexistent/sendmail}
                - {name: direct, smtp_host: mail.example.org, smtp_port: 587, from: a@b.org, to: [c@d.org]}
                - {name: clear, smtp_host: mail.example.org, starttls: never, from: a@b.org, to: [c@d.org]}
            """, file: "t.yaml")
        let summary = PolicyReport.summary(c, file: "t.yaml")
        #expect(summary.contains("hook (webhook to https hooks.example.org:443)"), "\(summary)")
        #expect(summary.contains("mta (email via /nonexistent/sendmail)") && summary.contains("direct (email via mail.example.org:587, STARTTLS)"), "\(summary)")
        let w = PolicyReport.warnings(c, file: "t.yaml", directory: FakeDirectory(users: []))
        #expect(w.contains { $0.contains("t.yaml:5: notify.email[mta]: /nonexistent/sendmail is missing or not executable") }, "\(w)")
        #expect(w.contains { $0.contains("t.yaml:7: notify.email[clear]: starttls: never sends mail in clear text over the network") }, "\(w)")
        #expect(!w.contains { $0.contains("[direct]") })
    }

    @Test func backoffSchedule() {
        #expect((1...8).map { NotifyBackoff.delay(afterAttempt: $0, cap: 300) } == [1, 2, 4, 8, 16, 32, 64, 128])
        #expect(NotifyBackoff.delay(afterAttempt: 9, cap: 300) == 256)
        #expect(NotifyBackoff.delay(afterAttempt: 10, cap: 300) == 300)
        #expect(NotifyBackoff.delay(afterAttempt: 1000, cap: 300) == 300)
    }
}
