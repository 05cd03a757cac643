import Foundation
import Synchronization
import Testing
import JITCore
@testable import JITAgent

/// Issue 13, findings 3, 4, 7 and 10: one user's flood never denies another user, and a session never
/// moves to a grant that came through a weaker approval path.
@Suite struct LimitsTests {
    typealias D = FakeDirectory

    @Test func pendingRequestsAreCappedPerUser() throws {
        let h = try Harness { $0.limits.pendingPerUser = 3 }
        let ids = try (0..<3).map { _ in try h.file() }
        let r = h.call(D.alice, "request", [("for", "60"), ("reason", "x")])
        #expect(r["code"] == "busy")
        #expect(r["message"]?.contains("limits.pending_per_user") == true)
        // Another user is untouched by alice's cap.
        #expect(h.call(D.carol, "request", [("for", "60"), ("reason", "x")]).isOK)
        _ = h.call(D.alice, "cancel", [("request", String(ids[0]))])
        #expect(h.call(D.alice, "request", [("for", "60"), ("reason", "x")]).isOK)
        // The module joins the pending request instead of filing another, so a capped user still waits.
        #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd"), ("file", "1")])["decision"] == "pending")
    }

    @Test func filingIsRateLimitedPerUser() throws {
        let h = try Harness { c in
            c.limits.requestsPerMinute = 3
            c.limits.pendingPerUser = 100
        }
        for _ in 0..<3 { _ = try h.file() }
        let r = h.call(D.alice, "request", [("for", "60"), ("reason", "x")])
        #expect(r["code"] == "busy")
        #expect(r["message"]?.contains("limits.requests_per_minute") == true)
        #expect(h.call(D.carol, "request", [("for", "60"), ("reason", "x")]).isOK)
        h.clock.advance(20)
        #expect(h.call(D.alice, "request", [("for", "60"), ("reason", "x")]).isOK)
        #expect(h.call(D.alice, "request", [("for", "60"), ("reason", "x")])["code"] == "busy")
    }

