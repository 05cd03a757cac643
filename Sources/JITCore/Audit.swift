import Crypto
public import Foundation

/// One event of the audit trail. Each carries a SHA-256 over its content and the previous event's hash,
/// so that changing, removing, inserting or reordering any event breaks the chain at that point.
public struct AuditEvent: Equatable, Sendable {
    public var id: Int64
    /// Milliseconds since the epoch.
    public var at: Int64
    public var kind: String
    public var actor: String
    public var user: String
    public var requestID: Int64?
    public var grantID: Int64?
    /// `key=value` lines, values percent-encoded as on the wire (see `AuditChain.kv`).
    public var data: String
    public var prevHash: String
    public var hash: String

    public init(id: Int64, at: Int64, kind: String, actor: String, user: String, requestID: Int64?, grantID: Int64?,
                data: String, prevHash: String, hash: String) {
        self.id = id
        self.at = at
        self.kind = kind
        self.actor = actor
        self.user = user
        self.requestID = requestID
        self.grantID = grantID
        self.data = data
        self.prevHash = prevHash
        self.hash = hash
    }

    /// The data as pairs.
    public var pairs: [(String, String)] {
        data.split(separator: "\n").compactMap { line in
            guard let eq = line.firstIndex(of: "=") else { return nil }
            let v = (try? Message.percentDecode(Array(line[line.index(after: eq)...].utf8)[...])) ?? String(line[line.index(after: eq)...])
            return (String(line[..<eq]), v)
        }
    }

    public var date: Date { Timestamps.date(millis: at) }

    /// Wire form (docs/PROTOCOL.md, `audit`).
    public var fields: [(String, String)] {
        var f: [(String, String)] = [("id", String(id)), ("at", Timestamps.format(date)), ("kind", kind), ("actor", actor), ("user", user)]
        if let r = requestID { f.append(("request", String(r))) }
        if let g = grantID { f.append(("grant", String(g))) }
        for (k, v) in pairs { f.append(("d_" + k, v)) }
        f.append(("hash", hash))
        return f
    }
}

/// The hash chain: the canonical form of an event and the walk that checks it.
public enum AuditChain {
    /// The previous hash of the very first event.
    public static let genesis = String(repeating: "0", count: 64)

    /// `key=value` lines with percent-encoded values: the canonical data form.
    public static func kv(_ pairs: [(String, String)]) -> String {
        var out: [UInt8] = []
        for (k, v) in pairs {
            if !out.isEmpty { out.append(10) }
            out += Array(k.utf8)
            out.append(UInt8(ascii: "="))
            Message.percentEncode(v, into: &out)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// SHA-256 over a canonical, unambiguous serialisation (every field length-prefixed).
    public static func hash(id: Int64, at: Int64, kind: String, actor: String, user: String, requestID: Int64?, grantID: Int64?,
                            data: String, prevHash: String) -> String {
        var b: [UInt8] = Array("jit-audit-v1".utf8)
        func put(_ s: String) {
            let u = Array(s.utf8)
            b += Array(String(u.count).utf8)
            b.append(UInt8(ascii: ":"))
            b += u
        }
        put(String(id)); put(String(at)); put(kind); put(actor); put(user)
        put(requestID.map(String.init) ?? ""); put(grantID.map(String.init) ?? ""); put(data); put(prevHash)
        return SHA256.hex(b)
    }

    public static func hash(of e: AuditEvent) -> String {
        hash(id: e.id, at: e.at, kind: e.kind, actor: e.actor, user: e.user, requestID: e.requestID, grantID: e.grantID, data: e.data, prevHash: e.prevHash)
    }

    /// Where a walk stands: the last good event, or the first problem.
    public struct Walk: Sendable, Equatable {
        public var lastID: Int64
        public var lastHash: String
        public var count: Int64
        public var problem: String?
        public var badID: Int64?

        public init(anchorID: Int64 = 0, anchorHash: String = AuditChain.genesis) {
            lastID = anchorID
            lastHash = anchorHash
            count = 0
        }

        /// Checks the next event in id order. Returns false (and records the problem) at the first break.
        public mutating func step(_ e: AuditEvent) -> Bool {
            guard problem == nil else { return false }
            if e.id != lastID + 1 {
                if e.id <= lastID {
                    problem = "event \(e.id) is out of order (it comes after event \(lastID)): events were reordered or inserted"
                } else {
                    problem = "event \(lastID + 1) is missing (the chain jumps from \(lastID) to \(e.id)): events were removed"
                }
                badID = e.id <= lastID ? e.id : lastID + 1
                return false
            }
            if AuditChain.hash(of: e) != e.hash {
                problem = "event \(e.id) was changed: its content does not match its hash"
                badID = e.id
                return false
            }
            if e.prevHash != lastHash {
                problem = "event \(e.id) does not follow event \(lastID): an event was inserted, removed or reordered before it"
                badID = e.id
                return false
            }
            lastID = e.id
            lastHash = e.hash
            count += 1
            return true
        }
    }
}
