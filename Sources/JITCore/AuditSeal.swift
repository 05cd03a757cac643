import Crypto
public import Foundation

/// Forward-secure sealing of the audit trail (Bellare–Yee forward-secure MACs, as in Schneier–Kelsey secure
/// audit logs and systemd-journald's Forward Secure Sealing). Time is cut into epochs of `interval` seconds
/// from `start`. Epoch 0's key comes from a random seed; each next key is a one-way function of the one
/// before, so a key reveals nothing about the keys of earlier epochs. The host keeps only the key of the
/// epoch in progress; the auditor keeps the seed (the verification key) and derives every epoch's key.
///
/// A seal is an ordinary event of the chain (kind `audit.seal`) whose data carries a MAC, under its epoch's
/// key, over the epoch, the epoch its key moves to, the head of the chain before it, the number of events
/// since the previous seal, and its time. Root taking the host during epoch E holds only key E: every seal of
/// an epoch before E stays unforgeable, and removing one shows as a missing epoch.
public struct SealKey: Sendable, Equatable {
    /// The secret the auditor keeps: 32 random bytes.
    public var seed: [UInt8]
    /// Unix seconds at which epoch 0 begins.
    public var start: Int64
    /// Epoch length in seconds.
    public var interval: Int64

    public init(seed: [UInt8], start: Int64, interval: Int64) {
        self.seed = seed
        self.start = start
        self.interval = interval
    }

    /// A fresh secret (from the system's CSPRNG) starting now.
    public static func generate(start: Int64, interval: Int64) -> SealKey {
        let k = SymmetricKey(size: .bits256)
        return SealKey(seed: k.withUnsafeBytes { Array($0) }, start: start, interval: interval)
    }

    /// Names this key's sealing chain in the trail (`setup=` of the seal events) without revealing it.
    public var setupID: String {
        Sealing.hex(Array(Crypto.SHA256.hash(data: Array("jit-seal-id-v1".utf8) + seed)).prefix(8))
    }

    /// Epoch 0's key.
    public var firstKey: [UInt8] { Sealing.mac(seed, "jit-seal-k0-v1") }

    /// `HEXSEED/START-INTERVAL`: the seed in hex, then when epoch 0 began (Unix seconds) and the epoch length.
    public var longForm: String { "\(Sealing.hex(seed))/\(start)-\(interval)" }

    /// The same key for paper or a QR code: base32 (RFC 4648) of seed, start, interval and a 4-byte checksum,
    /// in 11 groups of 7 letters and digits. A typo fails the checksum instead of verifying nothing.
    public var shortForm: String {
        let chars = Array(Base32.encode(payloadWithChecksum))
        return stride(from: 0, to: chars.count, by: 7).map { String(chars[$0..<min($0 + 7, chars.count)]) }.joined(separator: "-")
    }

    var payload: [UInt8] {
        var b = seed
        for i in (0..<8).reversed() { b.append(UInt8(truncatingIfNeeded: UInt64(bitPattern: start) >> (UInt64(i) * 8))) }
        for i in (0..<4).reversed() { b.append(UInt8(truncatingIfNeeded: UInt32(truncatingIfNeeded: interval) >> (UInt32(i) * 8))) }
        return b
    }

    var payloadWithChecksum: [UInt8] { payload + Array(Crypto.SHA256.hash(data: payload)).prefix(4) }

