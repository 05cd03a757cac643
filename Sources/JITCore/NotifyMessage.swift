public import Foundation

/// Everything a notification says, gathered from the audit event that caused it (and the request and
/// grant it names). Rendering is pure: the same facts give the same bytes, so a retried message is the
/// message that was first attempted.
public struct NotifyFacts: Sendable {
    /// The audit event's id: unique per event, so receivers can drop a repeat.
    public var eventID: Int64
    public var event: NotifyEvent
    /// The audit kind (`request.filed`, `sudoers.write_failed`, ...).
    public var kind: String
    public var at: Date
    public var host: String
    public var environment: String
    public var actor: String
    public var user: String
    public var request: AccessRequest?
    public var grantID: Int64?
    public var grantExpiresAt: Date?
    /// Who is told (approver events): the groups.
    public var approverGroups: [String]
    public var tier: Int?
    /// The audit event's data (e.g. `why` of a failed sudoers write).
    public var details: [(String, String)]
    /// The request's page on the control plane's web page (`PUBLIC_URL/web/requests/ID`), when it has one.
    public var pageURL: String?

    public init(eventID: Int64, event: NotifyEvent, kind: String, at: Date, host: String, environment: String, actor: String, user: String,
                request: AccessRequest? = nil, grantID: Int64? = nil, grantExpiresAt: Date? = nil, approverGroups: [String] = [],
                tier: Int? = nil, details: [(String, String)] = [], pageURL: String? = nil) {
        self.eventID = eventID
        self.event = event
        self.kind = kind
        self.at = at
        self.host = host
        self.environment = environment
        self.actor = actor
        self.user = user
        self.request = request
        self.grantID = grantID
        self.grantExpiresAt = grantExpiresAt
        self.approverGroups = approverGroups
        self.tier = tier
        self.details = details
        self.pageURL = pageURL
    }
}

/// Turns facts into each channel's form, escaping text from users for that channel.
public enum NotifyRender {
    /// One line of user text: control characters (CR, LF, tab, ESC, DEL, C1), line and paragraph separators
    /// and the whole Unicode format category (bidirectional marks and overrides, zero-width characters:
    /// U+200B, U+200E, U+200F, U+061C, ...) become spaces, and it is cut at 2000 characters.
    public static func line(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars.prefix(2000) {
            if FieldRules.isUnsafe(u) {
                out.append(" ")
            } else {
                out.append(u)
            }
        }
        return String(out)
    }

    /// Slack (and Mattermost) text: `&`, `<` and `>` escaped so `<!channel>`, `<@U123>` and links in user text are inert.
    public static func slackEscape(_ s: String) -> String {
        var o = ""
        for ch in line(s) {
            switch ch {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            default: o.append(ch)
            }
        }
        return o
    }

    /// The first line: fixed words, IDs and names (user and group names are plain by construction).
    public static func headline(_ f: NotifyFacts) -> String {
        let rid = f.request.map { String($0.id) } ?? "?"
        switch f.kind {
        case "request.filed": return "Request \(rid) by \(f.user) waits for approval on \(f.environment) (\(f.host))"
        case "request.escalated": return "Request \(rid) by \(f.user) was not decided in time: escalated to tier \(f.tier ?? 0) on \(f.environment) (\(f.host))"
        case "breakglass.bypass":
            // Reported by a fleet host (its own trail): the request is the host's, not the control plane's.
            guard f.request != nil else {
                let there = f.details.first { $0.0 == "host_request" }.map { ", its request \(NotifyRender.line($0.1)) there" } ?? ""
                return "BREAK-GLASS: \(f.user) took access at once on \(f.environment) (\(f.host))\(there)"
            }
            return "BREAK-GLASS: \(f.user) took access at once on \(f.environment) (\(f.host)), request \(rid)"
        case "request.approved": return "Request \(rid) was approved by \(f.actor) on \(f.environment) (\(f.host))"
        case "request.denied": return "Request \(rid) was denied by \(f.actor) on \(f.environment) (\(f.host))"
        case "request.expired": return "Request \(rid) expired unanswered on \(f.environment) (\(f.host))"
        case "grant.expiring":
            let t = f.grantExpiresAt.map(Timestamps.format) ?? "soon"
            return "Grant \(f.grantID.map(String.init) ?? "?") of \(f.user) ends at \(t) on \(f.environment) (\(f.host))"
        default:
            return "sudoers: \(f.kind) on \(f.environment) (\(f.host))\(f.grantID.map { ", grant \($0)" } ?? "")"
        }
    }

