import Foundation
import JITSudoers
import Testing

@Suite struct RendererTests {
    @Test func allCommandsWithoutPassword() throws {
        let text = try SudoersRenderer.render(entry(id: 42, commands: nil, noPassword: true, notAfter: fixedExpiry))
        #expect(
            text == """
                # jit-access grant 42 for alice: managed by jitd; edits are reverted.
                alice ALL=(root) NOTAFTER=20261122100000Z NOPASSWD: ALL

                """)
    }

    @Test func commandListWithPassword() throws {
        let text = try SudoersRenderer.render(
            entry(
                id: 9, user: "bob_2", runAs: "www-data",
                commands: ["/usr/bin/systemctl restart nginx", "/usr/bin/id"], noPassword: false,
                notAfter: fixedExpiry))
        #expect(
            text == """
                # jit-access grant 9 for bob_2: managed by jitd; edits are reverted.
                bob_2 ALL=(www-data) NOTAFTER=20261122100000Z PASSWD: /usr/bin/systemctl restart nginx
                bob_2 ALL=(www-data) NOTAFTER=20261122100000Z PASSWD: /usr/bin/id ""

                """)
    }

    @Test func wildcardsWhenThePolicyAllowsThem() throws {
        let text = try SudoersRenderer.render(
            entry(id: 3, commands: ["/usr/bin/journalctl -u nginx*"], notAfter: fixedExpiry, wildcards: true))
        #expect(text.hasSuffix("alice ALL=(root) NOTAFTER=20261122100000Z NOPASSWD: /usr/bin/journalctl -u nginx*\n"))
    }

    @Test(arguments: [
        (0.0, "19700101000000Z"),
        (951_782_400.0, "20000229000000Z"),
        (1_767_225_599.999, "20251231235959Z"),  // truncated, never rounded up past the grant
        (1_795_341_600.0, "20261122100000Z"),
        (4_107_542_400.0, "21000301000000Z"),  // 2100 is not a leap year
        (253_402_300_799.0, "99991231235959Z"),
    ])
    func notAfterIsUTC(seconds: Double, expected: String) throws {
        let text = try SudoersRenderer.render(entry(notAfter: Date(timeIntervalSince1970: seconds)))
        #expect(text.contains(" NOTAFTER=\(expected) "))
    }

    @Test(arguments: ["Asia/Tokyo", "America/Los_Angeles", "Pacific/Chatham", "UTC"])
    func notAfterFromADateMadeInAnyTimeZone(zone: String) throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = try #require(TimeZone(identifier: zone))
        let zoneDate = try #require(
            calendar.date(from: DateComponents(year: 2026, month: 11, day: 22, hour: 10, minute: 0, second: 0)))
        let offset = calendar.timeZone.secondsFromGMT(for: zoneDate)
        // The same wall-clock time in `zone` is `offset` seconds before 10:00Z.
        #expect(zoneDate == fixedExpiry.addingTimeInterval(TimeInterval(-offset)))
        let text = try SudoersRenderer.render(entry(notAfter: zoneDate.addingTimeInterval(TimeInterval(offset))))
        #expect(text.contains(" NOTAFTER=20261122100000Z "))
    }

    @Test(arguments: [-1.0, 253_402_300_800.0, Double.infinity, -Double.infinity])
    func expiriesOutsideFourDigitYearsAreRefused(seconds: Double) {
        #expect(errorCode { () throws(SudoersError) in
            _ = try SudoersRenderer.render(entry(notAfter: Date(timeIntervalSince1970: seconds)))
        } == .invalidDate)
    }

    @Test func namesThatSudoersAccepts() throws {
        for name in ["a", "_svc", "deploy-bot", "user_1", "smb$", String(repeating: "a", count: 32)] {
            _ = try SudoersRenderer.render(entry(user: name, runAs: name))
        }
    }

    @Test func fileNamesAreOnesSudoReads() {
        let directory = SudoersDirectory(path: "/etc/sudoers.d")
        #expect(directory.fileName(for: 1) == "jit-grant-1")
        #expect(directory.fileName(for: Int64.max) == "jit-grant-9223372036854775807")
        #expect(!directory.fileName(for: 12).contains(".") && !directory.fileName(for: 12).hasSuffix("~"))
    }

    @Test func errorsSayWhatToFix() {
        do {
            _ = try SudoersRenderer.render(entry(commands: ["/usr/bin/id\nalice ALL=(ALL) ALL"]))
            Issue.record("expected a refusal")
        } catch {
            #expect(error.code == .invalidCommand)
            #expect(error.message.contains("byte 0x0a"))
            #expect(!error.message.contains("\n"), "user input must not reach logs raw")
            #expect("\(error)" == error.message)
        }
    }
}
