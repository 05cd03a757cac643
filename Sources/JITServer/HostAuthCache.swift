import Foundation
import JITFleet
import Synchronization
import X509

/// What one replica remembers of the hosts it has checked, so that a long-poll re-armed after every delivered
/// change (10,000 hosts re-arm within a second of one approval) costs neither a signature check nor a
/// PostgreSQL round trip.
///
/// - Certificates: keyed by their DER bytes, which fix everything the check looked at; the CA is the
///   process's own and does not change while it runs. Validity is checked against the clock on every use.
/// - Host rows: used only to *accept* (not revoked, serial current or previous); anything else is asked of
///   PostgreSQL, which has the last word. A row is used only while the replica's LISTEN connection is up
///   (`jit_hosts` tells it of every revocation, renewal, move; each drops the row) and *proven* up: the
///   replica sends itself a heartbeat on `jit_hosts` every `heartbeatEvery`, and PostgreSQL delivers
///   notifications in commit order, so when heartbeat N comes back every change committed before it was sent
///   has been seen. Rows answer only while the last heartbeat back was sent less than `maxAge` ago: that bounds
///   how long a revocation can go unseen if the connection dies without the replica noticing, without making
///   10,000 hosts' rows expire (and be read again) in the middle of a fan-out.
///   A fill that raced an invalidation is not kept (the generation moved).
final class HostAuthCache: Sendable {
    struct Verified: Sendable {
        let identity: HostIdentity
        let serial: String
        let notBefore: Date
        let notAfter: Date
        let publicKey: Certificate.PublicKey
    }

    private struct Row {
        var record: HostRecord
        var at: ContinuousClock.Instant
    }

    private struct State {
        var certificates: [[UInt8]: Verified] = [:]
        var hosts: [String: Row] = [:]
        var generation: UInt64 = 0
        var live = false
        /// When the newest heartbeat that came back was sent.
        var confirmed: ContinuousClock.Instant?
        var nextBeat: UInt64 = 0
        /// Heartbeats sent and not back yet, by number.
        var beats: [UInt64: ContinuousClock.Instant] = [:]
    }

    /// The longest since the last heartbeat that came back was sent, past which rows are not used.
    static let maxAge: Duration = .seconds(10)
    /// How often a replica sends itself a heartbeat on `jit_hosts`.
    static let heartbeatEvery: Duration = .seconds(2)
    /// Heartbeat payloads start with this; host names cannot (they are DNS-style names).
    static let heartbeatPrefix = "~heartbeat "

    /// This replica's heartbeats; other replicas' go by (they listen on the same channel) and are ignored.
    private let replica = UUID().uuidString
    /// The most entries of each kind (then the cache starts over: a bound on memory, not a policy).
    static let maxEntries = 50_000

    private let state = Mutex(State())

    init() {}

    // MARK: certificates

    func verified(_ der: [UInt8]) -> Verified? { state.withLock { $0.certificates[der] } }

    func remember(_ der: [UInt8], _ v: Verified) {
        state.withLock {
            if $0.certificates.count >= Self.maxEntries { $0.certificates.removeAll(keepingCapacity: true) }
            $0.certificates[der] = v
        }
    }

    // MARK: host rows

    /// The row to accept `serial` of host `name` with, when the cache may answer.
    func host(_ name: String, serial: String, now: ContinuousClock.Instant = .now) -> HostRecord? {
        state.withLock { s in
            guard s.live, let c = s.confirmed, now - c < Self.maxAge, let r = s.hosts[name] else { return nil }
            let h = r.record
            guard h.revokedAt == nil, serial == h.serial || serial == h.previousSerial else { return nil }
            return h
        }
    }

    /// The generation to pass to `store` for a row about to be read from PostgreSQL.
    func generation() -> UInt64 { state.withLock { $0.generation } }

    /// Keeps a row read from PostgreSQL, unless something was invalidated since `generation`.
    func store(_ record: HostRecord, readAt generation: UInt64, now: ContinuousClock.Instant = .now) {
        state.withLock { s in
            guard s.live, s.generation == generation else { return }
            if s.hosts.count >= Self.maxEntries { s.hosts.removeAll(keepingCapacity: true) }
            s.hosts[record.name] = Row(record: record, at: now)
        }
    }

    /// `jit_hosts` named this host (or this replica changed its row): ask PostgreSQL next time.
    func invalidate(_ name: String) {
        state.withLock { s in
            s.generation &+= 1
            s.hosts.removeValue(forKey: name)
        }
    }

    /// The LISTEN connection came up or went away: either way, nothing cached before may be trusted, and
    /// nothing is until a heartbeat sent from now on comes back.
    func setLive(_ up: Bool) {
        state.withLock { s in
            s.generation &+= 1
            s.hosts.removeAll()
            s.live = up
            s.confirmed = nil
            s.beats.removeAll()
        }
    }

    // MARK: heartbeats

    /// Whether rows may answer now: the listener is up and one of its heartbeats came back lately.
    func answersFromMemory(now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { s in s.live && s.confirmed.map { now - $0 < Self.maxAge } == true }
    }

    /// The payload of the next heartbeat to send on `jit_hosts` (call just before sending it).
    func nextHeartbeat(now: ContinuousClock.Instant = .now) -> String {
        state.withLock { s in
            s.nextBeat &+= 1
            if s.beats.count > 64 { s.beats.removeAll() }  // none came back for minutes: the listener is not live
            s.beats[s.nextBeat] = now
            return "\(Self.heartbeatPrefix)\(replica) \(s.nextBeat)"
        }
    }

    /// True when `payload` is a heartbeat (any replica's): not a host name. This replica's own confirm
    /// everything committed before it was sent.
    func heartbeat(_ payload: String) -> Bool {
        guard payload.hasPrefix(Self.heartbeatPrefix) else { return false }
        let p = payload.dropFirst(Self.heartbeatPrefix.count).split(separator: " ")
        guard p.count == 2, p[0] == replica, let n = UInt64(p[1]) else { return true }
        state.withLock { s in
            guard let sent = s.beats[n] else { return }
            s.beats = s.beats.filter { $0.key > n }
            if s.live, (s.confirmed.map { sent > $0 } ?? true) { s.confirmed = sent }
        }
        return true
    }

    /// The host was marked seen (so `touch` does not write again within the minute).
    func seen(_ name: String, at date: Date) {
        state.withLock { s in s.hosts[name]?.record.lastSeen = date }
    }
}
