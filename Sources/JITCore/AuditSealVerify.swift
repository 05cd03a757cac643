public import Foundation

/// The auditor's walk: the hash chain event by event (as `AuditChain.Walk`), and every seal of the key's
/// setup checked against the key of its epoch, the events before it, and the seal before it. Streams: it
/// keeps one epoch key and a few counters, whatever the length of the trail.
public struct SealedWalk: Sendable {
    public let key: SealKey
    public let setupID: String
    public private(set) var chain: AuditChain.Walk
    var started = false
    /// The key of epoch `keyEpoch` (derived forwards only).
    var epochKey: [UInt8]
    var keyEpoch: Int64 = 0
    /// The setup event of this key was seen (or, for a lone archive, its first seal).
    public private(set) var setupSeen = false
    /// Another key's setup came after ours: its time bounds ours, and nothing after it is checked.
    public private(set) var replacedAt: (id: Int64, at: Int64)? = nil
    /// The epoch the next seal must carry: the previous seal's `next` (0 after the setup event).
    var expect: Int64 = 0
    var sinceSeal: Int64 = 0
    var firstUnsealedAt: Int64? = nil
    var setupAt: Int64 = 0
    public private(set) var seals: Int64 = 0
    public private(set) var lastSeal: Seal? = nil
    public private(set) var lastSealID: Int64 = 0
    public private(set) var beforeSetup: Int64 = 0
    public private(set) var problem: String? = nil
    public private(set) var badID: Int64? = nil
    public private(set) var badEpoch: Int64? = nil
    /// Checking one archive on its own: its first seal starts the walk instead of the setup event.
    let midstream: Bool

    public init(key: SealKey, midstream: Bool = false) {
        self.key = key
        setupID = key.setupID
        chain = AuditChain.Walk()
        epochKey = key.firstKey
        self.midstream = midstream
    }

    /// How long after its epoch ends the seal closing it may come (jitd wakes at the boundary; a loaded
    /// machine or a restart delays it).
    public static func grace(_ interval: Int64) -> Int64 { max(5, min(interval, 300)) }

    func span(_ epoch: Int64) -> String {
        "\(Timestamps.format(key.begins(epoch))) to \(Timestamps.format(key.begins(epoch + 1)))"
    }

    /// "epoch 3 (FROM to TO) has" / "epochs 3 to 5 (FROM to TO) have".
    func epochs(_ a: Int64, _ b: Int64) -> String {
        a == b ? "epoch \(a) (\(span(a))) has"
            : "epochs \(a) to \(b) (\(Timestamps.format(key.begins(a))) to \(Timestamps.format(key.begins(b + 1)))) have"
    }

    mutating func fail(_ message: String, id: Int64?, epoch: Int64?) -> Bool {
        problem = message
        badID = id
        badEpoch = epoch
        return false
    }

    /// The next event in id order. False at the first problem.
    public mutating func step(_ e: AuditEvent) -> Bool {
        guard problem == nil else { return false }
        if !started {
            started = true
            chain = e.id == 1 ? AuditChain.Walk() : AuditChain.Walk(anchorID: e.id - 1, anchorHash: e.prevHash)
        }
        let headID = chain.lastID, headHash = chain.lastHash
        if !chain.step(e) {
            let where_ = setupSeen && replacedAt == nil ? ", in epoch \(expect) (\(span(expect)))" : ""
            return fail((chain.problem ?? "the chain breaks at event \(e.id)") + where_, id: chain.badID, epoch: setupSeen ? expect : nil)
        }
        guard replacedAt == nil else { return true }
        if e.kind == Sealing.setupKind {
            let id = e.pairs.first { $0.0 == "setup" }?.1
            if id == setupID && !setupSeen {
                setupSeen = true
                setupAt = e.at
                expect = 0
                sinceSeal = 0
                firstUnsealedAt = nil
            } else if setupSeen {
                replacedAt = (e.id, e.at)
            }
            return true
        }
        if e.kind == Sealing.eventKind, let (s, tag) = Seal.from(e), s.setup == setupID {
            if !setupSeen {
                guard midstream else {
                    return fail("seal at event \(e.id) names this key, but the trail has no setup event for it before: the events before it were cut",
                                id: e.id, epoch: s.epoch)
                }
                setupSeen = true
                setupAt = e.at
                expect = s.epoch
                sinceSeal = s.count
            }
            return checkSeal(s, tag: tag, id: e.id, headID: headID, headHash: headHash)
        } else if e.kind == Sealing.eventKind && setupSeen {
            return fail("event \(e.id) is a seal that does not parse or names another key: a seal was forged", id: e.id, epoch: expect)
        }
        if setupSeen {
            sinceSeal += 1
            if firstUnsealedAt == nil { firstUnsealedAt = e.at }
        } else {
            beforeSetup += 1
        }
        return true
    }

