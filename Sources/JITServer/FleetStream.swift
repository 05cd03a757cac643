import Foundation
import JITCore
public import JITFleet

/// Which grants a host may see: taken only from the caller's row in PostgreSQL (`context.host.record`), never
/// from a parameter. A grant concerns the host when it is of the host's environment, names no host or names
/// this one, and every label it needs is one of the host's.
public struct StreamFilter: Sendable, Equatable {
    public var environment: String
    public var name: String
    public var labels: [String]

    public init(environment: String, name: String, labels: [String]) {
        self.environment = environment
        self.name = name
        self.labels = labels
    }

    public init(_ host: HostRecord) { self.init(environment: host.environment, name: host.name, labels: host.labels) }

    /// The same rule as the SQL of `hostChanges` (`environment = E AND (cardinality(hosts) = 0 OR NAME = ANY(hosts))
    /// AND labels <@ LABELS`), for the rows a replica caches per environment.
    public func matches(_ g: FleetWire.Grant) -> Bool {
        g.environment == environment && (g.hosts.isEmpty || g.hosts.contains(name)) && g.labels.allSatisfy(labels.contains)
    }
}

/// The limits of the stream. All are per replica.
public struct StreamLimits: Sendable, Equatable {
    /// The longest a long-poll is held (a proxy or a NAT must not cut it first).
    public static let maxWait: Int64 = 55
    public static let defaultWait: Int64 = 30
    /// The most changes one answer carries; the host asks again from the answer's cursor.
    public var batch = 500
    /// The most active grants a reset carries (a host concerned by more is refused with a message, not cut short).
    public var resetLimit = 10_000
    /// How many changes of one environment a replica keeps in memory to answer hosts without a query.
    public var cachePerEnvironment = 2_000
    /// How many long-polls a replica holds at once (one per host; a host's second replaces its first).
    public var maxWaiters = 20_000
    public init() {}
}

/// The query of `GET /v1/grants/stream`: `cursor` (a version, 0: start over) and `wait` (seconds, at most 55).
public struct StreamQuery: Sendable, Equatable {
    public var cursor: Int64
    public var wait: Int64

    public init(cursor: Int64, wait: Int64) {
        self.cursor = cursor
        self.wait = wait
    }

    public init(cursor: String?, wait: String?) throws(FleetError) {
        var c: Int64 = 0, w = StreamLimits.defaultWait
        if let cursor {
            guard let v = Int64(cursor), v >= 0 else {
                throw FleetError("bad_request", "cursor must be a whole number ≥ 0 (the 'cursor' of the last answer, or 0 to start over), not '\(cursor.prefix(40))'")
            }
            c = v
        }
        if let wait {
            guard let v = Int64(wait), (0...StreamLimits.maxWait).contains(v) else {
                throw FleetError("bad_request", "wait must be a number of seconds from 0 to \(StreamLimits.maxWait), not '\(wait.prefix(40))'")
            }
            w = v
        }
        self.init(cursor: c, wait: w)
    }
}

/// The newest changes of one environment a replica holds in memory: every row with `from < version ≤ through`,
/// in order, as of one snapshot. Because versions become visible in commit order, nothing of the environment
/// with a version ≤ `through` can appear later, so an answer computed from here is complete up to `through`.
public struct EnvironmentCache: Sendable, Equatable {
    public private(set) var from: Int64
    public private(set) var through: Int64
    public private(set) var rows: [GrantChange]
    public let capacity: Int

    public init(at version: Int64, capacity: Int) {
        self.from = version
        self.through = version
        self.rows = []
        self.capacity = max(1, capacity)
    }

    public func covers(_ cursor: Int64) -> Bool { from <= cursor && cursor <= through }

    /// The answer for a host at `cursor`: its changes after the cursor (at most `limit`), and the cursor to come
    /// back with (the last change's version when the answer is full, else `through`). Nil when the cache does
    /// not cover the cursor (the caller reads PostgreSQL).
    public func answer(_ filter: StreamFilter, after cursor: Int64, limit: Int) -> FleetWire.GrantStream? {
        answerWithVersions(filter, after: cursor, limit: limit)?.stream
    }

    /// `answer`, with the versions of the changes it carries: two hosts with the same versions and cursor get
    /// the same bytes (the hub encodes those once per refresh, not once per host).
    public func answerWithVersions(_ filter: StreamFilter, after cursor: Int64, limit: Int) -> (stream: FleetWire.GrantStream, versions: [Int64])? {
        guard covers(cursor) else { return nil }
        var lo = 0, hi = rows.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if rows[mid].version <= cursor { lo = mid + 1 } else { hi = mid }
        }
        var out: [FleetWire.Grant] = []
        var versions: [Int64] = []
        var last = cursor
        for r in rows[lo...] where filter.matches(r.grant) {
            out.append(r.grant)
            versions.append(r.version)
            last = r.version
            if out.count == limit { return (FleetWire.GrantStream(cursor: last, reset: false, changes: out), versions) }
        }
        return (FleetWire.GrantStream(cursor: through, reset: false, changes: out), versions)
    }

    /// Adds rows read after `through` up to `newThrough`; drops the oldest beyond the capacity (raising `from`).
    /// Returns false when `newThrough` is behind what the cache holds (the database went back: drop the cache).
    public mutating func append(_ new: [GrantChange], through newThrough: Int64) -> Bool {
        guard newThrough >= through else { return false }
        rows.append(contentsOf: new.filter { $0.version > through && $0.version <= newThrough })
        through = newThrough
        if rows.count > capacity {
            let drop = rows.count - capacity
            from = rows[drop - 1].version
            rows.removeFirst(drop)
        }
        return true
    }
}

