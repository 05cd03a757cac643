import Foundation
import JITSudoers
import Testing

/// Recorded grants (#17): sudo's own I/O logging tags and a per-grant log folder, rendered only from
/// checked input.
@Suite struct RecordingTests {
    @Test func outputAndInputLogging() throws {
        var e = entry(id: 7, commands: ["/usr/bin/echo hi"], noPassword: true, notAfter: fixedExpiry)
        e.logOutput = true
        e.ioLogDir = "/var/log/jit/sudo-io/7"
        #expect(try SudoersRenderer.render(e) == """
            # jit-access grant 7 for alice: managed by jitd; edits are reverted.
            Defaults:alice iolog_dir=/var/log/jit/sudo-io/7, log_output
            alice ALL=(root) NOTAFTER=20261122100000Z NOPASSWD: LOG_OUTPUT: /usr/bin/echo hi

            """)
        e.logInput = true
        let text = try SudoersRenderer.render(e)
        #expect(text.contains("iolog_dir=/var/log/jit/sudo-io/7, log_output, log_input\n"))
        #expect(text.contains("NOPASSWD: LOG_OUTPUT: LOG_INPUT: /usr/bin/echo hi"))
    }

    @Test(arguments: ["relative/7", "/var/log/%{user}", "/var/log/a b", "/var/log/a,log_input", "/var/log/../etc", "/var//log", "/var/log/\"x\"", "/var/log/x\nroot ALL=(ALL) ALL"])
    func badLogFoldersAreRefused(_ dir: String) {
        var e = entry(id: 7, commands: nil, noPassword: true, notAfter: fixedExpiry)
        e.logOutput = true
        e.ioLogDir = dir
        #expect(throws: SudoersError.self) { try SudoersRenderer.render(e) }
    }

    @Test func inputWithoutOutputOrWithoutAFolderIsRefused() {
        var e = entry(id: 7, commands: nil, noPassword: true, notAfter: fixedExpiry)
        e.logInput = true
        e.ioLogDir = "/var/log/jit/sudo-io/7"
        #expect(throws: SudoersError.self) { try SudoersRenderer.render(e) }
        e.logInput = false
        e.logOutput = true
        e.ioLogDir = nil
        #expect(throws: SudoersError.self) { try SudoersRenderer.render(e) }
    }
}
