import Foundation
import JITCore

/// A request as `jit` shows it (and as `--json` prints it).
struct RequestView: Codable {
    var id: Int64
    var state: String
    var user: String
    var uid: Int64
    var environment: String
    var scope: String
    var commands: [String]
    var runas: String
    var duration: Int64
    var reason: String
    var created_at: String
    var expires_at: String
    var decided_at: String?
    var decided_by: String?
    var comment: String?
    var rule: String
    var grant_id: Int64?
    var approvals: [String]
    var approvals_needed: Int?
    var approved_via: String?
    var ticket: String?
    var extends: Int64?
    /// Commands that give a shell or any file (CommandRisk): approvers read these before approving.
    var warnings: [String]
    var uses: Int?
    var record: String?
    /// On a fleet host: the control plane's id of this request (what approvers see) and its URL.
    var approve_id: Int64?
    var approve_at: String?

    init(_ f: [(String, String)]) {
        func v(_ k: String) -> String? { f.first { $0.0 == k }?.1 }
        id = Int64(v("id") ?? "") ?? 0
        state = v("state") ?? ""
        user = v("user") ?? ""
        warnings = f.filter { $0.0 == "warning" }.map(\.1)
        approve_id = v("approve_id").flatMap { Int64($0) }
        approve_at = v("approve_at")
        uid = Int64(v("uid") ?? "") ?? -1
        environment = v("environment") ?? ""
        scope = v("scope") ?? ""
        commands = f.filter { $0.0 == "command" }.map(\.1)
        runas = v("runas") ?? ""
        duration = Int64(v("duration") ?? "") ?? 0
        reason = v("reason") ?? ""
        created_at = v("created_at") ?? ""
        expires_at = v("expires_at") ?? ""
        decided_at = v("decided_at")
        decided_by = v("decided_by")
        comment = v("comment")
        rule = v("rule") ?? ""
        grant_id = v("grant").flatMap { Int64($0) }
        approvals = f.filter { $0.0 == "approval" }.map(\.1)
        approvals_needed = v("approvals_needed").flatMap { Int($0) }
        approved_via = v("approved_via")
        ticket = v("ticket")
        extends = v("extends").flatMap { Int64($0) }
        uses = v("uses").flatMap { Int($0) }
        record = v("record")
    }

    var scopeText: String {
        switch scope {
        case "sudo": return "sudo" + (runas.isEmpty || runas == "root" ? "" : " as \(runas)")
        case "commands": return "sudo " + commands.joined(separator: "; ") + (runas.isEmpty || runas == "root" ? "" : " as \(runas)")
        default: return scope
        }
    }
}

/// A grant as `jit` shows it.
struct GrantView: Codable {
    var id: Int64
    var request_id: Int64
    var user: String
    var environment: String
    var scope: String
    var commands: [String]
    var runas: String
    var state: String
    var starts_at: String
    var expires_at: String
    var ended_at: String?
    var ended_by: String?
    /// Whether the grant also opens login (its rule lists `login`).
    var login: Bool
    /// Sudo uses allowed and left (a use-limited grant only; state `used` once spent).
    var uses: Int?
    var uses_left: Int?
    var record: String?

    init(_ f: [(String, String)]) {
        func v(_ k: String) -> String? { f.first { $0.0 == k }?.1 }
        id = Int64(v("id") ?? "") ?? 0
        request_id = Int64(v("request_id") ?? "") ?? 0
        user = v("user") ?? ""
        environment = v("environment") ?? ""
        scope = v("scope") ?? ""
        commands = f.filter { $0.0 == "command" }.map(\.1)
        runas = v("runas") ?? ""
        state = v("state") ?? ""
        starts_at = v("starts_at") ?? ""
        expires_at = v("expires_at") ?? ""
        ended_at = v("ended_at")
        ended_by = v("ended_by")
        login = v("login") == "1"
        uses = v("uses").flatMap { Int($0) }
        uses_left = v("uses_left").flatMap { Int($0) }
        record = v("record")
    }

    var scopeText: String {
        switch scope {
        case "sudo": return "sudo" + (runas == "root" ? "" : " as \(runas)")
        case "commands": return "sudo " + commands.joined(separator: "; ") + (runas == "root" ? "" : " as \(runas)")
        default: return scope
        }
    }
}

enum Output {
    static func json<T: Encodable>(_ v: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let d = try? e.encode(v), let s = String(data: d, encoding: .utf8) else { return "null" }
        return s
    }

    /// Makes user-supplied text safe for a terminal: control, format (bidi, zero-width) and line-separator
    /// characters become '?'.
    static func clean(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map { FieldRules.isUnsafe($0) ? "?" : $0 }))
    }

    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows.map { $0.map(clean) }
        var widths = Array(repeating: 0, count: header.count)
        for r in all { for (i, c) in r.enumerated() where i < widths.count - 1 { widths[i] = max(widths[i], c.count) } }
        return all.map { r in
            r.enumerated().map { i, c in i < r.count - 1 ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0) : c }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func describe(_ r: RequestView) -> String {
        var lines = [
            "request \(r.id): \(r.state)",
            "  user:        \(r.user)",
            "  environment: \(r.environment)",
            "  scope:       \(clean(r.scopeText))",
        ] + r.warnings.map { "  WARNING:     \(clean($0))" } + [
            "  duration:    \(Durations.format(r.duration))",
            "  reason:      \(clean(r.reason))",
            "  created:     \(r.created_at)",
        ]
        if r.state == "pending" { lines.append("  expires:     \(r.expires_at) if not decided") }
        if !r.approvals.isEmpty { lines.append("  approvals:   \(r.approvals.joined(separator: ", "))") }
        if let d = r.decided_at { lines.append("  decided:     \(d)" + (r.decided_by.map { " by \($0)" } ?? "")) }
        if let c = r.comment { lines.append("  comment:     \(clean(c))") }
        if let g = r.grant_id { lines.append("  grant:       \(g)") }
        if !r.rule.isEmpty { lines.append("  rule:        \(r.rule)" + (r.approved_via.map { " (approved via \($0))" } ?? "")) }
        if let t = r.ticket { lines.append("  ticket:      \(clean(t))") }
        if let e = r.extends { lines.append("  extends:     grant \(e)") }
        if let u = r.uses { lines.append("  uses:        \(u == 1 ? "one (a one-shot grant)" : String(u))") }
        if let rec = r.record { lines.append("  recorded:    \(rec) (sudo I/O log; jit replay GRANT)") }
        return lines.joined(separator: "\n")
    }
}