    mutating func checkSeal(_ s: Seal, tag: String, id: Int64, headID: Int64, headHash: String) -> Bool {
        if s.epoch < expect {
            return fail("the seal at event \(id) is for epoch \(s.epoch), but epoch \(expect) comes next: a seal was replayed, reordered, or made with an old key",
                        id: id, epoch: s.epoch)
        }
        if s.epoch > expect {
            return fail("\(epochs(expect, s.epoch - 1)) no seal: a seal was deleted or the trail cut (the next seal, event \(id), is for epoch \(s.epoch))",
                        id: id, epoch: expect)
        }
        if s.next < s.epoch {
            return fail("the seal of epoch \(s.epoch) (event \(id)) moves its key back to epoch \(s.next): it was forged", id: id, epoch: s.epoch)
        }
        if s.epoch > keyEpoch {
            epochKey = Sealing.evolve(epochKey, steps: s.epoch - keyEpoch)
            keyEpoch = s.epoch
        }
        guard Sealing.tag(key: epochKey, s) == tag else {
            return fail("the seal of epoch \(s.epoch) (event \(id)) is forged: its MAC does not verify under the verification key", id: id, epoch: s.epoch)
        }
        // From here the seal is genuine: what it says the host had is what the host had.
        if s.headID != headID || s.head != headHash {
            return fail("the seal of epoch \(s.epoch) (event \(id)) vouches for event \(s.headID) with hash \(s.head.prefix(16))…, but the chain before it ends at event \(headID) with hash \(headHash.prefix(16))…: events before it were changed, removed or inserted and the chain recomputed",
                        id: id, epoch: s.epoch)
        }
        if s.count != sinceSeal {
            return fail("the seal of epoch \(s.epoch) (event \(id)) counts \(s.count) events since the seal before it, the trail has \(sinceSeal): events were removed or inserted",
                        id: id, epoch: s.epoch)
        }
        let startMs = (key.start + s.epoch * key.interval) * 1000
        if s.at < startMs - 60_000 {
            return fail("the seal of epoch \(s.epoch) (event \(id)) is dated \(Timestamps.format(Timestamps.date(millis: s.at))), before its epoch began", id: id, epoch: s.epoch)
        }
        expect = s.next
        sinceSeal = 0
        firstUnsealedAt = nil
        seals += 1
        lastSeal = s
        lastSealID = id
        return true
    }

    /// The outcome as of `now` (the auditor's clock, or when the copy was taken).
    public func finish(now: Date) -> SealReport {
        var r = SealReport(chain: chain, seals: seals, lastSeal: lastSeal, lastSealID: lastSealID, beforeSetup: beforeSetup,
                           unsealed: sinceSeal, unsealedSince: firstUnsealedAt.map(Timestamps.date(millis:)), replacedAt: replacedAt?.id)
        if let problem {
            r.problem = problem
            r.badID = badID
            r.badEpoch = badEpoch
            return r
        }
        guard setupSeen else {
            r.problem = "the trail has no setup event for this verification key (setup \(setupID)): it is another host's key, or the trail was cut before it"
            return r
        }
        // The epoch the host's key is at after the last seal must close within its epoch (plus grace); an
        // epoch that ended long ago with no seal means the seals after it were cut, or jitd is not running.
        let until = replacedAt.map { Timestamps.date(millis: $0.at) } ?? now
        let current = key.epoch(atMillis: Timestamps.millis(until))
        let graceMs = SealedWalk.grace(key.interval) * 1000
        let endOfExpected = (key.start + (expect + 1) * key.interval) * 1000
        if current > expect && Timestamps.millis(until) > endOfExpected + graceMs {
            let since = lastSeal.map { "the last seal (event \(lastSealID), epoch \($0.epoch)) is from \(Timestamps.format(Timestamps.date(millis: $0.at)))" }
                ?? "no seal since the setup at \(Timestamps.format(Timestamps.date(millis: setupAt)))"
            r.problem = "\(epochs(expect, current - 1)) no closing seal: \(since); the sealed events after it were cut, or jitd is not running (start it, or give --as-of the time this copy was taken)"
            r.badEpoch = expect
        }
        return r
    }
}

/// What `jit audit verify --verify-key` reports.
public struct SealReport: Sendable {
    public var chain: AuditChain.Walk
    public var seals: Int64
    public var lastSeal: Seal?
    public var lastSealID: Int64
    public var beforeSetup: Int64
    /// Events after the last seal: in the chain, not yet proven.
    public var unsealed: Int64
    public var unsealedSince: Date?
    public var replacedAt: Int64?
    public var problem: String? = nil
    public var badID: Int64? = nil
    public var badEpoch: Int64? = nil
}
