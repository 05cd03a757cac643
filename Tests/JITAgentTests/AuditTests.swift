import Foundation
import GRDB
import Testing
import JITCore
@testable import JITAgent

@Suite struct AuditTests {
    /// A full story: request → approval → grant → session → check → expiry.
    func story() throws -> Harness {
        let h = try Harness()
        let id = try h.file(scope: "sudo", seconds: 60)
        _ = h.call(D.bob, "approve", [("id", String(id)), ("comment", "ok")])
        _ = h.call(D.root, "session_open", [("user", "alice"), ("service", "sshd"), ("rhost", "10.0.0.1"), ("tty", "pts/1"), ("pid", "999")])
        _ = h.call(D.root, "check", [("user", "alice"), ("service", "sudo"), ("sudo_mode", "run"), ("runas", "root"), ("command", "/usr/bin/id"), ("rhost", "10.0.0.1")])
        _ = h.call(D.root, "session_close", [("user", "alice"), ("service", "sshd"), ("pid", "999")])
        h.clock.advance(61)
        h.engine.expireDue()
        return h
    }

    @Test func everyStepOfTheStoryIsRecordedInOrder() throws {
        let h = try story()
        let kinds = try h.engine.store.events(Store.AuditQuery()).map(\.kind)
        #expect(kinds == ["request.filed", "approval.recorded", "request.approved", "grant.started", "session.opened", "check.sudo",
                          "session.closed", "grant.expired"])
        let evs = try h.engine.store.events(Store.AuditQuery())
        let filed = evs[0].pairs.reduce(into: [String: String]()) { $0[$1.0] = $1.1 }
        #expect(filed["reason"] == "test" && filed["scope"] == "sudo" && filed["duration"] == "60")
        #expect(evs[1].actor == "bob" && evs[1].pairs.first { $0.0 == "comment" }?.1 == "ok")
        #expect(evs[5].pairs.contains { $0 == ("command", "/usr/bin/id") })
        #expect(evs[7].grantID == 1 && evs[7].actor == "jitd")
        let walk = try h.engine.store.verifyAudit()
        #expect(walk.problem == nil)
        #expect(walk.count == 8)
    }

    @Test func refusalsAndCancellationsAreRecorded() throws {
        let h = try Harness()
        _ = h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])
        let id = try h.file()
        _ = h.call(D.alice, "cancel", [("request", String(id))])
        let kinds = try h.engine.store.events(Store.AuditQuery()).map(\.kind)
        #expect(kinds == ["check.deny", "request.filed", "request.cancelled"])
    }

    func tamper(_ h: Harness, _ sql: String) throws -> AuditChain.Walk {
        try h.engine.store.pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA foreign_keys = OFF")
            try db.execute(sql: sql)
        }
        return try h.engine.store.verifyAudit()
    }

    @Test func aChangedEventIsNamed() throws {
        let w = try tamper(try story(), "UPDATE audit SET actor = 'mallory' WHERE id = 3")
        #expect(w.badID == 3)
        #expect(w.problem?.contains("changed") == true)
    }

    @Test func aRemovedEventIsNamed() throws {
        let w = try tamper(try story(), "DELETE FROM audit WHERE id = 4")
        #expect(w.badID == 4)
        #expect(w.problem?.contains("missing") == true)
    }

    @Test func anInsertedEventIsNamed() throws {
        let h = try story()
        // Made to look right: a hash that matches its own content, but it cannot follow the chain.
        let e = try #require(try h.engine.store.events(Store.AuditQuery()).last)
        let forged = AuditChain.hash(id: e.id + 1, at: e.at, kind: "grant.started", actor: "bob", user: "mallory", requestID: nil, grantID: 99,
                                     data: "", prevHash: AuditChain.genesis)
        let w = try tamper(h, "INSERT INTO audit VALUES (\(e.id + 1), \(e.at), 'grant.started', 'bob', 'mallory', NULL, 99, '', '\(AuditChain.genesis)', '\(forged)')")
        #expect(w.badID == e.id + 1)
        #expect(w.problem?.contains("does not follow") == true)
    }

    @Test func swappedEventsAreNamed() throws {
        let h = try story()
        let w = try tamper(h, """
            UPDATE audit SET id = -1 WHERE id = 5; UPDATE audit SET id = 5 WHERE id = 6; UPDATE audit SET id = 6 WHERE id = -1;
            """)
        #expect(w.badID == 5)
    }

    @Test func theChainContinuesAcrossAnArchiveCut() throws {
        let h = try story()
        let dir = TempDir()
        var s = AuditSettings()
        s.retention = 86_400
        s.archiveDir = dir.path
        let trail = AuditTrail(store: h.engine.store, settings: s, clock: h.clock, logger: h.engine.logger)
        #expect(trail.archive() == nil)  // nothing old enough yet
        h.clock.advance(2 * 86_400)
        _ = h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])
        let file = try #require(trail.archive())
        #expect(try h.engine.store.events(Store.AuditQuery()).map(\.id) == [9])
        let live = try h.engine.store.verifyAudit()
        #expect(live.problem == nil && live.count == 1 && live.lastID == 9)
        let arch = try AuditArchive.verify(path: file)
        #expect(arch.problem == nil && arch.count == 8)
        let anchors = try h.engine.store.anchors()
        #expect(anchors.first?.hash == arch.lastHash)
        // A new event after the cut still chains from the anchor.
        _ = try h.file()
        #expect(try h.engine.store.verifyAudit().problem == nil)
    }

    @Test func auditReadingIsAuthorised() throws {
        let h = try story()
        _ = try h.file(D.carol)
        #expect(h.call(D.alice, "audit").records.allSatisfy { $0.first { $0.0 == "user" }?.1 == "alice" })
        #expect(h.call(D.alice, "audit", [("user", "carol")])["code"] == "unauthorized")
        #expect(h.call(D.bob, "audit", [("user", "carol")]).records.count == 1)
        #expect(h.call(D.mallory, "audit").records.isEmpty)
        #expect(h.call(D.mallory, "audit_verify")["code"] == "unauthorized")
        #expect(h.call(D.bob, "audit_verify")["ok"] == "1")
        #expect(h.call(D.alice, "note", [("kind", "exempt"), ("user", "root")])["code"] == "unauthorized")
        #expect(h.call(D.root, "note", [("kind", "exempt"), ("user", "ops"), ("service", "sshd"), ("why", "member of exempt_group")]).isOK)
        #expect(try h.engine.store.events(Store.AuditQuery(user: "ops")).map(\.kind) == ["pam.exempt"])
    }

    @Test func syslogLinesAreRFC5424WithEscapedStructuredData() throws {
        let h = try Harness()
        _ = h.call(D.alice, "request", [("for", "60"), ("reason", "quote \" bracket ] slash \\ end")])
        let e = try #require(try h.engine.store.events(Store.AuditQuery()).first)
        let trail = AuditTrail(store: h.engine.store, settings: AuditSettings(), clock: h.clock, logger: h.engine.logger)
        let line = trail.syslogLine(e)
        #expect(line.hasPrefix("<85>1 "))
        #expect(line.contains(" jitd "))
        #expect(line.contains(" request.filed [jit@32473 id=\"1\" "))
        #expect(line.contains(#"reason="quote \" bracket \] slash \\ end""#))
        #expect(line.contains("hash=\"\(e.hash)\"]"))
    }
}

