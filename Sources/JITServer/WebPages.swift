import Foundation
import JITCore

/// The HTML of the web approval page, rendered on the server. Every text that comes from a request, a user
/// or the engine goes through `esc`; nothing else is ever interpolated into markup. No scripts at all.
enum WebPages {
    /// HTML-escapes text for element content and quoted attribute values.
    static func esc(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// One page: a header with who is signed in and the way out, then `body`.
    static func layout(title: String, user: String?, csrf: String?, notice: Notice? = nil, body: String) -> String {
        var nav = ""
        if let user, let csrf {
            nav = """
                <nav><a href="/web/">Pending</a> <a href="/web/mine">My requests</a>
                <span class="who">signed in as <b>\(esc(user))</b></span>
                <form method="post" action="/web/logout" class="inline"><input type="hidden" name="csrf" value="\(esc(csrf))"><button class="link">Sign out</button></form></nav>
                """
        }
        let banner = notice.map { "<p class=\"notice \($0.kind.rawValue)\" role=\"status\">\(esc($0.text))</p>" } ?? ""
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(esc(title)) · jit-access</title><link rel="stylesheet" href="/web/style.css"></head>
            <body><header><a class="brand" href="/web/">jit-access</a>\(nav)</header>
            <main>\(banner)
            \(body)
            </main></body></html>
            """
    }

    struct Notice {
        enum Kind: String { case good, bad }
        var kind: Kind
        var text: String
    }

    /// A page that only says something (errors, signed out, not signed in).
    static func message(title: String, text: String, user: String? = nil, csrf: String? = nil) -> String {
        layout(title: title, user: user, csrf: csrf, body: "<h1>\(esc(title))</h1><p class=\"lead\">\(esc(text))</p>")
    }

    /// The first value of `key` in a record.
    static func v(_ r: [(String, String)], _ key: String) -> String? { r.first { $0.0 == key }?.1 }
    static func all(_ r: [(String, String)], _ key: String) -> [String] { r.filter { $0.0 == key }.map(\.1) }

    /// "in 4m 10s" / "ended" for a timestamp field, as seen at `now`.
    static func timeLeft(_ stamp: String?, now: Date) -> String {
        guard let s = stamp, let d = Timestamps.parse(s) else { return "?" }
        let left = Int64(d.timeIntervalSince(now).rounded(.down))
        return left > 0 ? "in " + Durations.format(left) : "passed"
    }

    /// What the request asks for, in one line: scope, and its commands when it has some.
    static func what(_ r: [(String, String)]) -> String {
        let scope = v(r, "scope") ?? "?"
        let cmds = all(r, "command")
        let runas = v(r, "runas").map { $0.isEmpty || $0 == "root" ? "" : " as \($0)" } ?? ""
        return cmds.isEmpty ? scope + runas : "\(scope)\(runas): \(cmds.joined(separator: "; "))"
    }

    /// Pending requests the signed-in person may decide (or, for others, their own).
    static func pending(_ records: [[(String, String)]], user: String, csrf: String, now: Date) -> String {
        var rows = ""
        for r in records {
            let id = esc(v(r, "id") ?? "?")
            rows += """
                <tr><td><a href="/web/requests/\(id)">#\(id)</a></td><td>\(esc(v(r, "user") ?? "?"))</td>
                <td>\(esc(v(r, "environment") ?? "?"))</td><td>\(esc(what(r)))</td><td class="reason">\(esc(v(r, "reason") ?? ""))</td>
                <td>\(esc(timeLeft(v(r, "expires_at"), now: now)))</td><td><a class="button" href="/web/requests/\(id)">Review</a></td></tr>
                """
        }
        let table = records.isEmpty
            ? "<p class=\"lead\">Nothing is waiting for a decision.</p>"
            : """
                <table><thead><tr><th>Request</th><th>Who</th><th>Where</th><th>What</th><th>Why</th><th>Expires</th><th></th></tr></thead>
                <tbody>\(rows)</tbody></table>
                """
        return layout(title: "Pending requests", user: user, csrf: csrf, body: "<h1>Pending requests</h1>\n" + table)
    }

    /// One request in full, with the decision form while it is pending.
    static func request(_ r: [(String, String)], user: String, csrf: String, now: Date, notice: Notice?) -> String {
        let id = esc(v(r, "id") ?? "?")
        let state = v(r, "state") ?? "?"
        var facts: [(String, String)] = [
            ("Who", v(r, "user") ?? "?"),
            ("What", what(r)),
            ("Where", ([v(r, "environment") ?? "?"] + all(r, "host")).joined(separator: ", ")),
            ("For", v(r, "duration").flatMap { Int64($0) }.map { Durations.format($0) } ?? "?"),
        ]
        if let t = v(r, "ticket") { facts.append(("Ticket", t)) }
        facts.append(("Rule", v(r, "rule") ?? "?"))
        if let u = v(r, "uses") { facts.append(("Uses", u)) }
        facts.append(("Filed", v(r, "created_at") ?? "?"))
        if state == "pending" { facts.append(("Time left", timeLeft(v(r, "expires_at"), now: now))) }
        let approvals = all(r, "approval")
        facts.append(("Approvals so far", approvals.isEmpty ? "none" : approvals.joined(separator: ", ")))
        if let b = v(r, "decided_by") { facts.append(("Decided by", b + (v(r, "decided_at").map { " at \($0)" } ?? ""))) }
        if let c = v(r, "comment") { facts.append(("Comment", c)) }
        if let g = v(r, "grant") { facts.append(("Grant", "#" + g)) }
        let dl = facts.map { "<dt>\(esc($0.0))</dt><dd>\(esc($0.1))</dd>" }.joined(separator: "\n")
        let warnings = all(r, "warning").map { "<li>\(esc($0))</li>" }.joined()
        var body = """
            <h1>Request #\(id) <span class="state \(esc(state))">\(esc(state))</span></h1>
            <p class="lead"><b>\(esc(v(r, "user") ?? "?"))</b> asks for <b>\(esc(what(r)))</b> on <b>\(esc(v(r, "environment") ?? "?"))</b>\
            \(v(r, "duration").flatMap { Int64($0) }.map { " for " + esc(Durations.format($0)) } ?? "")</p>
            <section class="why"><h2>Reason</h2><p class="reason">\(esc(v(r, "reason") ?? ""))</p></section>
            """
        if !warnings.isEmpty { body += "<ul class=\"warnings\">\(warnings)</ul>" }
        if state == "pending" {
            // The code field only where the request's rule asks approvers for one (`mfa: 1` from the engine's
            // `show`); the engine requires the code for such a rule whatever this form sends.
            let otp = v(r, "mfa") != "1" ? "" : """
                <label for="otp">One-time code (rule \(esc(v(r, "rule") ?? "?")) asks approvers for one: your authenticator app's code)</label>
                <input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6,8}" maxlength="8">
                """
            body += """
                <form method="post" action="/web/requests/\(id)" class="decide">
                <input type="hidden" name="csrf" value="\(esc(csrf))">
                <label for="comment">Comment</label><textarea id="comment" name="comment" rows="2" maxlength="500"></textarea>
                \(otp)
                <div class="buttons"><button id="approve" name="decision" value="approve" class="approve">Approve</button>
                <button id="deny" name="decision" value="deny" class="deny">Deny</button></div>
                </form>
                """
        }
        body += "<dl>\(dl)</dl>"
        return layout(title: "Request #\(v(r, "id") ?? "?")", user: user, csrf: csrf, notice: notice, body: body)
    }

    /// The person's own requests and grants.
    static func mine(requests: [[(String, String)]], grants: [[(String, String)]], user: String, csrf: String, now: Date) -> String {
        let rrows = requests.map { r -> String in
            let id = esc(v(r, "id") ?? "?")
            return """
                <tr><td><a href="/web/requests/\(id)">#\(id)</a></td><td><span class="state \(esc(v(r, "state") ?? ""))">\(esc(v(r, "state") ?? "?"))</span></td>
                <td>\(esc(v(r, "environment") ?? "?"))</td><td>\(esc(what(r)))</td><td class="reason">\(esc(v(r, "reason") ?? ""))</td><td>\(esc(v(r, "created_at") ?? ""))</td></tr>
                """
        }.joined(separator: "\n")
        let grows = grants.map { g -> String in
            let active = v(g, "state") == "active"
            return """
                <tr><td>#\(esc(v(g, "id") ?? "?"))</td><td><span class="state \(esc(v(g, "state") ?? ""))">\(esc(v(g, "state") ?? "?"))</span></td>
                <td>\(esc(v(g, "environment") ?? "?"))</td><td>\(esc(what(g)))</td><td>\(esc(active ? timeLeft(v(g, "expires_at"), now: now) : (v(g, "ended_at") ?? v(g, "expires_at") ?? "")))</td></tr>
                """
        }.joined(separator: "\n")
        let body = """
            <h1>My requests</h1>
            \(requests.isEmpty ? "<p class=\"lead\">You have filed no requests.</p>" : "<table><thead><tr><th>Request</th><th>State</th><th>Where</th><th>What</th><th>Why</th><th>Filed</th></tr></thead><tbody>\(rrows)</tbody></table>")
            <h1>My grants</h1>
            \(grants.isEmpty ? "<p class=\"lead\">You have no grants.</p>" : "<table><thead><tr><th>Grant</th><th>State</th><th>Where</th><th>What</th><th>Ends</th></tr></thead><tbody>\(grows)</tbody></table>")
            """
        return layout(title: "My requests", user: user, csrf: csrf, body: body)
    }

    /// The page a one-time link opens: one button, so that a link previewer fetching the URL does not use it up.
    static func confirmLogin(user: String, code: String, csrf: String) -> String {
        layout(title: "Sign in", user: nil, csrf: nil, body: """
            <h1>Sign in to jit-access</h1>
            <p class="lead">This link signs this browser in as <b>\(esc(user))</b> for 8 hours. It works once.</p>
            <form method="post" action="/web/login"><input type="hidden" name="code" value="\(esc(code))"><input type="hidden" name="csrf" value="\(esc(csrf))">
            <button id="signin" class="approve">Sign in as \(esc(user))</button></form>
            """)
    }

    /// The stylesheet (`/web/style.css`): plain, large targets, the reason and the buttons first.
    static let css = """
        :root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --good: #1a7f37; --bad: #cf222e; --accent: #0969da; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #f6f8fa; }
        header { display: flex; flex-wrap: wrap; align-items: center; gap: 1rem; padding: .75rem 1.5rem; background: #24292f; color: #fff; }
        header a { color: #fff; text-decoration: none; margin-right: 1rem; }
        header .brand { font-weight: 700; font-size: 1.1rem; }
        header nav { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; flex: 1; }
        header .who { margin-left: auto; color: #d0d7de; }
        main { max-width: 60rem; margin: 1.5rem auto; padding: 0 1.5rem; }
        h1 { font-size: 1.6rem; margin: 1rem 0; }
        h2 { font-size: 1rem; margin: 0 0 .25rem; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
        .lead { font-size: 1.1rem; }
        table { width: 100%; border-collapse: collapse; background: var(--bg); border: 1px solid var(--line); }
        th, td { text-align: left; padding: .5rem .75rem; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { background: #f6f8fa; font-weight: 600; }
        td.reason { max-width: 22rem; overflow-wrap: anywhere; }
        .why { background: var(--bg); border: 1px solid var(--line); border-left: 6px solid var(--accent); padding: 1rem 1.25rem; margin: 1rem 0; }
        .why .reason { font-size: 1.3rem; margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
        dl { display: grid; grid-template-columns: max-content 1fr; gap: .4rem 1.5rem; background: var(--bg); border: 1px solid var(--line); padding: 1rem 1.25rem; }
        dt { font-weight: 600; color: var(--muted); }
        dd { margin: 0; overflow-wrap: anywhere; }
        form.decide { background: var(--bg); border: 1px solid var(--line); padding: 1rem 1.25rem; margin: 1rem 0; display: grid; gap: .4rem; }
        label { font-weight: 600; }
        textarea, input { font: inherit; padding: .5rem; border: 1px solid var(--line); border-radius: 6px; width: 100%; }
        input#otp { max-width: 12rem; letter-spacing: .2em; }
        .buttons { display: flex; gap: 1rem; margin-top: .5rem; }
        button, a.button { font: inherit; font-weight: 600; border: 0; border-radius: 6px; padding: .6rem 1.6rem; cursor: pointer; color: #fff; background: var(--accent); text-decoration: none; display: inline-block; }
        button.approve { background: var(--good); font-size: 1.15rem; }
        button.deny { background: var(--bad); font-size: 1.15rem; }
        button.link { background: none; color: #fff; padding: 0; text-decoration: underline; font-weight: 400; }
        form.inline { display: inline; }
        .state { font-size: .8rem; font-weight: 600; padding: .15rem .6rem; border-radius: 1rem; background: #eaeef2; vertical-align: middle; }
        .state.pending { background: #fff8c5; } .state.approved, .state.active { background: #dafbe1; } .state.denied, .state.revoked { background: #ffebe9; }
        .notice { padding: .75rem 1rem; border-radius: 6px; font-weight: 600; }
        .notice.good { background: #dafbe1; border: 1px solid var(--good); }
        .notice.bad { background: #ffebe9; border: 1px solid var(--bad); }
        ul.warnings { background: #fff8c5; border: 1px solid #d4a72c; padding: .75rem 2rem; }
        """
}
