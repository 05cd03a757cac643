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

    static func page(db: FleetDatabase, since: Date?, until: Date?, user: String?, grant: String?, after: Cursor?) async throws -> Message {
        let hasAfter = after != nil
        let aus = after?.micros ?? 0, asrc = after?.source ?? "", ahost = after?.host ?? "", aid = after?.id ?? 0
        let limit = pageSize + 1
        let q: PostgresQuery = """
            SELECT src, id, us, kind, actor, uname, h, data FROM (
              SELECT 's' AS src, id, (extract(epoch FROM at) * 1000000)::bigint AS us, at, event AS kind, actor,
                     coalesce(data->>'user', '') AS uname, coalesce(host, '') AS h, data::text AS data, coalesce(data->>'grant', '') AS g
              FROM fleet_audit
              UNION ALL
              SELECT 'h', seq, (extract(epoch FROM at) * 1000000)::bigint, at, kind, actor, user_name, host, data::text, coalesce(data->>'grant_id', '')
              FROM host_events
            ) e
            WHERE (\(since)::timestamptz IS NULL OR at >= \(since)::timestamptz)
              AND (\(until)::timestamptz IS NULL OR at <= \(until)::timestamptz)
              AND (\(user)::text IS NULL OR uname = \(user)::text)
              AND (\(grant)::text IS NULL OR g = \(grant)::text)
              AND (NOT \(hasAfter) OR (us, src, h, id) > (\(aus), \(asrc)::text, \(ahost)::text, \(aid)))
            ORDER BY us, src, h, id
            LIMIT \(limit)
            """
        var out = Message("ok")
        var size = 64
        var last: Cursor? = nil
        var more = false
        let rows = try await db.client.query(q, logger: db.logger)
        for try await (src, id, us, kind, actor, uname, host, data) in rows.decode((String, Int64, Int64, String, String, String, String, String).self) {
            let fields = record(source: src, id: id, micros: us, kind: kind, actor: actor, user: uname, host: host, data: data)
            let n = fields.reduce(2) { $0 + $1.0.utf8.count + $1.1.utf8.count * 3 + 2 }
            if out.records.count >= pageSize || (size + n > pageBytes && !out.records.isEmpty) {
                more = true
                break
            }
            size += n
            out.records.append(fields)
            last = Cursor(micros: us, source: src, host: host, id: id)
        }
        if more, let last { out.add("next", last.text) }
        out.fields.insert(("count", String(out.records.count)), at: 0)
        return out
    }

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
