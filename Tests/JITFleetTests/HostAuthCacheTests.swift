import Foundation
import Testing
@testable import JITServer

/// The replica's memory of checked hosts may only ever say "yes, as PostgreSQL said a moment ago": never while
/// the LISTEN connection (which brings revocations) is down, never past its age, never after an invalidation
/// that raced the read, and never to refuse.
@Suite struct HostAuthCacheTests {
    func record(_ name: String = "db1", serial: String = "0a", previous: String? = nil, revoked: Date? = nil) -> HostRecord {
        HostRecord(name: name, environment: "production", labels: ["db"], serial: serial, previousSerial: previous,
                   notAfter: Date().addingTimeInterval(3600), enrolledAt: Date(), revokedAt: revoked, lastSeen: nil)
    }

    @Test func nothingIsKeptOrAnsweredWhileTheListenerIsDown() {
        let c = HostAuthCache()
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") == nil, "not live: a revocation could be missed")
        c.setLive(true)
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a")?.name == "db1")
        c.setLive(false)
        #expect(c.host("db1", serial: "0a") == nil, "the listener went away: everything is asked again")
        c.setLive(true)
        #expect(c.host("db1", serial: "0a") == nil, "coming back does not bring old rows back")
    }

    @Test func onlyAcceptsAndOnlyTheCurrentOrPreviousSerial() {
        let c = HostAuthCache()
        c.setLive(true)
        c.store(record(serial: "0b", previous: "0a"), readAt: c.generation())
        #expect(c.host("db1", serial: "0b") != nil)
        #expect(c.host("db1", serial: "0a") != nil, "the certificate before the renewal still works until it expires")
        #expect(c.host("db1", serial: "0c") == nil, "another serial is PostgreSQL's to judge")
        #expect(c.host("db2", serial: "0b") == nil)
        c.store(record("db3", revoked: Date()), readAt: c.generation())
        #expect(c.host("db3", serial: "0a") == nil, "a revoked row never answers from memory")
    }

    @Test func anInvalidationDuringTheReadWins() {
        let c = HostAuthCache()
        c.setLive(true)
        let before = c.generation()
        c.invalidate("db1")  // jit_hosts arrived while the row was being read
        c.store(record(), readAt: before)
        #expect(c.host("db1", serial: "0a") == nil, "the row read before the revocation's notice is not kept")
        c.store(record(), readAt: c.generation())
        #expect(c.host("db1", serial: "0a") != nil)
        c.invalidate("db1")
        #expect(c.host("db1", serial: "0a") == nil)
    }

    @Test func rowsAgeOut() {
        let c = HostAuthCache()
        c.setLive(true)
        let t0 = ContinuousClock.now
        c.store(record(), readAt: c.generation(), now: t0)
        #expect(c.host("db1", serial: "0a", now: t0 + .seconds(9)) != nil)
        #expect(c.host("db1", serial: "0a", now: t0 + HostAuthCache.maxAge) == nil, "at most maxAge without asking PostgreSQL")
    }
}
