import Testing
@testable import JITCore

@Suite struct WireTests {
    func body(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func roundTripKeepsFieldsRecordsAndAwkwardBytes() throws {
        var m = Message("ok", [("reason", "50% done\nline two\r\u{7f}\u{01}"), ("user", "alice"), ("command", "/bin/a"), ("command", "/bin/b")])
        m.records = [[("id", "1"), ("state", "pending")], [], [("id", "2")]]
        let frame = try m.encodeFrame()
        #expect(try Message.frameLength(Array(frame.prefix(4))) == frame.count - 4)
        let back = try Message.decode(body: Array(frame.dropFirst(4)))
        #expect(back == m)
        #expect(back.all("command") == ["/bin/a", "/bin/b"])
        // The encoded body never holds a raw control byte except the line ends.
        let raw = m.encodeBody()
        #expect(!raw.contains(13) && !raw.contains(1) && !raw.contains(0x7f))
    }

    @Test func unicodeSurvives() throws {
        let m = Message("request", [("reason", "déploiement 🚀 — 修复")])
        #expect(try Message.decode(body: m.encodeBody())["reason"] == "déploiement 🚀 — 修复")
    }

    @Test(arguments: [
        ("", ErrorCode.badRequest),
        ("JIT/1 check", .badRequest),  // no final newline
        ("hello\n", .badRequest),
        ("JIT/2 hello\n", .version),
        ("JIT/10 hello\n", .version),
        ("HTTP/1.1 GET\n", .badRequest),
        ("JIT/1 \n", .badRequest),
        ("JIT/1 Check\n", .badRequest),
        ("JIT/1 check\nnovalue\n", .badRequest),
        ("JIT/1 check\nUser=x\n", .badRequest),
        ("JIT/1 check\n=x\n", .badRequest),
        ("JIT/1 check\n1user=x\n", .badRequest),
        ("JIT/1 check\nuser=a%2\n", .badRequest),
        ("JIT/1 check\nuser=a%zz\n", .badRequest),
        ("JIT/1 check\nuser=a\tb\n", .badRequest),
        ("JIT/1 check\nuser=a\rb\n", .badRequest),
        ("JIT/1 check\nuser=%FF%FE\n", .badRequest),
        ("JIT/1 check\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1\n", .badRequest),
    ])
    func malformedBodiesAreRefusedWithTheRightCode(text: String, code: ErrorCode) {
        #expect(throws: WireError.self) { try Message.decode(body: body(text)) }
        do { _ = try Message.decode(body: body(text)) } catch { #expect(error.code == code, "\(text.debugDescription)") }
    }

    @Test func frameLengthBounds() throws {
        #expect(throws: WireError.self) { try Message.frameLength([0, 0, 0, 0]) }
        #expect(throws: WireError.self) { try Message.frameLength([0, 1, 0, 1]) }  // 65537
        #expect(throws: WireError.self) { try Message.frameLength([0xff, 0xff, 0xff, 0xff]) }
        #expect(try Message.frameLength([0, 1, 0, 0]) == 65_536)
        #expect(try Message.frameLength([0, 0, 0, 9]) == 9)
    }

    @Test func oversizedMessagesCannotBeEncoded() {
        let m = Message("request", [("reason", String(repeating: "x", count: 70_000))])
        #expect(throws: WireError.self) { try m.encodeFrame() }
    }

    @Test func unknownKeysAreRefused() throws {
        let m = try Message.decode(body: body("JIT/1 check\nuser=a\nuid=0\n"))
        #expect(throws: WireError.self) { try m.onlyKeys(["user", "service"]) }
        #expect(throws: Never.self) { try m.onlyKeys(["user", "uid"]) }
    }

    @Test func booleansAreStrict() throws {
        let m = try Message.decode(body: body("JIT/1 check\nfile=yes\nok=1\n"))
        #expect(throws: WireError.self) { try m.bool("file") }
        #expect(try m.bool("ok"))
        #expect(try !m.bool("absent"))
    }
}