/// One event of a batch, checked and ready to store.
struct CheckedEvent: Sendable {
    var seq: Int64
    var at: String
    var kind: String
    var actor: String
    var user: String
    var data: String
}

/// The bounds of `POST /v1/events` and `POST /v1/requests`.
public enum HostBodies {
    public static let requestBodyLimit = 64 * 1024
    public static let eventBodyLimit = 8 * 1024 * 1024
    public static let maxEvents = 500
    static let maxField = 256
    static let maxDataEntries = 128
    static let maxDataValue = 64 * 1024

    /// Checks a filing before anything reads it: no NUL in any text (PostgreSQL's text cannot hold one), and every
    /// target a host name (`hosts`, as `jit request --host` takes them). The engine checks the rest (user, scope,
    /// rule) and says why.
    static func check(_ r: FleetWire.HostRequest) throws(FleetError) {
        let texts: [(String, String)] = [("user", r.user), ("scope", r.scope), ("run_as", r.runAs ?? ""), ("reason", r.reason),
                                         ("ticket", r.ticket ?? ""), ("rhost", r.rhost), ("service", r.service), ("filed_at", r.filedAt)]
            + r.commands.enumerated().map { ("commands[\($0.offset)]", $0.element) }
        for (field, v) in texts where v.unicodeScalars.contains(where: { $0.value == 0 }) {
            throw FleetError("bad_request", "\(field) holds a NUL")
        }
        for (i, h) in r.hosts.enumerated() where !HostIdentity.isValidHostName(h) {
            throw FleetError("bad_request", "hosts[\(i)] ('\(h.prefix(40).unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "?" : String($0) }.joined())') is not a host name: lowercase letters, digits, '-' and '.'")
        }
    }

    /// Checks a batch: at most 500 events, seq > 0 and unique, `at` RFC 3339, short fields, a small flat `data`.
    /// The first bad event is named by its index and seq; nothing of a refused batch is stored.
    static func check(_ batch: FleetWire.EventBatch) throws(FleetError) -> [CheckedEvent] {
        guard batch.events.count <= maxEvents else {
            throw FleetError("bad_request", "a batch holds at most \(maxEvents) events, this one \(batch.events.count): send the rest in the next batch")
        }
        var seen = Set<Int64>()
        var out: [CheckedEvent] = []
        out.reserveCapacity(batch.events.count)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        for (i, e) in batch.events.enumerated() {
            let which = "events[\(i)] (seq \(e.seq))"
            guard e.seq > 0 else { throw FleetError("bad_request", "\(which): seq must be > 0 (the host's audit event id)") }
            guard seen.insert(e.seq).inserted else { throw FleetError("bad_request", "\(which): seq appears twice in the batch") }
            guard let at = Timestamps.parse(e.at) else { throw FleetError("bad_request", "\(which): at must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not '\(e.at.prefix(40))'") }
            for (field, v) in [("kind", e.kind), ("actor", e.actor), ("user", e.user)] {
                guard v.utf8.count <= maxField else { throw FleetError("bad_request", "\(which): \(field) is longer than \(maxField) bytes") }
                guard !v.unicodeScalars.contains(where: { $0.value == 0 }) else { throw FleetError("bad_request", "\(which): \(field) holds a NUL") }
            }
            guard !e.kind.isEmpty else { throw FleetError("bad_request", "\(which): kind is empty") }
            guard e.data.count <= maxDataEntries else { throw FleetError("bad_request", "\(which): data holds more than \(maxDataEntries) entries") }
            for (k, v) in e.data {
                guard k.utf8.count <= maxField, v.utf8.count <= maxDataValue else {
                    throw FleetError("bad_request", "\(which): data['\(k.prefix(40))'] is too long (keys \(maxField) bytes, values \(maxDataValue))")
                }
                guard !(k + v).unicodeScalars.contains(where: { $0.value == 0 }) else { throw FleetError("bad_request", "\(which): data['\(k.prefix(40))'] holds a NUL") }
            }
            let data: String
            do { data = String(decoding: try enc.encode(e.data), as: UTF8.self) } catch { throw FleetError("bad_request", "\(which): data cannot be stored") }
            out.append(CheckedEvent(seq: e.seq, at: Timestamps.format(at), kind: e.kind, actor: e.actor, user: e.user, data: data))
        }
        return out
    }
}