@Suite struct PolicyAuditTests {
    @Test func breakGlassEscalationExtensionAndMFAAreAudited() throws {
        let h = try Harness(yaml: PolicyEngineTests.yaml)
        _ = h.call(D.ivan, "request", [("for", "600"), ("reason", "db down"), ("scope", "sudo"), ("break_glass", "1")])
        let bg = try h.engine.store.events(Store.AuditQuery(user: "ivan"))
        #expect(bg.map(\.kind).contains("breakglass.bypass"))
        let approved = try #require(bg.first { $0.kind == "request.approved" })
        #expect(approved.pairs.contains { $0 == ("approved_via", "break-glass") })
        #expect(approved.pairs.contains { $0 == ("bypass", "break-glass") })
        // A two-approver request left undecided escalates to the next tier; the escalation is recorded.
        let id = try h.file(D.judy, scope: "sudo", seconds: 3600)
        h.clock.advance(31 * 60)
        h.engine.expireDue()
        let esc = try h.engine.store.events(Store.AuditQuery(user: "judy")).filter { $0.kind == "request.escalated" }
        #expect(esc.count == 1 && esc[0].requestID == id)
        #expect(try h.engine.store.verifyAudit().problem == nil)
    }
}

@Suite struct CheckJournalTests {
    @Test func checksGoThroughTheJournalIntoTheChainExactlyOnce() throws {
        let h = try Harness()
        let j = try CheckJournal(store: h.engine.store, rotateBytes: 300)
        for i in 0..<5 {
            try j.append(at: h.clock.now(), kind: "check.sudo", actor: "pam", user: "alice", requestID: nil, grantID: Int64(i),
                         data: [("service", "sudo"), ("command", "/usr/bin/id\tx\n%y")])
        }
        // A torn last line (the agent killed inside a write) is never ingested.
        let path = "\((h.engine.store.path as NSString).deletingLastPathComponent)/checks.0.journal"
        let fh = try #require(FileHandle(forWritingAtPath: path))
        fh.seekToEndOfFile()
        fh.write(Data("123\tcheck.sudo\tpam".utf8))
        try fh.close()
        #expect(j.ingest() == 5)
        #expect(j.ingest() == 0)
        let evs = try h.engine.store.events(Store.AuditQuery())
        #expect(evs.count == 5)
        #expect(evs[0].pairs.contains { $0 == ("command", "/usr/bin/id\tx\n%y") })
        #expect(try h.engine.store.verifyAudit().problem == nil)
        // A new journal object (a restarted agent) continues from the stored position: nothing twice.
        let j2 = try CheckJournal(store: h.engine.store, rotateBytes: 300)
        #expect(j2.ingest() == 0)
        try j2.append(at: h.clock.now(), kind: "check.login", actor: "pam", user: "bob", requestID: nil, grantID: nil, data: [])
        #expect(j2.ingest() == 1)
        #expect(try h.engine.store.events(Store.AuditQuery()).count == 6)
    }

