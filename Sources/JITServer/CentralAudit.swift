import Foundation
import JITCore
import JITFleet
import PostgresNIO

/// `jit audit` against the control plane (`audit` through `/v1/call`): the central trail, oldest first, a page
/// at a time. It merges the server's own events (`fleet_audit`: decisions, logins, enrolments, web links) and
/// the events the hosts shipped (`host_events`); each record says where it came from (`d_source`: `server` or
/// `host`, and `d_host`). The flags are the local ones: `since`, `until` (RFC 3339 or an age), `user`, `grant`,
/// and `after` (the page cursor this answers as `next`).
///
/// Who reads what follows the host agent (`EngineAudit`): root and approvers read everyone's events, anyone else
/// only events about themselves. Over the network root never acts, and an approver is a member of an approver
/// group of the control plane's policy, resolved in the server's NSS at this call.
enum CentralAudit {
    /// Events per page, and the most bytes a page holds (the client reads at most 4 MiB).
    static let pageSize = 500
    static let pageBytes = 1 << 20
    static let keys: Set<String> = ["since", "until", "user", "grant", "after"]

    /// Where the next page starts: after (time in µs, source, host, id) of the last event sent.
    struct Cursor: Equatable {
        var micros: Int64
        var source: String
        var host: String
        var id: Int64

        var text: String { "\(micros):\(source):\(id):\(host)" }

        init(micros: Int64, source: String, host: String, id: Int64) {
            self.micros = micros
            self.source = source
            self.host = host
            self.id = id
        }

        init?(_ s: String) {
            let p = s.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
            guard p.count == 4, let us = Int64(p[0]), p[1] == "s" || p[1] == "h", let id = Int64(p[2]), p[3].utf8.count <= 255 else { return nil }
            self.init(micros: us, source: String(p[1]), host: String(p[3]), id: id)
        }
    }

    static func time(_ s: String, _ key: String, now: Date) throws(JITError) -> Date {
        if let d = Timestamps.parse(s) { return d }
        if let d = try? Durations.parse(s) { return now.addingTimeInterval(-Double(d)) }
        throw JITError(.invalid, "'\(s)' is not a time for --\(key): use RFC 3339 (2026-11-22T10:00:00Z) or an age like 2h")
    }

    /// One page of the central trail for `who` (`isApprover`: from the policy, now).
    static func read(_ m: Message, as who: Identity, isApprover: Bool, db: FleetDatabase, now: Date = Date()) async -> Message {
        do {
            for (k, _) in m.fields where !keys.contains(k) {
                throw JITError(.badRequest, "the field '\(k)' is not known to 'audit' (it takes since, until, user, grant, after)")
            }
            var since: Date? = nil, until: Date? = nil
            if let s = m["since"] { since = try time(s, "since", now: now) }
            if let s = m["until"] { until = try time(s, "until", now: now) }
            var grant: String? = nil
            if let g = m["grant"] {
                guard let n = Int64(g), n > 0 else { throw JITError(.invalid, "'\(g)' is not a grant ID; IDs are positive whole numbers") }
                grant = String(n)
            }
            var after: Cursor? = nil
            if let a = m["after"] {
                guard let c = Cursor(a) else { throw JITError(.invalid, "the field 'after' ('\(a.prefix(40))') is not a page cursor of the central trail (give back the 'next' of the previous page)") }
                after = c
            }
            let everyone = isApprover && !who.isRoot
            var user = m["user"]
            if let u = user {
                guard everyone || u == who.name else {
                    throw JITError(.unauthorized, "only approvers may read other users' events in the control plane's trail; \(who.name) reads their own (leave out --user)")
                }
            } else if !everyone {
                user = who.name
            }
            return try await page(db: db, since: since, until: until, user: user, grant: grant, after: after)
        } catch let e as JITError {
            return .error(e.code, e.message)
        } catch let e as FleetError {
            return .error(.internal, "reading the control plane's trail failed (\(e.code)): \(e.message)")
        } catch {
            return .error(.internal, "reading the control plane's trail failed: \(error)")
        }
    }

