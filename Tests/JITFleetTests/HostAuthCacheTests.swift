import Foundation
import Testing
@testable import JITServer

/// The replica's memory of checked hosts may only ever say "yes, as PostgreSQL said a moment ago": never while
/// the LISTEN connection (which brings revocations) is down or not proven up by a heartbeat of its own sent less
/// than `maxAge` ago, never after an invalidation that raced the read, and never to refuse.
@Suite struct HostAuthCacheTests {
    func record(_ name: String = "db1", serial: String = "0a", previous: String? = nil, revoked: Date? = nil) -> HostRecord {
        HostRecord(name: name, environment: "production", labels: ["db"], serial: serial, previousSerial: previous,
                   notAfter: Date().addingTimeInterval(3600), enrolledAt: Date(), revokedAt: revoked, lastSeen: nil)
    }

    /// A live cache: the listener is up and its first heartbeat came back.
    func live() -> HostAuthCache {
        let c = HostAuthCache()
        c.setLive(true)
        #expect(c.heartbeat(c.nextHeartbeat()))
        return c
    }

    @Test func nothingIsKeptOrAnsweredWhileTheListenerIsDown() {
        let c = HostAuthCache()
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") == nil, "not live: a revocation could be missed")
        c.setLive(true)
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") == nil, "up, but no heartbeat has come back through it yet")
        #expect(c.heartbeat(c.nextHeartbeat()))
        #expect(c.host("db1", serial: "0a")?.name == "db1")
        c.setLive(false)
        #expect(c.host("db1", serial: "0a") == nil, "the listener went away: everything is asked again")
        c.setLive(true)
        #expect(c.heartbeat(c.nextHeartbeat()))
        #expect(c.host("db1", serial: "0a") == nil, "coming back does not bring old rows back")
    }

    @Test func onlyAcceptsAndOnlyTheCurrentOrPreviousSerial() {
        let c = live()
        c.store(record(serial: "0b", previous: "0a"), readAt: c.generation())
        #expect(c.host("db1", serial: "0b") != nil)
        #expect(c.host("db1", serial: "0a") != nil, "the certificate before the renewal still works until it expires")
        #expect(c.host("db1", serial: "0c") == nil, "another serial is PostgreSQL's to judge")
        #expect(c.host("db2", serial: "0b") == nil)
        c.store(record("db3", revoked: Date()), readAt: c.generation())
        #expect(c.host("db3", serial: "0a") == nil, "a revoked row never answers from memory")
    }

    @Test func anInvalidationDuringTheReadWins() {
        let c = live()
        let before = c.generation()
        c.invalidate("db1")  // jit_hosts arrived while the row was being read
        c.store(record(), readAt: before)
        #expect(c.host("db1", serial: "0a") == nil, "the row read before the revocation's notice is not kept")
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") != nil)
        c.invalidate("db1")
        #expect(c.host("db1", serial: "0a") == nil)
    }

    @Test func rowsAnswerOnlyWhileHeartbeatsComeBack() {
        let c = HostAuthCache()
        c.setLive(true)
        let t0 = ContinuousClock.now
        let beat = c.nextHeartbeat(now: t0)
        c.store(record(), readAt: c.generation(), now: t0)
        #expect(c.heartbeat(beat))
        #expect(c.host("db1", serial: "0a", now: t0 + .seconds(9)) != nil)
        #expect(c.host("db1", serial: "0a", now: t0 + HostAuthCache.maxAge) == nil, "no heartbeat back for maxAge: the listener may be dead")
        // The next heartbeat back makes the same row good again (no PostgreSQL read for it).
        #expect(c.heartbeat(c.nextHeartbeat(now: t0 + .seconds(10))))
        #expect(c.host("db1", serial: "0a", now: t0 + .seconds(12)) != nil)
        // What counts is when the heartbeat was sent, not when it came back; an older one never moves it back.
        let late = c.nextHeartbeat(now: t0 + .seconds(11))
        let later = c.nextHeartbeat(now: t0 + .seconds(13))
        #expect(c.heartbeat(later))
        #expect(c.heartbeat(late), "a heartbeat, even one out of turn")
        #expect(c.host("db1", serial: "0a", now: t0 + .seconds(22)) != nil)
        #expect(c.host("db1", serial: "0a", now: t0 + .seconds(23)) == nil)
    }

    @Test func onlyItsOwnHeartbeatsConfirmAndNoneFromBeforeAReconnect() {
        let c = HostAuthCache(), other = HostAuthCache()
        c.setLive(true)
        other.setLive(true)
        c.store(record(), readAt: c.generation())
        #expect(c.heartbeat(other.nextHeartbeat()), "another replica's heartbeat is recognised (not a host name)")
        #expect(c.host("db1", serial: "0a") == nil, "and confirms nothing here")
        #expect(!c.heartbeat("db1"), "a host name is an invalidation")
        #expect(c.heartbeat(HostAuthCache.heartbeatPrefix + "garbage"))
        let before = c.nextHeartbeat()
        c.setLive(false)
        c.setLive(true)
        #expect(c.heartbeat(before))
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") == nil, "a heartbeat sent before the reconnect proves nothing about the new connection")
        #expect(c.heartbeat(c.nextHeartbeat()))
        #expect(c.host("db1", serial: "0a") != nil)
    }
}
