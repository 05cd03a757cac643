import Foundation
import Testing
@testable import JITCore

@Suite struct HMACTests {
    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            out.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    /// RFC 4231, test cases 1, 2, 3, 4, 6 and 7 (HMAC-SHA-256).
    @Test(arguments: [
        (String(repeating: "0b", count: 20), Array("Hi There".utf8), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        ("4a656665", Array("what do ya want for nothing?".utf8), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (String(repeating: "aa", count: 20), [UInt8](repeating: 0xdd, count: 50), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        ("0102030405060708090a0b0c0d0e0f10111213141516171819", [UInt8](repeating: 0xcd, count: 50), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        (String(repeating: "aa", count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        (String(repeating: "aa", count: 131),
         Array("This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".utf8),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ])
    func rfc4231(key: String, data: [UInt8], mac: String) {
        #expect(HMACSHA256.hex(key: Self.bytes(key), message: data) == mac)
    }
}

@Suite struct NotifyRenderTests {
    static let request = AccessRequest(
        id: 12, user: "alice", uid: 2001, environment: "production", scope: .sudo, runAs: "root", duration: 5400,
        reason: "<!channel> see <http://evil|here> & <@U1>\u{2028}Bcc: x@evil", createdAt: Date(timeIntervalSince1970: 1_800_000_000),
        expiresAt: Date(timeIntervalSince1970: 1_800_003_600), rule: "default")

    static func facts(_ kind: String = "request.filed") -> NotifyFacts {
        NotifyFacts(eventID: 3, event: NotifyEvent.of(auditKind: kind)!, kind: kind, at: Date(timeIntervalSince1970: 1_800_000_000), host: "db1",
                    environment: "production", actor: "alice", user: "alice", request: request, approverGroups: ["jit-approvers"])
    }

    @Test func slackEscapesMarkupSoMentionsAndLinksAreInert() throws {
        #expect(NotifyRender.slackEscape("<!channel> a & b <http://x|y>") == "&lt;!channel&gt; a &amp; b &lt;http://x|y&gt;")
        let body = NotifyRender.slack(Self.facts())
        let text = try #require((try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: String])?["text"])
        #expect(!text.contains("<!channel>") && !text.contains("<http") && !text.contains("<@U1>"))
        #expect(text.contains("&lt;!channel&gt;") && text.contains("&amp;"))
        #expect(!text.contains("\u{2028}"))
        for piece in ["alice", "sudo (all commands) as root", "production on db1", "1h30m", "`jit approve 12`", "`jit deny 12`", "jit-approvers"] {
            #expect(text.contains(piece), "\(piece)")
        }
    }

    @Test func webhookBodyIsTheDocumentedJSON() throws {
        let body = NotifyRender.webhook(Self.facts())
        let o = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        #expect(o["event"] as? String == "request" && o["kind"] as? String == "request.filed" && o["id"] as? Int == 3)
        #expect(o["approve_command"] as? String == "jit approve 12")
        let r = try #require(o["request"] as? [String: Any])
        #expect(r["reason"] as? String == Self.request.reason && r["duration_seconds"] as? Int == 5400 && r["scope"] as? String == "sudo")
    }

    @Test func messagesLinkToTheRequestsWebPageWhenThereIsOne() throws {
        #expect(!NotifyRender.plain(Self.facts()).contains("Page:"))
        #expect((try JSONSerialization.jsonObject(with: Data(NotifyRender.webhook(Self.facts()).utf8)) as? [String: Any])?["page_url"] == nil)
        var f = Self.facts()
        f.pageURL = "https://jit.example.org:8443/web/requests/12"
        #expect(NotifyRender.plain(f).hasSuffix("\nPage:    https://jit.example.org:8443/web/requests/12"))
        let o = try #require(try JSONSerialization.jsonObject(with: Data(NotifyRender.webhook(f).utf8)) as? [String: Any])
        #expect(o["page_url"] as? String == "https://jit.example.org:8443/web/requests/12")
        let text = try #require((try JSONSerialization.jsonObject(with: Data(NotifyRender.slack(f).utf8)) as? [String: String])?["text"])
        #expect(text.contains("<https://jit.example.org:8443/web/requests/12|Open request 12 on the web page>"))
    }

    @Test func emailHeadersRefuseCRLFAndTheSubjectHasNoUserText() throws {
        #expect(throws: EmailMessage.Refused.self) { _ = try EmailMessage.header("Subject", "hi\r\nBcc: victim@evil.org") }
        #expect(throws: EmailMessage.Refused.self) { _ = try EmailMessage.header("Subject", "hi\nBcc: victim@evil.org") }
        #expect(throws: EmailMessage.Refused.self) {
            _ = try EmailMessage.render(from: "jit@example.org", to: ["a@example.org\r\nBcc: x@evil.org"], subject: "s", body: "b", messageID: "m@h", date: Date())
        }
        let f = Self.facts()
        #expect(NotifyRender.subject(f) == "[jit] request 12 by alice waits for approval (production)")
        let m = try EmailMessage.render(from: "jit@example.org", to: ["ops@example.org"], subject: NotifyRender.subject(f), body: NotifyRender.plain(f),
                                        messageID: "jit-3-mail@db1", date: f.at)
        let cut = try #require(m.range(of: "\r\n\r\n"))
        let head = String(m[..<cut.lowerBound]), body = String(m[cut.upperBound...])
        #expect(!head.contains("evil") && !head.contains("Bcc"))
        #expect(head.contains("Content-Type: text/plain; charset=utf-8"))
        #expect(body.contains("Why: <!channel> see <http://evil|here> & <@U1> Bcc: x@evil"))  // one line, plain text
        #expect(!m.contains("\u{2028}"))
    }

    @Test func plainTextLinesAreSanitised() {
        #expect(NotifyRender.line("a\r\nb\u{1b}[31mc\u{202e}d") == "a  b [31mc d")
        // The whole format category, as the terminal cleaner does (issue 13).
        #expect(NotifyRender.line("a\u{200b}b\u{200e}c\u{200f}d\u{061c}e\u{2066}f\u{feff}g\u{85}h") == "a b c d e f g h")
    }

    @Test func requestsForProgramsWithShellEscapesWarnApprovers() {
        let r = AccessRequest(user: "alice", uid: 1, environment: "production", scope: .commands(["/usr/bin/vim /etc/hosts", "/usr/bin/id"]), runAs: "root",
                              duration: 60, reason: "x", createdAt: Date(), expiresAt: Date())
        let f = NotifyFacts(eventID: 1, event: .request, kind: "request.filed", at: Date(), host: "db1", environment: "production", actor: "alice",
                            user: "alice", request: r, approverGroups: ["jit-approvers"])
        #expect(NotifyRender.plain(f).contains("WARNING: /usr/bin/vim /etc/hosts: vim is an editor"))
        #expect(r.fields.filter { $0.0 == "warning" }.count == 1)
        #expect(CommandRisk.warnings(for: .commands(["/usr/bin/python3.11 -c x", "/bin/less /var/log/syslog", "/usr/bin/find /"])).count == 3)
        #expect(CommandRisk.warnings(for: .commands(["/usr/bin/systemctl restart nginx", "/usr/bin/id"])).isEmpty)
    }

    @Test func addresses() {
        #expect(Email.isAddress("ops+jit@example.org"))
        for bad in ["ops", "a@b@c", "a b@c.org", "a@c.org\r\nBcc: x", "<a@b.org>", "a@-x.org", "a@"] { #expect(!Email.isAddress(bad), "\(bad)") }
    }
}

@Suite struct NotifyConfigTests {
    func error(_ s: String) -> ConfigError? {
        do { _ = try Config.parse(s, file: "t.yaml"); return nil } catch { return error }
    }

    @Test func parsesChannels() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("jit-notify-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = dir + "/secret"
        _ = FileManager.default.createFile(atPath: secret, contents: Data("a-long-enough-secret-key\n".utf8), attributes: [.posixPermissions: 0o600])
        let c = try Config.parse("""
            environment: prod
            notify:
              max_backoff: 2m
              max_attempts: 10
              webhooks:
                - name: hook
                  url: http://127.0.0.1:8080/in
                  secret_file: \(secret)
                  events: [request, break_glass]
              slack:
                - {name: chat, url: "http://[::1]:9000/services/x"}
              email:
                - name: mail
                  smtp_host: 127.0.0.1
                  smtp_port: 2525
                  from: jit@example.org
                  to_groups: true
                  domain: example.org
                  starttls: never
            """, file: "t.yaml")
        #expect(c.notify.maxBackoff == 120 && c.notify.maxAttempts == 10 && c.notify.giveUpAfter == 86_400)
        #expect(c.notify.channels.map(\.name) == ["hook", "chat", "mail"])
        let hook = try #require(c.notify.channel(named: "hook"))
        #expect(hook.url == HTTPURL(host: "127.0.0.1", port: 8080, path: "/in") && hook.secret == Array("a-long-enough-secret-key".utf8))
        #expect(hook.events == [.request, .breakGlass])
        #expect(c.notify.channel(named: "chat")?.url == HTTPURL(host: "::1", port: 9000, path: "/services/x"))
        #expect(c.notify.channel(named: "mail")?.smtpPort == 2525)
        #expect(c.notify.channel(named: "mail")?.transport == .smtp && c.notify.channel(named: "mail")?.smtpSecurity == NotifyChannel.SMTPSecurity.none)
        // The same key signs the Standard Webhooks headers.
        #expect(hook.webhookKey == hook.secret)

        // A secret file others can read is refused, naming the file and the line.
        chmod(secret, 0o640)
        let e = error("environment: prod\nnotify:\n  webhooks:\n    - name: hook\n      url: http://127.0.0.1/x\n      secret_file: \(secret)\n")
        #expect(e?.line == 6)
        #expect(e?.description.contains("\(secret) is readable or writable by group or others (mode 640)") == true)
    }

    @Test(arguments: [
        ("notify:\n  webhooks:\n    - name: a\n      url: http://x/\n      colour: red\n", 6, "notify.webhooks.colour: is not a known setting"),
        ("notify:\n  max_backof: 2s\n", 3, "did you mean 'max_backoff'?"),
        ("notify:\n  webhooks:\n    - name: a\n      url: http://hooks.example.org/x\n", 5, "http:// crosses the network in clear text"),
        ("notify:\n  webhooks:\n    - {name: a, url: 'http://127.0.0.1/x', ca_file: /etc/ssl/certs/ca-certificates.crt}\n", 4, "applies to an https:// URL only"),
        ("notify:\n  slack:\n    - {name: a, url: 'https://x/', ca_file: /nonexistent/ca.pem}\n", 4, "cannot read /nonexistent/ca.pem"),
        ("notify:\n  email:\n    - {name: m, transport: sendmail, smtp_host: h, from: a@b.org, to: [c@d.org]}\n", 4, "applies to 'transport: smtp' only"),
        ("notify:\n  email:\n    - {name: m, transport: pigeon, from: a@b.org, to: [c@d.org]}\n", 4, "must be 'sendmail'"),
        ("notify:\n  email:\n    - {name: m, sendmail: usr/sbin/sendmail, from: a@b.org, to: [c@d.org]}\n", 4, "sendmail: must be an absolute path"),
        ("notify:\n  email:\n    - {name: m, smtp_host: mail.example.org, from: a@b.org, to: [c@d.org], starttls: never, username: u, password_file: /nonexistent}\n", 4, "a password is sent only over TLS"),
        ("notify:\n  email:\n    - {name: m, smtp_host: mail.example.org, smtp_port: 465, from: a@b.org, to: [c@d.org], starttls: required}\n", 4, "implicit TLS (SMTPS, port 465"),
        ("notify:\n  slack:\n    - name: a\n      url: http://x:99999/\n", 5, "has a bad port"),
        ("notify:\n  slack:\n    - name: a\n      url: https://x/\n    - name: a\n      url: https://y/\n", 6, "already the name of another channel"),
        ("notify:\n  email:\n    - name: m\n      smtp_host: 127.0.0.1\n      from: a@b.org\n", 4, "give 'to: [addresses]' or 'to_groups: true'"),
        ("notify:\n  email:\n    - {name: m, smtp_host: mail.example.org, from: a@b.org, to: [c@d.org], starttls: auto}\n", 4, "must be 'required'"),
        ("notify:\n  email:\n    - {name: m, smtp_host: h, from: a@b.org, to_groups: true}\n", 4, "needs 'domain:'"),
        ("notify:\n  webhooks:\n    - {name: a, url: 'http://x/', events: [everything]}\n", 4, "'everything' is not an event"),
    ])
    func errorsNameTheLine(text: String, line: Int, message: String) throws {
        let e = try #require(error("environment: prod\n" + text))
        #expect(e.line == line, "\(e)")
        #expect(e.description.contains(message), "\(e)")
    }

    @Test func urls() {
        #expect((try? HTTPURL.parse("http://example.org").get()) == HTTPURL(host: "example.org", port: 80, path: "/"))
        for bad in ["http://", "http://user:pw@x/", "http://x y/", "gopher://x/"] {
            if case .success = HTTPURL.parse(bad) { Issue.record("accepted \(bad)") }
        }
    }

    @Test func httpsURLsAndTheirDefaults() {
        #expect((try? HTTPURL.parse("https://hooks.slack.com/services/T/B/X").get()) == HTTPURL(host: "hooks.slack.com", port: 443, path: "/services/T/B/X", tls: true))
        #expect((try? HTTPURL.parse("https://[::1]:8443?x=1").get())?.string == "https://[::1]:8443/?x=1")
        #expect(HTTPURL(host: "127.0.0.9", port: 80, path: "/").isLoopback && HTTPURL(host: "::1", port: 80, path: "/").isLoopback)
        #expect(!HTTPURL(host: "127.0.0.1.example.org", port: 80, path: "/").isLoopback && !HTTPURL(host: "10.0.0.1", port: 80, path: "/").isLoopback)
    }

    @Test func mailTransportsAndTLSDefaults() throws {
        func mail(_ yaml: String) throws -> NotifyChannel {
            let c = try Config.parse("environment: prod\nnotify:\n  email:\n    - {name: m, from: a@b.org, to: [c@d.org]\(yaml)}\n", file: "t.yaml")
            return try #require(c.notify.channel(named: "m"))
        }
        // New configs hand mail to the system's MTA.
        let plain = try mail("")
        #expect(plain.transport == .sendmail && plain.sendmail == "/usr/sbin/sendmail")
        #expect(try mail(", sendmail: /usr/local/bin/sendmail").sendmail == "/usr/local/bin/sendmail")
        // SMTP to another host requires TLS; port 465 is implicit TLS; a relay on this host may be plain.
        #expect(try mail(", smtp_host: mail.example.org, smtp_port: 587").smtpSecurity == .starttls)
        #expect(try mail(", smtp_host: mail.example.org, smtp_port: 465").smtpSecurity == .implicit)
        #expect(try mail(", smtp_host: 127.0.0.1").smtpSecurity == NotifyChannel.SMTPSecurity.none)
        #expect(try mail(", smtp_host: localhost, starttls: required").smtpSecurity == .starttls)
        // Configs from before TLS was built in keep loading (check-config warns).
        #expect(try mail(", smtp_host: mail.example.org, starttls: never").smtpSecurity == NotifyChannel.SMTPSecurity.none)
    }

    @Test func aWhsecSecretIsDecodedForStandardWebhooks() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("jit-whsec-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = [UInt8](repeating: 7, count: 24)
        let secret = dir + "/secret"
        _ = FileManager.default.createFile(atPath: secret, contents: Data(("whsec_" + Data(key).base64EncodedString() + "\n").utf8),
                                           attributes: [.posixPermissions: 0o600])
        let c = try Config.parse("environment: prod\nnotify:\n  webhooks:\n    - {name: h, url: 'https://x/', secret_file: \(secret)}\n", file: "t.yaml")
        let h = try #require(c.notify.channel(named: "h"))
        #expect(h.webhookKey == key)
        #expect(h.secret == Array(("whsec_" + Data(key).base64EncodedString()).utf8))
    }
}