    /// A page: the first `pageSize` events after the cursor (and `since`) in (time, source, host, id) order. Each
    /// source is read on its own, in the order of its index, from where the cursor puts it (an index range scan
    /// that stops at the page, however long the trail), and the two are merged here: at one microsecond the
    /// hosts' events ('h') come before the server's ('s'), as in the cursor's order.
    static func page(db: FleetDatabase, since: Date?, until: Date?, user: String?, grant: String?, after: Cursor?) async throws -> Message {
        let limit = pageSize + 1
        let server = try await rows(db: db, source: "s", from: bound(for: "s", since: since, after: after), until: until, user: user, grant: grant, limit: limit)
        let hosts = try await rows(db: db, source: "h", from: bound(for: "h", since: since, after: after), until: until, user: user, grant: grant, limit: limit)
        var out = Message("ok")
        var size = 64
        var last: Cursor? = nil
        var more = false
        var i = 0, j = 0
        while i < server.count || j < hosts.count {
            // Different sources: the time decides, and at the same microsecond 'h' < 's'.
            let takeHost = i == server.count || (j < hosts.count && hosts[j].micros <= server[i].micros)
            let e = takeHost ? hosts[j] : server[i]
            if takeHost { j += 1 } else { i += 1 }
            let fields = record(source: e.source, id: e.id, micros: e.micros, kind: e.kind, actor: e.actor, user: e.user, host: e.host, data: e.data)
            let n = fields.reduce(2) { $0 + $1.0.utf8.count + $1.1.utf8.count * 3 + 2 }
            if out.records.count >= pageSize || (size + n > pageBytes && !out.records.isEmpty) {
                more = true
                break
            }
            size += n
            out.records.append(fields)
            last = Cursor(micros: e.micros, source: e.source, host: e.host, id: e.id)
        }
        if more, let last { out.add("next", last.text) }
        out.fields.insert(("count", String(out.records.count)), at: 0)
        return out
    }

    /// Where one source's rows start, as the row (time in µs, host, id) they must be greater than: after the
    /// cursor (in the other source, at its microsecond or after it: 'h' sorts before 's') and at `since` or later.
    /// Nil: from the start.
    static func bound(for source: String, since: Date?, after: Cursor?) -> (micros: Int64, host: String, id: Int64)? {
        var b = since.map { (micros: micros($0), host: "", id: Int64.min) }
        if let c = after {
            let fromCursor: (micros: Int64, host: String, id: Int64)
            if source == c.source { fromCursor = (c.micros, c.host, c.id) }
            else if source > c.source { fromCursor = (c.micros, "", Int64.min) }
            else { fromCursor = (c.micros + 1, "", Int64.min) }
            // The later of the two; at the same microsecond the cursor's, which is never before `since`'s.
            if b == nil || fromCursor.micros >= b!.micros { b = fromCursor }
        }
        return b
    }

    static func micros(_ d: Date) -> Int64 {
        Int64((d.timeIntervalSince1970 * 1_000_000).rounded(.up))
    }

    struct Row {
        var source: String, id: Int64, micros: Int64, kind: String, actor: String, user: String, host: String, data: String
    }