    /// Reads either form. Errors say which part is wrong.
    public static func parse(_ text: String) throws(JITError) -> SealKey {
        let s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if let slash = s.firstIndex(of: "/") {
            let hexPart = String(s[..<slash])
            let rest = s[s.index(after: slash)...].split(separator: "-", omittingEmptySubsequences: false)
            guard let seed = Sealing.unhex(hexPart), seed.count == 32 else {
                throw JITError(.invalid, "the verification key does not start with 64 hex digits (the seed) before '/'")
            }
            guard rest.count == 2, let start = Int64(rest[0]), let interval = Int64(rest[1]), interval > 0 else {
                throw JITError(.invalid, "the verification key must end with '/START-INTERVAL' (Unix seconds and the epoch length in seconds)")
            }
            return SealKey(seed: seed, start: start, interval: interval)
        }
        let letters = s.uppercased().filter { $0 != "-" && !$0.isWhitespace }
        guard let bytes = Base32.decode(letters), bytes.count == 48 else {
            throw JITError(.invalid, "the verification key is neither HEXSEED/START-INTERVAL nor 77 base32 characters (A-Z, 2-7, dashes ignored)")
        }
        let seed = Array(bytes[0..<32])
        var start: UInt64 = 0
        for b in bytes[32..<40] { start = start << 8 | UInt64(b) }
        var interval: UInt32 = 0
        for b in bytes[40..<44] { interval = interval << 8 | UInt32(b) }
        let key = SealKey(seed: seed, start: Int64(bitPattern: start), interval: Int64(interval))
        guard key.payloadWithChecksum == bytes, interval > 0 else {
            throw JITError(.invalid, "the verification key's checksum does not match: a character was mistyped")
        }
        return key
    }

    /// The epoch a time (milliseconds) falls in.
    public func epoch(atMillis ms: Int64) -> Int64 { Sealing.epoch(atMillis: ms, start: start, interval: interval) }
    public func begins(_ epoch: Int64) -> Date { Date(timeIntervalSince1970: Double(start + epoch * interval)) }
}

/// The sealing primitives, shared by jitd (which seals) and the verifier (which derives and checks).
public enum Sealing {
    public static let eventKind = "audit.seal"
    public static let setupKind = "audit.seal_setup"