    /// Labelled detail lines, raw (each caller escapes the values for its channel). User text is marked `true`.
    public static func details(_ f: NotifyFacts) -> [(label: String, value: String, user: Bool)] {
        var d: [(String, String, Bool)] = []
        if let r = f.request {
            d.append(("Who", r.user, false))
            d.append(("What", r.scope.summary + (r.runAs.isEmpty || r.scope.name == "login" ? "" : " as \(r.runAs)"), true))
            for w in CommandRisk.warnings(for: r.scope) { d.append(("WARNING", w, true)) }
            d.append(("Where", "\(r.environment) on \(f.host)", false))
            d.append(("Why", r.reason, true))
            d.append(("How long", Durations.format(r.duration), false))
            if let t = r.ticket { d.append(("Ticket", t, true)) }
            if let x = r.extends { d.append(("Extends", "grant \(x)", false)) }
            d.append(("Rule", r.rule, false))
            if !r.rhost.isEmpty { d.append(("From", r.rhost, true)) }
        }
        if f.event == .decision, let c = f.request?.comment, !c.isEmpty { d.append(("Comment", c, true)) }
        if !f.approverGroups.isEmpty { d.append(("Approvers", f.approverGroups.joined(separator: ", "), false)) }
        if f.event == .sudoers || f.event == .expiring || (f.event == .breakGlass && f.request == nil) {
            for (k, v) in f.details { d.append((k, v, true)) }
        }
        return d
    }

    public static func commands(_ f: NotifyFacts) -> [String] {
        guard let r = f.request, f.event == .request || f.event == .escalation else { return [] }
        return ["jit approve \(r.id)", "jit deny \(r.id)"]
    }

    /// Plain text (email bodies and the webhook's `text`): one sanitised line per field.
    public static func plain(_ f: NotifyFacts) -> String {
        var lines = [headline(f), ""]
        for (l, v, _) in details(f) { lines.append("\(l): \(line(v))") }
        let cmds = commands(f)
        if !cmds.isEmpty {
            lines.append("")
            lines.append("Approve: \(cmds[0])")
            lines.append("Deny:    \(cmds[1])")
        }
        if let u = f.pageURL { lines.append("Page:    \(u)") }
        return lines.joined(separator: "\n")
    }

    /// A Slack-compatible incoming-webhook body: `{"text": ...}`.
    public static func slack(_ f: NotifyFacts) -> String {
        var lines = ["*\(slackEscape(headline(f)))*"]
        for (l, v, _) in details(f) { lines.append("*\(l):* \(slackEscape(v))") }
        let cmds = commands(f)
        if !cmds.isEmpty { lines.append("Approve: `\(cmds[0])`   Deny: `\(cmds[1])`") }
        if let u = f.pageURL { lines.append("<\(slackEscape(u))|Open request \(f.request.map { String($0.id) } ?? "") on the web page>") }
        return json(["text": lines.joined(separator: "\n")])
    }

