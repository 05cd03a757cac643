import Testing
@testable import JITSudoers

/// `Posix.run` feeds visudo and sendmail: stdin delivered whole, output and status reported, a child that
/// overruns its time killed.
@Suite struct PosixRunTests {
    @Test func inputReachesTheChildAndItsOutputAndStatusComeBack() {
        let big = String(repeating: "0123456789abcdef", count: 16_384)  // 256 KiB: more than a pipe holds
        let r = Posix.run("/bin/sh", ["-c", "wc -c; echo oops >&2; exit 3"], input: Array(big.utf8))
        #expect(r.status == 3)
        #expect(r.output.contains("262144") && r.output.contains("oops"))
    }

    @Test func aChildThatOverrunsIsKilled() {
        let r = Posix.run("/bin/sh", ["-c", "exec sleep 30"], input: Array("x\n".utf8), timeout: 1)
        #expect(r.status == -1 && r.output.contains("killed after 1 s"))
    }

    @Test func aChildThatStopsReadingDoesNotHoldUsPastTheDeadline() {
        let big = [UInt8](repeating: 0x41, count: 1 << 20)
        let r = Posix.run("/bin/sh", ["-c", "exec sleep 30"], input: big, timeout: 1)
        #expect(r.status == -1 && r.output.contains("killed after 1 s"))
    }
}
