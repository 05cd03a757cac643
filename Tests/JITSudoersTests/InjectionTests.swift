import Foundation
import JITSudoers
import Testing

/// Everything here is an attempt to widen a grant through the words a user controls. Each must be refused
/// by the renderer, and `install` must leave the directory exactly as it was (empty).
@Suite struct InjectionTests {
    static let badNames: [String] = [
        "", "ALL", "Alice", "-alice", "#0", "#1000", "%sudo", "%admin", "+netgroup", "1alice", "$alice", "alice$x",
        "alice bob", "alice,bob", "alice\nroot ALL=(ALL) NOPASSWD: ALL", "alice:x", "alice!", "!alice",
        "alice=x", "a\\b", "al*ce", "al?ce", "al[i]ce", "alice)", "(alice", "alice\0", "alice\t", "alïce",
        "alice\r", "alice\u{1b}", "a/b", "a.b", "a\"b", "a'b", "a#b", String(repeating: "a", count: 33),
    ]

    static let badCommands: [String] = [
        // not an absolute path: aliases, ALL, relative paths, digests and options
        "", "ALL", "CMDS", "Cmnd_Alias", "id", "usr/bin/id", "./id", "../bin/sh", "~/bin/x", " /usr/bin/id",
        "sha256:0123abcd /usr/bin/id", "CWD=/ /usr/bin/id", "NOPASSWD: /bin/sh", "!/bin/sh", "sudoedit /etc/shadow",
        // path shapes sudoers reads differently, or that hide the real program
        "/", "/usr/bin/", "//usr/bin/id", "/usr//bin/id", "/usr/bin/../bin/sh", "/usr/bin/./id", "/usr/bin/..",
        "/usr/bin/sudoedit", "/usr/bin/sudoedit /etc/shadow",
        // sudoers syntax
        "/usr/bin/id, /bin/sh", "/usr/bin/id,/bin/sh", "/usr/bin/id : ALL = /bin/sh", "/usr/bin/id:x",
        "/usr/bin/id !x", "/usr/bin/id a=b", "/usr/bin/id \\", "/usr/bin/id \\,", "/usr/bin/id #x",
        "/usr/bin/id \"\"", "/usr/bin/id 'x'", "/usr/bin/id (ALL)", "/usr/bin/env ^/bin/sh$", "/bin/sh $HOME",
        "/usr/bin/id ~root", "/usr/bin/id;sh", "/usr/bin/id|sh", "/usr/bin/id`x`", "/usr/bin/id &", "/usr/bin/id <x",
        // control characters and line breaks
        "/usr/bin/id\n", "/usr/bin/id\nalice ALL=(ALL) NOPASSWD: ALL", "/usr/bin/id\r", "/usr/bin/id\0",
        "/usr/bin/id\t-u", "/usr/bin/id \u{1b}[2J", "/usr/bin/id\u{7f}", "/usr/bin/id\u{85}", "/usr/bin/id\u{2028}",
        "/usr/bin/íd",
        // spacing that would not survive a round trip
        "/usr/bin/id  -u", "/usr/bin/id ",
        // wildcards the policy did not allow
        "/usr/bin/*", "/usr/bin/id ?", "/usr/bin/i[d]", "/usr/bin/cat /var/log/*",
        // size
        "/" + String(repeating: "a", count: 4096),
    ]

    static func expectRefusedEverywhere(_ bad: SudoersEntry, _ code: SudoersError.Code) {
        #expect(errorCode { () throws(SudoersError) in _ = try SudoersRenderer.render(bad) } == code)
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let visudo = acceptingVisudo()
        defer { visudo.cleanup() }
        let directory = SudoersDirectory(path: scratch.path, visudo: visudo.path)
        #expect(errorCode { () throws(SudoersError) in try directory.install(bad) } == code)
        #expect(scratch.names() == [], "nothing may be written for a refused entry")
    }

    @Test(arguments: badNames) func userNames(name: String) {
        Self.expectRefusedEverywhere(entry(user: name), .invalidUser)
    }

    @Test(arguments: badNames) func runAsNames(name: String) {
        Self.expectRefusedEverywhere(entry(runAs: name), .invalidRunAs)
    }

    @Test(arguments: badCommands) func commands(command: String) {
        Self.expectRefusedEverywhere(entry(commands: ["/usr/bin/true", command]), .invalidCommand)
    }

    @Test(arguments: badCommands.filter { !$0.contains(where: { "*?[]".contains($0) }) })
    func wildcardPermissionAllowsNothingElse(command: String) {
        Self.expectRefusedEverywhere(entry(commands: [command], wildcards: true), .invalidCommand)
    }

    @Test func wildcardsNeedThePolicy() throws {
        let glob = "/usr/bin/journalctl -u nginx*"
        Self.expectRefusedEverywhere(entry(commands: [glob]), .invalidCommand)
        _ = try SudoersRenderer.render(entry(commands: [glob], wildcards: true))
    }

    @Test func anEmptyCommandListIsNotAll() {
        Self.expectRefusedEverywhere(entry(commands: []), .invalidCommand)
    }

    @Test func tooManyCommands() {
        let many = (0...SudoersRenderer.maxCommands).map { "/usr/bin/echo \($0)" }
        Self.expectRefusedEverywhere(entry(commands: many), .invalidCommand)
    }

    @Test(arguments: [Int64(0), -1, Int64.min]) func grantIDs(id: Int64) {
        Self.expectRefusedEverywhere(entry(id: id), .invalidGrantID)
    }
}
