public import Foundation
import Yams

/// How much of the agent one user may take (`limits:` in jit.yaml), so that one user's flood never denies
/// another user. Every key has a default that serves a normal host; jit.yaml(5) documents them.
public struct LimitSettings: Equatable, Sendable {
    /// Open connections in all (the socket is open to every local user).
    public var connections = 512
    /// Open connections from one non-root peer uid.
    public var connectionsPerUser = 32
    /// Waiting clients (PAM waits, `jit request --wait`) about one user, whoever the peer is (root inside sudo).
    public var waitsPerUser = 8
    /// Waiting clients on one request.
    public var waitsPerRequest = 4
    /// Waiting clients in all; the rest of `connections` is kept for quick checks and commands.
    public var waits: Int { max(1, connections / 2) }
    /// Checks per second from one non-root peer (a user asking about themselves); root's never are limited.
    public var checksPerSecond = 20
    /// Pending requests one user may have at once.
    public var pendingPerUser = 5
    /// Requests one user may file per minute (a burst of this many, then one every 60/N seconds).
    public var requestsPerMinute = 10
    /// Unread check-journal bytes past which non-root peers' events are dropped (and counted).
    public var journalBytes: Int64 = 64 << 20
    public init() {}
}

extension Config {
    static func parseLimits(_ node: Node, r: YAMLReader) throws(ConfigError) -> LimitSettings {
        var l = LimitSettings()
        let m = try r.mapping(node, path: "limits")
        try r.onlyKeys(m, ["connections", "connections_per_user", "waits_per_user", "waits_per_request", "checks_per_second",
                           "pending_per_user", "requests_per_minute", "journal_size"], path: "limits")
        func count(_ v: Node, _ path: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int {
            let n = try r.int(v, path: path)
            guard range.contains(n) else { throw r.error(v, path, "must be between \(range.lowerBound) and \(range.upperBound)") }
            return n
        }
        for (key, (_, v)) in m {
            let path = "limits.\(key)"
            switch key {
            case "connections": l.connections = try count(v, path, 16...65_536)
            case "connections_per_user": l.connectionsPerUser = try count(v, path, 1...4096)
            case "waits_per_user": l.waitsPerUser = try count(v, path, 1...1024)
            case "waits_per_request": l.waitsPerRequest = try count(v, path, 1...1024)
            case "checks_per_second": l.checksPerSecond = try count(v, path, 1...100_000)
            case "pending_per_user": l.pendingPerUser = try count(v, path, 1...1000)
            case "requests_per_minute": l.requestsPerMinute = try count(v, path, 1...6000)
            case "journal_size":
                let mb = try count(v, path, 1...65_536)
                l.journalBytes = Int64(mb) << 20
            default: break
            }
        }
        return l
    }
}

/// A token bucket per key: `burst` at once, refilled at `perSecond`. Used for filing and non-root checks;
/// keyed by who the kernel says asks, so nobody can spend another user's budget.
public struct RateBuckets<Key: Hashable & Sendable>: Sendable {
    var buckets: [Key: (tokens: Double, at: Date)] = [:]
    public init() {}

    /// Takes one token for `key`; false when it has none left.
    public mutating func take(_ key: Key, burst: Int, perSecond: Double, now: Date) -> Bool {
        var b = buckets[key] ?? (Double(burst), now)
        b.tokens = min(Double(burst), b.tokens + max(0, now.timeIntervalSince(b.at)) * perSecond)
        b.at = now
        let ok = b.tokens >= 1
        if ok { b.tokens -= 1 }
        buckets[key] = b
        // Full buckets carry no information: forget them, so the table stays as small as the set of busy users.
        if buckets.count > 4096 {
            buckets = buckets.filter { $0.value.tokens + max(0, now.timeIntervalSince($0.value.at)) * perSecond < Double(burst) }
        }
        return ok
    }
}