    /// The documented webhook body (README, "Notifications").
    public static func webhook(_ f: NotifyFacts) -> String {
        var o: [String: Any] = [
            "version": 1, "event": f.event.rawValue, "kind": f.kind, "id": f.eventID, "at": Timestamps.format(f.at),
            "host": f.host, "environment": f.environment, "actor": f.actor, "user": f.user, "text": plain(f),
        ]
        if let r = f.request {
            var req: [String: Any] = [
                "id": r.id, "user": r.user, "environment": r.environment, "scope": r.scope.name, "commands": r.scope.commands,
                "runas": r.runAs, "duration": Durations.format(r.duration), "duration_seconds": r.duration, "reason": r.reason,
                "state": r.state.rawValue, "rule": r.rule, "created_at": Timestamps.format(r.createdAt),
            ]
            if let t = r.ticket { req["ticket"] = t }
            if let c = r.comment { req["comment"] = c }
            if let b = r.decidedBy { req["decided_by"] = b }
            if !r.rhost.isEmpty { req["rhost"] = r.rhost }
            o["request"] = req
        }
        if let g = f.grantID {
            var gr: [String: Any] = ["id": g]
            if let e = f.grantExpiresAt { gr["expires_at"] = Timestamps.format(e) }
            o["grant"] = gr
        }
        if !f.approverGroups.isEmpty { o["approver_groups"] = f.approverGroups }
        if let t = f.tier { o["tier"] = t }
        let cmds = commands(f)
        if !cmds.isEmpty { o["approve_command"] = cmds[0]; o["deny_command"] = cmds[1] }
        if let u = f.pageURL { o["page_url"] = u }
        if !f.details.isEmpty { o["details"] = Dictionary(f.details, uniquingKeysWith: { a, _ in a }) }
        return json(o)
    }

    static func json(_ o: [String: Any]) -> String {
        let d = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: d, as: UTF8.self)
    }

    /// The subject: fixed words and IDs only, never user text.
    public static func subject(_ f: NotifyFacts) -> String {
        let rid = f.request.map { String($0.id) } ?? "?"
        switch f.kind {
        case "request.filed": return "[jit] request \(rid) by \(f.user) waits for approval (\(f.environment))"
        case "request.escalated": return "[jit] request \(rid) by \(f.user) escalated to tier \(f.tier ?? 0) (\(f.environment))"
        case "breakglass.bypass":
            guard f.request != nil else { return "[jit] BREAK-GLASS by \(f.user) on \(f.host) (\(f.environment))" }
            return "[jit] BREAK-GLASS by \(f.user), request \(rid) (\(f.environment))"
        case "request.approved": return "[jit] request \(rid) approved (\(f.environment))"
        case "request.denied": return "[jit] request \(rid) denied (\(f.environment))"
        case "request.expired": return "[jit] request \(rid) expired unanswered (\(f.environment))"
        case "grant.expiring": return "[jit] grant \(f.grantID.map(String.init) ?? "?") ends soon (\(f.environment))"
        default: return "[jit] sudoers problem on \(f.host) (\(f.environment))"
        }
    }
}

/// An RFC 5322 message, text/plain UTF-8. Header values that would carry a CR, LF or other control
/// character are refused (no header injection); the body is normalised to CRLF lines.
public enum EmailMessage {
    public struct Refused: Error, Sendable, Equatable { public var message: String }

    public static func header(_ name: String, _ value: String) throws(Refused) -> String {
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw Refused(message: "the \(name) header would contain a control character (CR/LF injection); refused")
        }
        guard value.unicodeScalars.allSatisfy({ $0.isASCII }) else {
            throw Refused(message: "the \(name) header must be ASCII")
        }
        return "\(name): \(value)\r\n"
    }

    public static func render(from: String, to: [String], subject: String, body: String, messageID: String, date: Date) throws(Refused) -> String {
        for a in [from] + to where !Email.isAddress(a) { throw Refused(message: "'\(NotifyRender.line(a))' is not a plain address") }
        var m = ""
        m += try header("From", "jit-access <\(from)>")
        m += try header("To", to.joined(separator: ", "))
        m += try header("Subject", subject)
        m += try header("Date", rfc5322(date))
        m += try header("Message-ID", "<\(messageID)>")
        m += try header("MIME-Version", "1.0")
        m += try header("Content-Type", "text/plain; charset=utf-8")
        m += try header("Content-Transfer-Encoding", "8bit")
        m += try header("Auto-Submitted", "auto-generated")
        m += "\r\n"
        let lines = body.split(separator: "\n", omittingEmptySubsequences: false).map { NotifyRender.line(String($0)) }
        m += lines.joined(separator: "\r\n") + "\r\n"
        return m
    }

    static func rfc5322(_ d: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        return f.string(from: d)
    }
}