    @Test func nonRootChecksAreRateLimitedPerPeerAndRootsNever() throws {
        let h = try Harness { $0.limits.checksPerSecond = 5 }
        // A non-root check is refused (only the module asks it), but rate-limited before its refusal is recorded.
        for _ in 0..<5 { #expect(h.call(D.alice, "check", [("user", "alice"), ("service", "sshd")])["code"] == "unauthorized") }
        let r = h.call(D.alice, "check", [("user", "alice"), ("service", "sshd")])
        #expect(r["code"] == "busy")
        // carol's budget is her own; the module (root) asking about alice is never limited.
        #expect(h.call(D.carol, "check", [("user", "carol"), ("service", "sshd")])["code"] == "unauthorized")
        for _ in 0..<50 { #expect(h.call(D.root, "check", [("user", "alice"), ("service", "sshd")])["decision"] == "deny") }
        h.clock.advance(1)
        #expect(h.call(D.alice, "check", [("user", "alice"), ("service", "sshd")])["code"] == "unauthorized")
    }

    @Test func aFullJournalRefusesNonRootChecksAndRecordsWhatWasDropped() throws {
        let dir = TempDir()
        let store = try Store(path: dir.file("jit.db"))
        let journal = try CheckJournal(store: store)
        var c = Config()
        c.limits.journalBytes = 1
        let e = Engine(config: c, store: store, clock: SystemClock(), directory: FakeDirectory.standard, journal: journal)
        #expect(e.handle(Message("check", [("user", "alice"), ("service", "sshd")]), from: D.alice)["code"] == "unauthorized")
        #expect(journal.backlogBytes > 1)
        let refused = e.handle(Message("check", [("user", "alice"), ("service", "sshd")]), from: D.alice)
        #expect(refused["code"] == "busy")
        _ = e.handle(Message("check", [("user", "alice"), ("service", "sshd")]), from: D.alice)
        // The module's checks still go in: they are what lets people in.
        #expect(e.handle(Message("check", [("user", "carol"), ("service", "sshd")]), from: D.root)["decision"] == "deny")
        journal.ingest()
        #expect(journal.backlogBytes == 0)
        let dropped = try store.events(Store.AuditQuery(limit: 100)).filter { $0.kind == "audit.events_dropped" }
        #expect(dropped.count == 1)
        #expect(dropped.first?.user == "alice")
        #expect(dropped.first?.pairs.contains { $0.0 == "count" && $0.1 == "2" } == true)
        let checks = try store.events(Store.AuditQuery(limit: 100)).filter { $0.kind.hasPrefix("check.") }
        #expect(checks.map(\.user) == ["alice", "carol"])
    }

    @Test func theJournalIsIngestedInBoundedSlices() throws {
        let dir = TempDir()
        let store = try Store(path: dir.file("jit.db"))
        let journal = try CheckJournal(store: store, chunkBytes: 0)
        let data = [("service", "sshd"), ("decision", "deny"), ("why", String(repeating: "w", count: 100))]
        for _ in 0..<12_000 {
            try journal.append(at: Date(), kind: "check.deny", actor: "pam", user: "alice", requestID: nil, grantID: nil, data: data)
        }
        // A slice whose deadline has passed ingests one batch (at most 5000 events), and leaves the rest.
        let n = journal.ingest(until: Date())
        #expect(n > 0 && n <= 5000)
        #expect(journal.backlogBytes > 0)
        // At stop: one more batch at most; what is left stays for the next start.
        let m = journal.finish(within: 0)
        #expect(m > 0 && m <= 5000)
        #expect(journal.backlogBytes > 0)
        let reopened = try CheckJournal(store: store)
        #expect(reopened.backlogBytes == journal.backlogBytes)
        #expect(reopened.ingest() == 12_000 - n - m)
        #expect(reopened.backlogBytes == 0)
    }

    @Test func aSessionNeverMovesToAGrantThatCameThroughAWeakerPath() throws {
        let h = try Harness()
        let id = try h.file(seconds: 1200)
        _ = h.call(D.bob, "approve", [("id", String(id))])
        let s = h.call(D.root, "session_open", [("user", "alice"), ("service", "sshd"), ("tty", "ssh"), ("pid", "4242")])
        #expect(s["grant"] == "1")
        // An automatic rule's grant (renewed every 15 minutes, nobody approved it) also covers alice.
        let now = h.clock.now()
        let r = AccessRequest(user: "alice", uid: D.alice.uid, environment: "production", scope: .login, runAs: "", duration: 900,
                              reason: "auto", createdAt: now, expiresAt: now.addingTimeInterval(3600), rule: "auto-login")
        let auto = try h.engine.store.insertApproved(r, via: .auto, by: "rule:auto-login", at: now, noPassword: true, login: true) { _ in now.addingTimeInterval(900) }
        #expect(auto.grant != nil)
        _ = h.call(D.root, "revoke", [("id", "1")])
        #expect(h.sessions.entries == ["warn 1", "terminate 1 pid 4242"])
        #expect(try h.engine.store.openSessions(grantID: auto.grant!.id).isEmpty)
    }
}

/// The /proc side of ending a session, on this test process's own children.
@Suite struct ProcessSessionsTests {
    @Test func ptyDeviceNumbersMapToDevPts() {
        #expect(ProcessSessions.ptsPath(ttyNr: (136 << 8) | 3) == "/dev/pts/3")
        #expect(ProcessSessions.ptsPath(ttyNr: (137 << 8) | 1) == "/dev/pts/257")
        #expect(ProcessSessions.ptsPath(ttyNr: (4 << 8) | 1) == nil)
    }

    @Test func membersAreTheTreeAndItsSessionsButNotWhatTheTreeInherited() {
        // 100: sshd listener (sid 100); 200: per-connection monitor (setsid: sid 200); 300: the user's shell
        // (sid 300); 400: a nohup child reparented to init (sid 300); 500: someone else (sid 500).
        let procs = [
            ProcEntry(pid: 1, ppid: 0, sid: 1, ttyNr: 0, startTicks: 1, uid: 0),
            ProcEntry(pid: 100, ppid: 1, sid: 100, ttyNr: 0, startTicks: 10, uid: 0),
            ProcEntry(pid: 200, ppid: 100, sid: 200, ttyNr: 0, startTicks: 20, uid: 0),
            ProcEntry(pid: 250, ppid: 200, sid: 200, ttyNr: 0, startTicks: 21, uid: 1000),
            ProcEntry(pid: 300, ppid: 250, sid: 300, ttyNr: (136 << 8) | 2, startTicks: 22, uid: 1000),
            ProcEntry(pid: 400, ppid: 1, sid: 300, ttyNr: 0, startTicks: 30, uid: 1000),
            ProcEntry(pid: 500, ppid: 1, sid: 500, ttyNr: 0, startTicks: 31, uid: 1000),
        ]
        let s = Store.Session(id: 1, grantID: 1, user: "u", service: "sshd", rhost: "", tty: "ssh", pid: 200, openedAt: Date(), closedAt: nil,
                              warnedAt: nil, startTicks: 20)
        #expect(Set(ProcessSessions.members(of: s, in: procs).map(\.pid)) == [200, 250, 300, 400])
        // A reused PID (another start time) is not the session: nothing is touched.
        var reused = s
        reused.startTicks = 19
        #expect(ProcessSessions.members(of: reused, in: procs).isEmpty)
    }
}

/// A transport where one channel hangs until released.
final class HangingTransport: NotifyTransport {
    let release = DispatchSemaphore(value: 0)
    let sent = Mutex<[String]>([])
    func deliver(_ m: Store.OutboxRow, via c: NotifyChannel, timeout: Int64) -> DeliveryResult {
        if c.name == "hook" { _ = release.wait(timeout: .now() + 10) }
        sent.withLock { $0.append(c.name) }
        return .sent
    }
}

@Suite struct NotifyFairnessTests {
    /// Finding 10: one channel hangs; the other channel's messages are all delivered meanwhile, and the
    /// hung channel is not handed the same messages twice.
    @Test func aHungChannelNeverDelaysAnotherChannel() throws {
        let h = try NotifyWorkerTests.harness()
        for _ in 0..<3 { _ = try h.file() }
        let t = HangingTransport()
        let w = Notifications(engine: h.engine, transport: t, hostname: "db1", members: { _ in ["bob"] })
        w.runOnce(wait: false)
        let until = Date().addingTimeInterval(5)
        while t.sent.withLock({ $0.filter { $0 == "mail" }.count }) < 3 && Date() < until { Thread.sleep(forTimeInterval: 0.01) }
        #expect(t.sent.withLock { $0 } == ["mail", "mail", "mail"])
        // Another pass while "hook" is still busy starts nothing new for it.
        w.runOnce(wait: false)
        for _ in 0..<3 { t.release.signal() }
        let until2 = Date().addingTimeInterval(5)
        while t.sent.withLock({ $0.count }) < 6 && Date() < until2 { Thread.sleep(forTimeInterval: 0.01) }
        w.runOnce()
        #expect(t.sent.withLock { $0.filter { $0 == "hook" }.count } == 3)
        // A channel's thread marks a row sent just after its transport returns: wait for that (bounded), as above.
        let until3 = Date().addingTimeInterval(5)
        while try !h.engine.store.outboxRows().allSatisfy({ $0.state == "sent" }) && Date() < until3 { Thread.sleep(forTimeInterval: 0.01) }
        #expect(try h.engine.store.outboxRows().allSatisfy { $0.state == "sent" })
    }
}
