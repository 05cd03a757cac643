public import ArgumentParser
import Foundation
import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// `jit`: ask for, approve and inspect just-in-time access on this host.
public struct JIT: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "jit",
        abstract: "Ask for, approve and inspect just-in-time access (ssh login, sudo) on this host.",
        discussion: """
            jit talks to the local agent jitd over its Unix socket: --socket, then $JIT_SOCKET, then \(Config.defaultSocket).
            Who you are comes from the kernel, not from anything you type.
            Against a control plane (--server, then $JIT_SERVER, then the server of 'jit login'), who you are is your login
            (an SSH key you proved) or $JIT_TOKEN; the commands, output and exit codes are the same.

            EXIT CODES
              0  success (for 'request --wait': access granted)
              1  jitd refused or failed (the message says why)
              2  usage error (bad option, bad duration)
              3  'request --wait', 'run': not granted (denied, cancelled, expired, or still pending at --timeout)
                 ('jit run' otherwise exits with the command's own status)
              4  jitd cannot be reached, or did not answer
              5  not allowed (you are not the owner, not an approver, or it is your own request)
              6  no such request or grant
            """,
        version: JITVersion.cliString,
        subcommands: [
            Request.self, Run.self, List.self, Show.self, Approve.self, Deny.self, Cancel.self, Grants.self, Revoke.self, Extend.self, Status.self,
            PolicyCommand.self, MFA.self, Audit.self, Replay.self, Login.self, Logout.self, Web.self,
        ]
    )
    public init() {}

    /// Runs the command tree; errors become one sentence on stderr and the documented exit code.
    public static func runMain() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            Glibc.exit(0)
        } catch let e as CLIError {
            printErr("jit: \(e.message)")
            Glibc.exit(e.code)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            printErr(fullMessage(for: error))
            Glibc.exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}

public enum JITVersion {
    public static let cliString = "0.1.0"
}

func printErr(_ s: String) {
    var b = Array((s.hasSuffix("\n") ? s : s + "\n").utf8)
    _ = write(2, &b, b.count)
}

struct Connection: ParsableArguments {
    @Option(help: "The jitd socket (default: $JIT_SOCKET, then \(Config.defaultSocket)).") var socket: String?
    @Option(help: "The control plane's URL (default: $JIT_SERVER, then the server of 'jit login'); the bearer token is $JIT_TOKEN or the login's.")
    var server: String?
    @Option(help: "With --server: the CA that issued the server's certificate (default: $JIT_CA, the login's, or the system's).") var ca: String?

    var path: String {
        if let s = socket { return s }
        if let e = ProcessInfo.processInfo.environment["JIT_SOCKET"], !e.isEmpty { return e }
        return Config.defaultSocket
    }

    /// The control plane this command goes to, if any (see `Remote.resolve`).
    func remote() throws(CLIError) -> Remote? {
        let explicitSocket = socket ?? ProcessInfo.processInfo.environment["JIT_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        return try Remote.resolve(server: server, ca: ca, socket: explicitSocket)
    }

    /// `wait` for a request's decision: on the socket, one call that parks (and cancels the request when the
    /// client goes away); over the server, calls of at most 25 s until the decision or `timeout`.
    func wait(request id: Int64, timeout: Int64) throws(CLIError) -> Message {
        let t = min(timeout, 3600)
        if let r = try remote() {
            // Locally, jitd cancels the request when the waiting client goes away (cancel_on_close); over HTTPS
            // nothing notices, so the CLI itself sends the cancel on Ctrl-C or SIGTERM, then ends as locally.
            let interrupt = CancelOnInterrupt(request: id, remote: r)
            defer { interrupt.stop() }
            let deadline = Date().addingTimeInterval(Double(t))
            while true {
                let left = Int64(max(deadline.timeIntervalSinceNow.rounded(.up), 0))
                let w = try r.call(Message("wait", [("request", String(id)), ("timeout", String(min(left, 25)))]), timeout: 40)
                if w["decision"] != "pending" || left <= 0 { return w }
            }
        }
        let c = try Client(path: path)
        defer { c.close() }
        let w = try c.call(Message("wait", [("request", String(id)), ("timeout", String(t)), ("cancel_on_close", "1")]), timeout: Double(t) + 10)
        guard w.isOK else { throw CLIError.from(w) }
        return w
    }

    /// A listing, page by page (`next=` / `before=`), all records in order.
    func all(_ m: Message) throws(CLIError) -> [[(String, String)]] {
        var out: [[(String, String)]] = []
        var req = m
        for _ in 0..<100_000 {
            let r = try call(req)
            out += r.records
            guard let next = r["next"] else { break }
            req = m
            req.add("before", next)
        }
        return out
    }

    /// One request, one reply; an error reply becomes a CLIError.
    func call(_ m: Message, timeout: Double = 10) throws(CLIError) -> Message {
        if let r = try remote() { return try r.call(m, timeout: max(timeout, 30)) }
        let c = try Client(path: path)
        defer { c.close() }
        let r = try c.call(m, timeout: timeout)
        guard r.isOK else { throw CLIError.from(r) }
        return r
    }
}

func parseID(_ s: String, _ what: String) throws -> Int64 {
    guard let n = Int64(s), n > 0 else { throw ArgumentParser.ValidationError("'\(s)' is not a \(what) ID; IDs are positive whole numbers (see 'jit list' / 'jit grants')") }
    return n
}

struct Request: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask for access: login (default), sudo for all commands (--sudo), or listed commands (--command).")

