import Foundation
import Testing
import JITCore
@testable import JITAgent

/// jitd's side of sealing: setup, seals at epoch ends, archives that end at a seal, and start-up after a
/// crash or a restored key file (never sealing again with a key whose epoch is sealed).
@Suite struct SealerTests {
    func setUp(_ h: Harness) throws -> SealKey {
        let r = h.call(D.root, "audit_setup_keys")
        #expect(r.isOK, "\(r)")
        return try SealKey.parse(r["verify_key_short"] ?? "")
    }

    func verify(_ h: Harness, _ key: SealKey) throws -> SealReport {
        var w = SealedWalk(key: key)
        try AuditReader.walk(database: h.engine.store.path, archiveDir: nil) { w.step($0) }
        return w.finish(now: h.clock.now())
    }

    func kinds(_ h: Harness) throws -> [String] { try h.engine.store.events(Store.AuditQuery(limit: 10_000)).map(\.kind) }

    func restart(_ h: Harness) -> AuditSealer {
        let s = AuditSealer(store: h.engine.store, path: h.engine.sealer.path, clock: h.clock, logger: h.engine.logger)
        s.start()
        return s
    }

    @Test func onlyRootSetsUpAndTheVerifyKeyIsNotKeptOnTheHost() throws {
        let h = try Harness()
        #expect(h.call(D.bob, "audit_setup_keys")["code"] != nil)
        let key = try setUp(h)
        #expect(h.engine.sealer.status?.epoch == 0)
        let text = try String(contentsOfFile: h.engine.sealer.path, encoding: .utf8)
        #expect(!text.contains(Sealing.hex(key.seed)))
        #expect(h.call(D.root, "audit_setup_keys")["message"]?.contains("--force") == true)
        #expect(h.call(D.root, "audit_setup_keys", [("force", "1")]).isOK)
    }

    @Test func sealsAtEpochEndsAndAcrossAnArchiveVerifyWithTheKey() throws {
        let h = try Harness { $0.audit.sealInterval = 900 }
        let key = try setUp(h)
        _ = try h.file()
        h.clock.advance(901)
        #expect(h.engine.sealer.tick() != nil)
        #expect(h.engine.sealer.status?.epoch == 1)
        _ = try h.file(D.carol)
        h.clock.advance(2 * 86_400)
        h.engine.sealer.tick()
        _ = try h.file()
        var s = AuditSettings()
        s.retention = 86_400
        let dir = TempDir()
        s.archiveDir = dir.path
        let trail = AuditTrail(store: h.engine.store, settings: s, clock: h.clock, logger: h.engine.logger)
        let file = try #require(trail.archive(sealer: h.engine.sealer))
        #expect(try AuditArchive.events(path: file).last?.kind == Sealing.eventKind)
        _ = try h.file(D.carol)  // after the archive's seal: not yet sealed
        let r = try verify(h, key)
        #expect(r.problem == nil, "\(r.problem ?? "")")
        #expect(r.seals >= 3 && r.unsealed >= 1)
    }

    @Test func aCrashBetweenTheSealAndTheNewKeyIsFinishedAtStart() throws {
        let h = try Harness()
        let key = try setUp(h)
        let before = try String(contentsOfFile: h.engine.sealer.path, encoding: .utf8)
        h.clock.advance(901)
        h.engine.sealer.tick()
        // As if killed after the seal of epoch 0 was committed, before the key moved.
        try AuditSealer.write(SealState.parse(before)!, to: h.engine.sealer.path)
        let s = restart(h)
        #expect(s.status?.epoch == 1)
        #expect(try String(contentsOfFile: s.path, encoding: .utf8) != before)
        #expect(try !kinds(h).contains("audit.seal_key_rollback"))
        h.clock.advance(900)
        s.tick()
        #expect(try verify(h, key).problem == nil)
    }

    @Test func aCrashAfterTheOldKeyWasDestroyedAdoptsTheNewOne() throws {
        let h = try Harness()
        let key = try setUp(h)
        let next = SealState.parse(try String(contentsOfFile: h.engine.sealer.path, encoding: .utf8))!.evolved(to: 1)
        h.clock.advance(901)
        _ = try h.engine.store.appendSeal(at: h.clock.now()) { id, head, count in
            let s = Seal(setup: key.setupID, epoch: 0, next: 1, why: "interval", headID: id, head: head, count: count, at: Timestamps.millis(h.clock.now()))
            return (s, Sealing.tag(key: key.firstKey, s))
        }
        try AuditSealer.write(next, to: h.engine.sealer.path + ".new")
        AuditSealer.destroy(h.engine.sealer.path)
        let s = restart(h)
        #expect(s.status?.epoch == 1)
        #expect(!FileManager.default.fileExists(atPath: s.path + ".new"))
        #expect(try verify(h, key).problem == nil)
    }

    @Test func aKeyFileRestoredFromAnOldCopyIsNeverUsedAgain() throws {
        let h = try Harness()
        let key = try setUp(h)
        let old = try String(contentsOfFile: h.engine.sealer.path, encoding: .utf8)
        for _ in 0..<3 {
            h.clock.advance(900)
            h.engine.sealer.tick()
        }
        try AuditSealer.write(SealState.parse(old)!, to: h.engine.sealer.path)
        let s = restart(h)
        #expect(try kinds(h).contains("audit.seal_key_rollback"))
        #expect((s.status?.epoch ?? 0) >= 3)
        h.clock.advance(900)
        s.tick()
        #expect(try verify(h, key).problem == nil)
    }

    @Test func aKeyFileOthersCanReadTurnsSealingOff() throws {
        let h = try Harness()
        _ = try setUp(h)
        chmod(h.engine.sealer.path, 0o644)
        let s = restart(h)
        #expect(s.status == nil)
        #expect(s.offReason?.contains("0600") == true)
        #expect(try kinds(h).contains("audit.seal_off"))
        #expect(s.seal("manual") == nil)
    }
}