    /// One source's events after `from`, in its index's order (`fleet_audit_page`, `host_events_page`, and
    /// `*_user_page` when one user's are read).
    static func rows(db: FleetDatabase, source: String, from: (micros: Int64, host: String, id: Int64)?, until: Date?, user: String?, grant: String?, limit: Int) async throws -> [Row] {
        let b = from ?? (0, "", 0)
        let hasFrom = from != nil
        let untilMicros = until.map { Int64(($0.timeIntervalSince1970 * 1_000_000).rounded(.down)) }
        let q: PostgresQuery
        if source == "s" {
            q = """
                SELECT id, (extract(epoch FROM at) * 1000000)::bigint, event, actor, coalesce(data->>'user', ''), coalesce(host, ''), data::text
                FROM fleet_audit
                WHERE (NOT \(hasFrom) OR (at, coalesce(host, ''), id) > ('epoch'::timestamptz + \(b.micros) * interval '1 microsecond', \(b.host)::text, \(b.id)))
                  AND (\(untilMicros)::bigint IS NULL OR at <= 'epoch'::timestamptz + \(untilMicros)::bigint * interval '1 microsecond')
                  AND (\(user)::text IS NULL OR data->>'user' = \(user)::text)
                  AND (\(grant)::text IS NULL OR data->>'grant' = \(grant)::text)
                ORDER BY at, coalesce(host, ''), id
                LIMIT \(limit)
                """
        } else {
            q = """
                SELECT seq, (extract(epoch FROM at) * 1000000)::bigint, kind, actor, user_name, host, data::text
                FROM host_events
                WHERE (NOT \(hasFrom) OR (at, host, seq) > ('epoch'::timestamptz + \(b.micros) * interval '1 microsecond', \(b.host)::text, \(b.id)))
                  AND (\(untilMicros)::bigint IS NULL OR at <= 'epoch'::timestamptz + \(untilMicros)::bigint * interval '1 microsecond')
                  AND (\(user)::text IS NULL OR user_name = \(user)::text)
                  AND (\(grant)::text IS NULL OR data->>'grant_id' = \(grant)::text)
                ORDER BY at, host, seq
                LIMIT \(limit)
                """
        }
        var out: [Row] = []
        let rows = try await db.client.query(q, logger: db.logger)
        for try await (id, us, kind, actor, uname, host, data) in rows.decode((Int64, Int64, String, String, String, String, String).self) {
            out.append(Row(source: source, id: id, micros: us, kind: kind, actor: actor, user: uname, host: host, data: data))
        }
        return out
    }

    /// Migration 7 of `FleetDatabase.migrations`: the indexes a page is read in (the (at) ones they replace
    /// are their prefix).
    static let schema = [
        "CREATE INDEX fleet_audit_page ON fleet_audit (at, (coalesce(host, '')), id)",
        "CREATE INDEX fleet_audit_user_page ON fleet_audit ((data->>'user'), at, (coalesce(host, '')), id)",
        "CREATE INDEX host_events_page ON host_events (at, host, seq)",
        "CREATE INDEX host_events_user_page ON host_events (user_name, at, host, seq)",
        "DROP INDEX IF EXISTS fleet_audit_at",
        "DROP INDEX IF EXISTS host_events_at",
    ]

    /// One event in the local trail's wire form (`id`, `at`, `kind`, `actor`, `user`, `request`, `grant`,
    /// `d_*`), with where it came from; `hash` is empty (the central trail is not one hash chain: each host's is).
    static func record(source: String, id: Int64, micros: Int64, kind: String, actor: String, user: String, host: String, data: String) -> [(String, String)] {
        var d: [String: String] = [:]
        if let obj = (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] {
            for (k, v) in obj { d[k] = (v as? String) ?? "\(v)" }
        }
        let at = Date(timeIntervalSince1970: Double(micros) / 1_000_000)
        var f: [(String, String)] = [("id", String(id)), ("at", Timestamps.format(at)), ("kind", kind), ("actor", actor), ("user", user)]
        let request = d.removeValue(forKey: "request") ?? d.removeValue(forKey: "request_id")
        let grant = d.removeValue(forKey: "grant") ?? d.removeValue(forKey: "grant_id")
        d["user"] = nil
        if let r = request, Int64(r) != nil { f.append(("request", r)) }
        if let g = grant, Int64(g) != nil { f.append(("grant", g)) }
        f.append(("d_source", source == "h" ? "host" : "server"))
        if !host.isEmpty { f.append(("d_host", host)) }
        for (k, v) in d.sorted(by: { $0.key < $1.key }) where k != "source" && k != "host" { f.append(("d_" + k, v)) }
        f.append(("hash", ""))
        return f
    }
}