    @OptionGroup var connection: Connection
    @Option(name: .customLong("for"), parsing: .unconditional, help: "How long, like 90s, 30m, 1h30m.") var duration: String
    @Option(help: "Why you need it (approvers see this).") var reason: String = ""
    @Option(help: "Environment (default: this host's).") var env: String?
    @Option(name: .customLong("host"), help: "In a fleet: a host the grant is for (repeat for more; default every host of the environment that the rule's labels allow).")
    var hosts: [String] = []
    @Flag(help: "Ask for sudo with any command.") var sudo = false
    @Option(name: .customLong("command"), help: "A command to run with sudo: an absolute path with exact arguments. Repeat for more.") var commands: [String] = []
    @Option(help: "The user to run commands as (default root).") var runas: String?
    @Option(help: "A ticket reference, like OPS-123 (some rules require one).") var ticket: String?
    @Flag(name: .customLong("break-glass"), help: "Emergency access at once, without approval (break-glass groups only; always audited, every approver is notified).")
    var breakGlass = false
    @Flag(help: "Wait for the decision; exit 0 only when access is granted.") var wait = false
    @Option(help: "With --wait: give up after this long (default 1h).") var timeout: String = "1h"
    @Flag(help: "Print JSON.") var json = false

    var seconds: Int64 = 0

    mutating func validate() throws {
        do { seconds = try Durations.parse(duration) } catch { throw ArgumentParser.ValidationError("--for: \(error.message)") }
        if sudo && !commands.isEmpty { throw ArgumentParser.ValidationError("use either --sudo (all commands) or --command (listed ones), not both") }
        if runas != nil && !sudo && commands.isEmpty { throw ArgumentParser.ValidationError("--runas goes with --sudo or --command") }
        for c in commands where !c.hasPrefix("/") {
            throw ArgumentParser.ValidationError("--command '\(c)' must be an absolute path, like /usr/bin/systemctl restart nginx")
        }
        if reason.utf8.count > Limits.reasonBytes { throw ArgumentParser.ValidationError("--reason is \(reason.utf8.count) bytes; keep it under \(Limits.reasonBytes)") }
        if wait {
            do { _ = try Durations.parse(timeout) } catch { throw ArgumentParser.ValidationError("--timeout: \(error.message)") }
        }
    }

