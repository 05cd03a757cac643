import Foundation
import Testing
import JITCore
@testable import JITAgent

@Suite struct SessionTests {
    func open(_ h: Harness, pid: Int = 4242) -> Message {
        h.call(D.root, "session_open", [("user", "alice"), ("service", "sshd"), ("rhost", "10.0.0.9"), ("tty", "/dev/pts/3"), ("pid", String(pid))])
    }

    @Test func sessionsUnderARevokedGrantAreEnded() throws {
        let h = try Harness()
        let id = try h.file()
        _ = h.call(D.bob, "approve", [("id", String(id))])
        let s = open(h)
        #expect(s["grant"] == "1")
        _ = h.call(D.root, "revoke", [("id", "1")])
        #expect(h.sessions.entries == ["warn 1", "terminate 1 pid 4242"])
        #expect(try h.engine.store.openSessions(grantID: 1).isEmpty)
    }

    @Test func keepLeavesSessionsRunning() throws {
        let h = try Harness { $0.policy.onExpiry = .keep }
        let id = try h.file(seconds: 60)
        _ = h.call(D.bob, "approve", [("id", String(id))])
        _ = open(h)
        h.clock.advance(61)
        h.engine.expireDue()
        #expect(h.sessions.entries.isEmpty)
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "deny")
    }

    @Test func aSessionMovesToAnotherGrantThatStillCoversIt() throws {
        let h = try Harness()
        let a = try h.file(seconds: 600)
        _ = h.call(D.bob, "approve", [("id", String(a))])
        _ = open(h)
        let b = try h.file(seconds: 1200)
        _ = h.call(D.bob, "approve", [("id", String(b))])
        _ = h.call(D.root, "revoke", [("id", "1")])
        #expect(h.sessions.entries.isEmpty)
        #expect(try h.engine.store.openSessions(grantID: 2).count == 1)
    }

    @Test func sessionsAreWarnedBeforeExpiryThenEnded() throws {
        let h = try Harness { $0.policy.expiryWarning = 300 }
        let id = try h.file(seconds: 1800)
        _ = h.call(D.bob, "approve", [("id", String(id))])
        let start = h.clock.now()
        _ = open(h)
        #expect(h.engine.expireDue() == start.addingTimeInterval(1500))
        h.clock.advance(1500)
        h.engine.expireDue()
        #expect(h.sessions.entries == ["warn 1"])
        h.engine.expireDue()
        #expect(h.sessions.entries == ["warn 1"])
        h.clock.advance(300)
        h.engine.expireDue()
        #expect(h.sessions.entries == ["warn 1", "warn 1", "terminate 1 pid 4242"])
    }

    @Test func closingASessionByPid() throws {
        let h = try Harness()
        _ = open(h, pid: 777)
        #expect(h.call(D.root, "session_close", [("user", "alice"), ("service", "sshd"), ("pid", "777")])["closed"] == "1")
        #expect(h.call(D.root, "session_close", [("user", "alice"), ("service", "sshd"), ("pid", "777")])["closed"] == "0")
        #expect(h.call(D.root, "session_open", [("user", "alice"), ("service", "sshd"), ("pid", "1")])["code"] == "bad-request")
    }
}