    static func mac(_ key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        Array(HMAC<Crypto.SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }

    static func mac(_ key: [UInt8], _ label: String) -> [UInt8] { mac(key, Array(label.utf8)) }

    /// The next epoch's key: one way, so holding it says nothing about this one.
    public static func evolve(_ key: [UInt8]) -> [UInt8] { mac(key, "jit-seal-evolve-v1") }

    /// The key `steps` epochs after `key`.
    public static func evolve(_ key: [UInt8], steps: Int64) -> [UInt8] {
        var k = key
        var i: Int64 = 0
        while i < steps { k = evolve(k); i += 1 }
        return k
    }

    public static func epoch(atMillis ms: Int64, start: Int64, interval: Int64) -> Int64 {
        let offset = ms - start * 1000
        let len = interval * 1000
        return offset >= 0 ? offset / len : -((-offset + len - 1) / len)
    }

    /// The MAC of a seal under its epoch's key.
    public static func tag(key: [UInt8], _ s: Seal) -> String {
        var b: [UInt8] = Array("jit-seal-v1".utf8)
        for f in [s.setup, String(s.epoch), String(s.next), s.why, String(s.headID), s.head, String(s.count), String(s.at)] {
            let u = Array(f.utf8)
            b += Array(String(u.count).utf8)
            b.append(UInt8(ascii: ":"))
            b += u
        }
        return hex(mac(mac(key, "jit-seal-mac-v1"), b))
    }

    public static func hex(_ b: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func unhex(_ s: String) -> [UInt8]? {
        let u = Array(s.lowercased().utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let hi = v(u[i]), let lo = v(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// What one seal binds. `next` is the epoch the host's key moves to after it: the same epoch for a seal
/// made mid-epoch (at stop, before archiving, on demand), a later one for the seal that closes an epoch.
public struct Seal: Sendable, Equatable {
    public var setup: String
    public var epoch: Int64
    public var next: Int64
    /// interval (closes the epoch), stop, archive, manual, resume (closes the epoch jitd was down in).
    public var why: String
    /// The last event before the seal and its hash: the head of the chain the seal vouches for.
    public var headID: Int64
    public var head: String
    /// Events since the previous seal (or since the setup event).
    public var count: Int64
    /// The seal event's own time (milliseconds).
    public var at: Int64

    public init(setup: String, epoch: Int64, next: Int64, why: String, headID: Int64, head: String, count: Int64, at: Int64) {
        self.setup = setup
        self.epoch = epoch
        self.next = next
        self.why = why
        self.headID = headID
        self.head = head
        self.count = count
        self.at = at
    }

    /// The seal event's data, the tag last.
    public func pairs(tag: String) -> [(String, String)] {
        [("setup", setup), ("epoch", String(epoch)), ("next", String(next)), ("why", why), ("head_id", String(headID)),
         ("head", head), ("count", String(count)), ("tag", tag)]
    }

    /// Reads a seal event; nil when a field is missing or malformed.
    public static func from(_ e: AuditEvent) -> (seal: Seal, tag: String)? {
        var d: [String: String] = [:]
        for (k, v) in e.pairs { d[k] = v }
        guard let setup = d["setup"], let epoch = d["epoch"].flatMap({ Int64($0) }), let next = d["next"].flatMap({ Int64($0) }),
              let why = d["why"], let headID = d["head_id"].flatMap({ Int64($0) }), let head = d["head"],
              let count = d["count"].flatMap({ Int64($0) }), let tag = d["tag"]
        else { return nil }
        return (Seal(setup: setup, epoch: epoch, next: next, why: why, headID: headID, head: head, count: count, at: e.at), tag)
    }
}

/// What the host's key file holds: the key of the epoch in progress, never an earlier one. One line of
/// text with a checksum, so a torn write reads as damaged instead of as a wrong key.
public struct SealState: Sendable, Equatable {
    public var setup: String
    public var epoch: Int64
    public var start: Int64
    public var interval: Int64
    public var key: [UInt8]

    public init(setup: String, epoch: Int64, start: Int64, interval: Int64, key: [UInt8]) {
        self.setup = setup
        self.epoch = epoch
        self.start = start
        self.interval = interval
        self.key = key
    }

    /// Epoch 0 of a fresh setup.
    public init(_ k: SealKey) {
        self.init(setup: k.setupID, epoch: 0, start: k.start, interval: k.interval, key: k.firstKey)
    }

    /// This state moved forwards to `epoch` (the keys in between are computed and dropped).
    public func evolved(to epoch: Int64) -> SealState {
        var s = self
        s.key = Sealing.evolve(key, steps: max(0, epoch - self.epoch))
        s.epoch = max(epoch, self.epoch)
        return s
    }

    public func epoch(at d: Date) -> Int64 { Sealing.epoch(atMillis: Timestamps.millis(d), start: start, interval: interval) }
    public func ends(_ epoch: Int64) -> Date { Date(timeIntervalSince1970: Double(start + (epoch + 1) * interval)) }

    public var text: String {
        let body = "jit-seal-key 1 setup=\(setup) epoch=\(epoch) start=\(start) interval=\(interval) key=\(Sealing.hex(key))"
        return body + " check=\(SealState.check(body))\n"
    }

    static func check(_ body: String) -> String { Sealing.hex(Array(Crypto.SHA256.hash(data: Array(body.utf8))).prefix(8)) }

    /// Nil for anything but a whole, well-formed file (an overwritten, torn or foreign file).
    public static func parse(_ text: String) -> SealState? {
        let line = text.hasSuffix("\n") ? String(text.dropLast()) : text
        guard let r = line.range(of: " check=") else { return nil }
        let body = String(line[..<r.lowerBound])
        guard String(line[r.upperBound...]) == check(body) else { return nil }
        var f: [String: String] = [:]
        let words = body.split(separator: " ")
        guard words.count == 7, words[0] == "jit-seal-key", words[1] == "1" else { return nil }
        for w in words.dropFirst(2) {
            guard let eq = w.firstIndex(of: "=") else { return nil }
            f[String(w[..<eq])] = String(w[w.index(after: eq)...])
        }
        guard let setup = f["setup"], let epoch = f["epoch"].flatMap({ Int64($0) }), let start = f["start"].flatMap({ Int64($0) }),
              let interval = f["interval"].flatMap({ Int64($0) }), interval > 0, let key = f["key"].flatMap(Sealing.unhex), key.count == 32
        else { return nil }
        return SealState(setup: setup, epoch: epoch, start: start, interval: interval, key: key)
    }
}