    func run() throws {
        var m = Message("request", [("for", String(seconds)), ("reason", reason)])
        m.add("scope", sudo ? "sudo" : (commands.isEmpty ? "login" : "commands"))
        for c in commands { m.add("command", c) }
        if let env { m.add("env", env) }
        for h in hosts { m.add("host", h) }
        if let runas { m.add("runas", runas) }
        if let ticket { m.add("ticket", ticket) }
        if breakGlass { m.add("break_glass", "1") }
        let reply = try connection.call(m)
        let r = RequestView(reply.fields)
        if !json { for w in r.warnings { printErr("jit: warning: \(Output.clean(w)); approvers see this warning") } }
        if r.state == "approved" {
            if json { print(Output.json(r)); return }
            let grant = r.grant_id.map { "grant \($0)" } ?? "a grant"
            if r.approved_via == "break-glass" {
                print("BREAK-GLASS: request \(r.id) granted at once: \(grant) gives you \(r.scopeText) in \(r.environment) for \(Durations.format(r.duration)).")
                print("This bypass is recorded and every approver is notified.")
            } else {
                print("request \(r.id) approved automatically by rule '\(r.rule)': \(grant) gives you \(r.scopeText) in \(r.environment) for \(Durations.format(r.duration)).")
            }
            return
        }
        if !wait {
            if json { print(Output.json(r)) } else {
                print("request \(r.id) filed: \(r.scopeText) in \(r.environment) for \(Durations.format(r.duration)); waiting for approval.")
                // A fleet host says where the request went (or that the control plane cannot be reached).
                print(reply["message"].map(Output.clean) ?? "An approver runs: jit approve \(r.id)")
            }
            return
        }
        if !json {
            print("request \(r.id) filed: \(r.scopeText) in \(r.environment) for \(Durations.format(r.duration)).")
            if let msg = reply["message"] { print(Output.clean(msg)) }
            print("Waiting for approval\(reply["message"] == nil ? " (an approver runs: jit approve \(r.id))" : ""); Ctrl-C stops waiting and cancels it.")
        }
        let t = (try? Durations.parse(timeout)) ?? 3600
        let w = try connection.wait(request: r.id, timeout: t)
        let decision = w["decision"] ?? "deny"
        if json {
            let shown = try connection.call(Message("show", [("id", String(r.id))]))
            print(Output.json(RequestView(shown.fields)))
        } else {
            print(Output.clean(w["message"] ?? decision))
        }
        if decision != "allow" { throw CLIError(code: 3, message: decision == "pending" ? "request \(r.id) is still pending after \(timeout)" : "request \(r.id) was not granted (\(w["state"] ?? decision))") }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List requests (yours; approvers and root see everyone's).")
    @OptionGroup var connection: Connection
    @Flag(help: "Only pending requests.") var pending = false
    @Flag(help: "Only your own requests.") var mine = false
    @Flag(help: "Print JSON (an array).") var json = false

    func run() throws {
        let rs = try connection.all(Message("list", [("pending", pending ? "1" : "0"), ("mine", mine ? "1" : "0")])).map(RequestView.init)
        if json { print(Output.json(rs)); return }
        if rs.isEmpty { print(pending ? "No pending requests." : "No requests."); return }
        print(Output.table(["ID", "STATE", "USER", "ENV", "SCOPE", "FOR", "CREATED", "REASON"],
            rs.map { [String($0.id), $0.state, $0.user, $0.environment, $0.scopeText, Durations.format($0.duration), $0.created_at, String($0.reason.prefix(60))] }))
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one request.")
    @OptionGroup var connection: Connection
    @Argument(help: "The request ID.") var id: String
    @Flag(help: "Print JSON.") var json = false
    func validate() throws { _ = try parseID(id, "request") }
    func run() throws {
        let r = RequestView(try connection.call(Message("show", [("id", id)])).fields)
        print(json ? Output.json(r) : Output.describe(r))
    }
}

struct Approve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Approve someone else's request (approver groups only).")
    @OptionGroup var connection: Connection
    @Argument(help: "The request ID.") var id: String
    @Option(help: "A comment for the record.") var comment: String?
    @Option(help: "The current code of your authenticator app, when the rule asks approvers for one (see 'jit mfa enroll').") var otp: String?
    @Flag(help: "Print JSON.") var json = false
    func validate() throws {
        _ = try parseID(id, "request")
        if let otp, otp.count != 6 || !otp.allSatisfy(\.isASCII) || !otp.allSatisfy(\.isNumber) {
            throw ArgumentParser.ValidationError("--otp must be the 6-digit code your authenticator app shows")
        }
    }
    func run() throws {
        var m = Message("approve", [("id", id)])
        if let comment { m.add("comment", comment) }
        if let otp { m.add("otp", otp) }
        let r = RequestView(try connection.call(m).fields)
        if json { print(Output.json(r)); return }
        if r.state == "approved" {
            print("request \(r.id) approved: grant \(r.grant_id.map(String.init) ?? "?") gives \(r.user) \(r.scopeText) for \(Durations.format(r.duration)).")
        } else {
            print("request \(r.id): your approval is recorded; \(r.approvals_needed ?? 1) more needed.")
        }
    }
}

struct Deny: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deny someone else's request (approver groups only).")
    @OptionGroup var connection: Connection
    @Argument(help: "The request ID.") var id: String
    @Option(help: "A comment for the record (the requester sees it).") var comment: String?
    @Flag(help: "Print JSON.") var json = false
    func validate() throws { _ = try parseID(id, "request") }
    func run() throws {
        var m = Message("deny", [("id", id)])
        if let comment { m.add("comment", comment) }
        let r = RequestView(try connection.call(m).fields)
        print(json ? Output.json(r) : "request \(r.id) denied.")
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel your own pending request.")
    @OptionGroup var connection: Connection
    @Argument(help: "The request ID.") var id: String
    @Flag(help: "Print JSON.") var json = false
    func validate() throws { _ = try parseID(id, "request") }
    func run() throws {
        let r = RequestView(try connection.call(Message("cancel", [("request", id)])).fields)
        print(json ? Output.json(r) : "request \(r.id) cancelled.")
    }
}

struct Grants: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List grants (yours; approvers and root see everyone's).")
    @OptionGroup var connection: Connection
    @Flag(help: "Only active grants.") var active = false
    @Flag(help: "Only your own grants.") var mine = false
    @Flag(help: "Print JSON (an array).") var json = false
    func run() throws {
        let gs = try connection.all(Message("grants", [("active", active ? "1" : "0"), ("mine", mine ? "1" : "0")])).map(GrantView.init)
        if json { print(Output.json(gs)); return }
        if gs.isEmpty { print(active ? "No active grants." : "No grants."); return }
        print(Output.table(["ID", "REQUEST", "STATE", "USER", "ENV", "SCOPE", "EXPIRES", "ENDED BY"],
            gs.map { [String($0.id), String($0.request_id), $0.state, $0.user, $0.environment, $0.scopeText, $0.expires_at, $0.ended_by ?? ""] }))
    }
}

struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "End a grant now (root or approvers).")
    @OptionGroup var connection: Connection
    @Argument(help: "The grant ID (see 'jit grants').") var id: String
    @Flag(help: "Print JSON.") var json = false
    func validate() throws { _ = try parseID(id, "grant") }
    func run() throws {
        let g = GrantView(try connection.call(Message("revoke", [("id", id)])).fields)
        print(json ? Output.json(g) : "grant \(g.id) of \(g.user) revoked.")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the agent's state.")
    @OptionGroup var connection: Connection
    @Flag(help: "Print JSON.") var json = false

    struct View: Codable {
        var version: String
        var environment: String
        var uptime: Int64
        var pending: Int
        var active_grants: Int
        var database: String
        var socket: String
        var next_expiry: String?
        var notify_channels: Int
        var outbox_pending: Int
        var outbox_failed: Int
    }

    func run() throws {
        let m = try connection.call(Message("status"))
        let v = View(version: m["version"] ?? "", environment: m["environment"] ?? "", uptime: Int64(m["uptime"] ?? "") ?? 0,
                     pending: Int(m["pending"] ?? "") ?? 0, active_grants: Int(m["active_grants"] ?? "") ?? 0,
                     database: m["database"] ?? "", socket: m["socket"] ?? "", next_expiry: m["next_expiry"],
                     notify_channels: Int(m["notify_channels"] ?? "") ?? 0, outbox_pending: Int(m["outbox_pending"] ?? "") ?? 0,
                     outbox_failed: Int(m["outbox_failed"] ?? "") ?? 0)
        if json { print(Output.json(v)); return }
        print("""
            jitd \(v.version), environment \(v.environment), up \(Durations.format(max(v.uptime, 1)))
            pending requests: \(v.pending)
            active grants:    \(v.active_grants)\(v.next_expiry.map { "\nnext expiry:      \($0)" } ?? "")
            database:         \(v.database)
            socket:           \(v.socket)
            notifications:    \(v.outbox_pending) pending, \(v.outbox_failed) failed (\(v.notify_channels) channels)\(v.outbox_failed > 0 ? "; see 'jit audit' for notify.failed" : "")
            """)
    }
}
