import Foundation
import Testing
@testable import JITCore

/// The auditor's side of sealing on a synthetic trail: what verifies, and what each kind of tampering
/// reports. (The end-to-end tests do the same against jitd's real trail with sqlite3 as the attacker.)
@Suite struct AuditSealTests {
    let key = SealKey(seed: Array(0..<32), start: 1_800_000_000, interval: 60)

    /// A trail builder that seals the way jitd does.
    struct Trail {
        let key: SealKey
        var events: [AuditEvent] = []
        var state: SealState
        var since: Int64 = 0
        init(key: SealKey) {
            self.key = key
            state = SealState(key)
            add(Sealing.setupKind, at: key.start * 1000, data: [("setup", key.setupID)])
            since = 0
        }
        mutating func add(_ kind: String, at: Int64, data: [(String, String)] = []) {
            let id = Int64(events.count + 1)
            let prev = events.last?.hash ?? AuditChain.genesis
            let d = AuditChain.kv(data)
            let h = AuditChain.hash(id: id, at: at, kind: kind, actor: "jitd", user: "", requestID: nil, grantID: nil, data: d, prevHash: prev)
            events.append(AuditEvent(id: id, at: at, kind: kind, actor: "jitd", user: "", requestID: nil, grantID: nil, data: d, prevHash: prev, hash: h))
            since += 1
        }
        /// A seal at `at` (ms); closing when the epoch at that time is past the key's.
        mutating func seal(at: Int64, why: String = "interval") {
            let slot = key.epoch(atMillis: at)
            let closing = slot > state.epoch
            let s = Seal(setup: key.setupID, epoch: state.epoch, next: closing ? slot : state.epoch, why: why,
                         headID: events.last!.id, head: events.last!.hash, count: since, at: at)
            add(Sealing.eventKind, at: at, data: s.pairs(tag: Sealing.tag(key: state.key, s)))
            since = 0
            if closing { state = state.evolved(to: slot) }
        }
    }

    func ms(_ seconds: Int64) -> Int64 { (key.start + seconds) * 1000 }

    func walk(_ events: [AuditEvent], now: Int64) -> SealReport {
        var w = SealedWalk(key: key)
        for e in events where !w.step(e) { break }
        return w.finish(now: Timestamps.date(millis: now))
    }

    func threeEpochs() -> Trail {
        var t = Trail(key: key)
        for epoch in Int64(0)..<3 {
            for i in Int64(0)..<4 { t.add("check.sudo", at: ms(epoch * 60 + i * 10 + 1)) }
            t.seal(at: ms((epoch + 1) * 60 + 1))
        }
        return t
    }

    @Test func bothFormsOfTheKeyReadBackAndATypoFailsTheChecksum() throws {
        #expect(try SealKey.parse(key.longForm) == key)
        #expect(try SealKey.parse(key.shortForm) == key)
        #expect(try SealKey.parse(key.shortForm.lowercased().replacingOccurrences(of: "-", with: " ")) == key)
        #expect(key.shortForm.split(separator: "-").count == 11)
        var typo = Array(key.shortForm)
        typo[3] = typo[3] == "A" ? "B" : "A"
        #expect(throws: JITError.self) { try SealKey.parse(String(typo)) }
        #expect(throws: JITError.self) { try SealKey.parse("abcd/1-2") }
    }

    @Test func theKeyFileReadsBackAndATornFileDoesNot() {
        let s = SealState(key).evolved(to: 5)
        #expect(SealState.parse(s.text) == s)
        #expect(s.key == Sealing.evolve(key.firstKey, steps: 5) && s.key != key.firstKey)
        #expect(SealState.parse(String(s.text.dropLast(10))) == nil)
        #expect(SealState.parse(String(repeating: "\0", count: s.text.utf8.count)) == nil)
    }

    @Test func aCleanTrailVerifiesAndReportsTheUnsealedTail() {
        var t = threeEpochs()
        t.add("request.filed", at: ms(185))
        let r = walk(t.events, now: ms(190))
        #expect(r.problem == nil)
        #expect(r.seals == 3 && r.lastSeal?.epoch == 2 && r.unsealed == 1)
        #expect(r.unsealedSince == Timestamps.date(millis: ms(185)))
    }

    @Test func aForgedSealIsNamedByEpoch() {
        var t = threeEpochs()
        // Re-MAC epoch 1's seal with the key of epoch 2 (what a root holding the current key has).
        let i = t.events.firstIndex { Seal.from($0)?.seal.epoch == 1 }!
        var (s, _) = Seal.from(t.events[i])!
        s.count += 0
        let forged = Sealing.tag(key: Sealing.evolve(key.firstKey, steps: 2), s)
        var e = t.events[i]
        e.data = AuditChain.kv(s.pairs(tag: forged))
        e.hash = AuditChain.hash(of: e)
        t.events[i] = e
        for j in (i + 1)..<t.events.count {
            t.events[j].prevHash = t.events[j - 1].hash
            t.events[j].hash = AuditChain.hash(of: t.events[j])
        }
        let r = walk(t.events, now: ms(190))
        #expect(r.badEpoch == 1 && r.problem?.contains("forged") == true)
    }

    @Test func aMissingEpochAndACutTailAreNamedWithTheirTime() {
        let t = threeEpochs()
        // Drop the seal of epoch 1 and everything after: the tail is cut at epoch 1.
        let cut = Array(t.events.prefix { Seal.from($0)?.seal.epoch != 1 })
        let r = walk(cut, now: ms(190))
        #expect(r.badEpoch == 1 && r.problem?.contains("no closing seal") == true)
        #expect(r.problem?.contains(Timestamps.format(key.begins(1))) == true)
        // Within the epoch (and its grace) the same trail is fine: the tail is only unsealed.
        #expect(walk(cut, now: ms(100)).problem == nil)
    }

    @Test func aStopSealKeepsTheKeyAndAResumeSealDeclaresTheDowntime() {
        var t = Trail(key: key)
        t.add("agent.start", at: ms(1))
        t.seal(at: ms(30), why: "stop")
        #expect(t.state.epoch == 0)
        t.add("agent.start", at: ms(600))
        t.seal(at: ms(600), why: "resume")
        #expect(t.state.epoch == 10)
        t.add("check.sudo", at: ms(610))
        let r = walk(t.events, now: ms(620))
        #expect(r.problem == nil && r.seals == 2 && r.unsealed == 1)
    }

    @Test func aLoneArchiveVerifiesFromItsFirstSeal() {
        let events = threeEpochs().events
        // An archive that starts after epoch 0's seal: no setup event in it.
        let cut = Array(events.drop { Seal.from($0)?.seal.epoch != 0 }.dropFirst())
        var w = SealedWalk(key: key, midstream: true)
        for e in cut where !w.step(e) { break }
        let r = w.finish(now: Timestamps.date(millis: ms(190)))
        #expect(r.problem == nil && r.seals == 2)
        // Without midstream the missing setup is named.
        var strict = SealedWalk(key: key)
        for e in cut where !strict.step(e) { break }
        #expect(strict.finish(now: Timestamps.date(millis: ms(190))).problem?.contains("no setup event") == true)
    }

    @Test func anotherHostsKeyFindsNoSetup() {
        let other = SealKey(seed: Array(repeating: 7, count: 32), start: key.start, interval: 60)
        var w = SealedWalk(key: other)
        for e in threeEpochs().events where !w.step(e) { break }
        #expect(w.finish(now: Timestamps.date(millis: ms(190))).problem?.contains("no setup event") == true)
    }
}
