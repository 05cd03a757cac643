import ArgumentParser
import Foundation
import JITCore

struct Extend: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask for more time on one of your active grants (decided under the same rules as a new request).")
    @OptionGroup var connection: Connection
    @Argument(help: "The grant ID (see 'jit grants').") var id: String
    @Option(name: .customLong("for"), parsing: .unconditional, help: "How much more time, like 30m or 1h.") var duration: String
    @Option(help: "Why you need more time (approvers see this).") var reason: String = ""
    @Option(help: "A ticket reference, like OPS-123 (some rules require one).") var ticket: String?
    @Flag(help: "Print JSON.") var json = false

    var seconds: Int64 = 0

    mutating func validate() throws {
        _ = try parseID(id, "grant")
        do { seconds = try Durations.parse(duration) } catch { throw ArgumentParser.ValidationError("--for: \(error.message)") }
        if reason.utf8.count > Limits.reasonBytes { throw ArgumentParser.ValidationError("--reason is \(reason.utf8.count) bytes; keep it under \(Limits.reasonBytes)") }
    }

    func run() throws {
        var m = Message("extend", [("grant", id), ("for", String(seconds)), ("reason", reason)])
        if let ticket { m.add("ticket", ticket) }
        let r = RequestView(try connection.call(m).fields)
        if json { print(Output.json(r)); return }
        if r.state == "approved" {
            print("grant \(id) extended by \(Durations.format(r.duration)) (request \(r.id), approved automatically by rule '\(r.rule)').")
        } else {
            print("request \(r.id) filed: extend grant \(id) by \(Durations.format(r.duration)); waiting for approval.")
            print("An approver runs: jit approve \(r.id)")
        }
    }
}

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Look at the policy.", subcommands: [Explain.self])
}

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tell which rule would decide a request and why (a dry run: nothing is filed).",
        discussion: "Root and approvers may explain for anyone; other users for themselves.")
    @OptionGroup var connection: Connection
    @Option(help: "The user who would ask.") var user: String
    @Option(help: "Environment (default: this host's).") var env: String?
    @Flag(help: "Sudo with any command.") var sudo = false
    @Option(name: .customLong("command"), help: "A sudo command (absolute path with exact arguments). Repeat for more.") var commands: [String] = []
    @Option(help: "The run-as user.") var runas: String?
    @Option(name: .customLong("for"), help: "How long, like 1h.") var duration: String?
    @Option(help: "The source address the request would come from (for rules with 'sources').") var rhost: String?
    @Option(help: "A ticket reference.") var ticket: String?
    @Option(help: "Evaluate at this time (RFC 3339, e.g. 2026-11-23T10:00:00Z) instead of now.") var at: String?
    @Flag(help: "Print JSON.") var json = false

    var seconds: Int64?

    mutating func validate() throws {
        if sudo && !commands.isEmpty { throw ArgumentParser.ValidationError("use either --sudo (all commands) or --command (listed ones), not both") }
        if let duration {
            do { seconds = try Durations.parse(duration) } catch { throw ArgumentParser.ValidationError("--for: \(error.message)") }
        }
        if let at, Timestamps.parse(at) == nil { throw ArgumentParser.ValidationError("--at '\(at)' is not a time; write it like 2026-11-23T10:00:00Z") }
    }

    struct View: Codable {
        var user: String
        var environment: String
        var scope: String
        var decision: String
        var message: String
        var rule: String?
        var line: Int?
        var max_duration: Int64?
        var default_duration: Int64?
        var approvals: String?
        var mfa: Bool?
        var conditions: String?
        var ticket_pattern: String?
        var window_ends: String?
        var steps: [String]
    }

    func run() throws {
        var m = Message("explain", [("user", user), ("scope", sudo ? "sudo" : (commands.isEmpty ? "login" : "commands"))])
        for c in commands { m.add("command", c) }
        if let env { m.add("env", env) }
        if let runas { m.add("runas", runas) }
        if let seconds { m.add("for", String(seconds)) }
        if let rhost { m.add("rhost", rhost) }
        if let ticket { m.add("ticket", ticket) }
        if let at { m.add("at", at) }
        let r = try connection.call(m)
        let v = View(
            user: r["user"] ?? user, environment: r["environment"] ?? "", scope: r["scope"] ?? "", decision: r["decision"] ?? "",
            message: r["message"] ?? "", rule: r["rule"], line: r["line"].flatMap { Int($0) }, max_duration: r["max_duration"].flatMap { Int64($0) },
            default_duration: r["default_duration"].flatMap { Int64($0) }, approvals: r["approvals"], mfa: r["mfa"].map { $0 == "1" },
            conditions: r["conditions"], ticket_pattern: r["ticket_pattern"], window_ends: r["window_ends"], steps: r.all("step"))
        if json { print(Output.json(v)); return }
        var lines = ["\(v.decision): \(Output.clean(v.message))"]
        if let rule = v.rule {
            lines.append("rule:      \(rule)" + (v.line.map { " (config line \($0))" } ?? ""))
            if let mx = v.max_duration, let d = v.default_duration {
                lines.append("duration:  up to \(Durations.format(mx)) (default \(Durations.format(d)))")
            }
            if let a = v.approvals { lines.append("approvals: \(a)") }
            if let c = v.conditions, c != "none" { lines.append("when:      \(c)") }
            if let t = v.ticket_pattern { lines.append("ticket:    must match \(t)") }
        }
        lines.append("why:")
        lines += v.steps.map { "  - \(Output.clean($0))" }
        print(lines.joined(separator: "\n"))
    }
}

struct MFA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mfa", abstract: "One-time codes for approvers (TOTP, RFC 6238).", subcommands: [Enroll.self, Reset.self])
}

struct Enroll: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create your one-time code secret and show it once (add it to an authenticator app).",
        discussion: "If you are already enrolled, give a current code with --otp to replace the secret.")
    @OptionGroup var connection: Connection
    @Option(help: "A current code of your existing secret, to replace it.") var otp: String?
    @Flag(help: "Print JSON.") var json = false

    struct View: Codable {
        var user: String
        var secret: String
        var uri: String
    }

    func run() throws {
        var m = Message("mfa_enroll")
        if let otp { m.add("otp", otp) }
        let r = try connection.call(m)
        let v = View(user: r["user"] ?? "", secret: r["secret"] ?? "", uri: r["uri"] ?? "")
        if json { print(Output.json(v)); return }
        print("""
            One-time code secret for \(v.user) (shown once; jitd keeps it readable by root only):
              \(v.uri)
              secret: \(v.secret)
            Add it to an authenticator app (scan the URI as a QR code, or type the secret), then approve with:
              jit approve ID --otp CODE
            """)
    }
}

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a user's one-time code secret so they can enrol again (root only).")
    @OptionGroup var connection: Connection
    @Argument(help: "The user.") var user: String
    func run() throws {
        _ = try connection.call(Message("mfa_reset", [("user", user)]))
        print("the one-time code secret of \(user) is removed; they can run 'jit mfa enroll' again.")
    }
}