    @Test func concurrentIngestsNeverChainALineTwice() throws {
        let h = try Harness()
        let j = try CheckJournal(store: h.engine.store)
        for i in 0..<2000 {
            try j.append(at: h.clock.now(), kind: "check.sudo", actor: "pam", user: "u\(i % 7)", requestID: nil, grantID: nil, data: [])
        }
        let threads = (0..<4).map { _ in Thread { j.ingest() } }
        threads.forEach { $0.start() }
        j.ingest()
        while threads.contains(where: { $0.isExecuting || !$0.isFinished }) { Thread.sleep(forTimeInterval: 0.01) }
        #expect(try h.engine.store.events(Store.AuditQuery(limit: 5000)).count == 2000)
        #expect(try h.engine.store.verifyAudit().problem == nil)
    }

    @Test func fullyIngestedFilesRotateAway() throws {
        let h = try Harness()
        let dir = (h.engine.store.path as NSString).deletingLastPathComponent
        let j = try CheckJournal(store: h.engine.store, rotateBytes: 200)
        for round in 0..<4 {
            for _ in 0..<5 {
                try j.append(at: h.clock.now(), kind: "check.sudo", actor: "pam", user: "u\(round)", requestID: nil, grantID: nil, data: [])
            }
            j.ingest()
        }
        #expect(try h.engine.store.events(Store.AuditQuery()).count == 20)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".journal") }
        #expect(files.count == 1)
        #expect(try h.engine.store.verifyAudit().problem == nil)
    }

    @Test func theEngineRecordsChecksThroughItsJournal() throws {
        let h = try Harness()
        let j = try CheckJournal(store: h.engine.store)
        let e = Engine(config: h.engine.config, store: h.engine.store, clock: h.clock, directory: D.standard, journal: j)
        _ = e.handle(Message("check", [("user", "alice"), ("service", "sshd")]), from: D.root)
        #expect(try h.engine.store.events(Store.AuditQuery()).isEmpty)
        // Reading the trail ingests first.
        let r = e.handle(Message("audit"), from: D.root)
        #expect(r.records.count == 1)
    }
}
