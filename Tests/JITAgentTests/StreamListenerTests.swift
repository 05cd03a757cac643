import Foundation
import JITFleet
import Logging
import Testing
@testable import JITServer

/// The replica's LISTEN connection against a real PostgreSQL: its own heartbeats come back through it (so the
/// host cache may answer), and a host's revocation committed elsewhere drops that host's row.
@Suite struct StreamListenerTests {
    func until(_ seconds: Double, _ what: () -> Bool) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if what() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return what()
    }

    @Test func heartbeatsComeBackAndARevocationDropsTheRow() async throws {
        guard let pg = try await TestPostgres.freshDatabase() else { return }
        defer { pg.close() }
        let db = try await pg.store().db
        try await db.client.query("INSERT INTO hosts (name, environment, labels, cert_serial, not_after) VALUES ('db1', 'production', '{db}', '0a', now() + interval '1 hour')")
        let hub = StreamHub(db: db, limits: StreamLimits(), logger: Logger(label: "test"))
        let listener = Task { try await StreamListener(hub: hub, db: db, retention: 86_400, logger: Logger(label: "test")).run() }
        defer { listener.cancel() }
        #expect(!db.hostCache.answersFromMemory(), "nothing answers before the first heartbeat is back")
        #expect(await until(5) { db.hostCache.answersFromMemory() }, "the replica's own heartbeat came back through LISTEN")
        #expect(try await db.authenticate(name: "db1", serial: "0a").name == "db1")
        #expect(db.hostCache.host("db1", serial: "0a") != nil, "kept: the next call needs no PostgreSQL read")
        // Revoked by another replica (or the CLI): the notification drops the row, and PostgreSQL refuses.
        try await db.client.query("UPDATE hosts SET revoked_at = now() WHERE name = 'db1'")
        #expect(await until(5) { db.hostCache.host("db1", serial: "0a") == nil })
        await #expect(throws: FleetError.self) { _ = try await db.authenticate(name: "db1", serial: "0a") }
        // The heartbeats go on: two seconds later the cache still answers for others.
        try await Task.sleep(for: HostAuthCache.heartbeatEvery * 2)
        #expect(db.hostCache.answersFromMemory(), "heartbeats keep coming back")
    }
}
