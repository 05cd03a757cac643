import ArgumentParser
import Foundation
import JITCore
#if canImport(Glibc)
import Glibc
#endif

/// `jit run`: approval of one action. Files a request for exactly one command line, waits for the decision,
/// then runs it through `sudo -n --`, so that sudo (not jit) does the privileged part and its exit status is
/// the command's.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask for one command, wait for approval, and run it with sudo: jit run [options] -- COMMAND [ARGS...]",
        discussion: """
            COMMAND is resolved the way sudo resolves it (an absolute path as it is; a bare name in sudo's secure_path
            and your PATH, which must agree); a relative path or a name not found is refused before anything is filed.
            The request is for exactly that command line (and --runas user). While it waits, jit shows the request
            ID and who must approve; Ctrl-C cancels the request. Once granted, jit runs 'sudo -n -- COMMAND ARGS...'
            and exits with the command's status. Not granted: exit 3, and nothing runs.
            """)

    @OptionGroup var connection: Connection
    @Option(name: .customLong("for"), parsing: .unconditional, help: "How long the grant lasts, like 10m (default 10m).") var duration: String = "10m"
    @Option(help: "Why you need it (approvers see this).") var reason: String = ""
    @Option(help: "A ticket reference, like OPS-123 (some rules require one).") var ticket: String?
    @Option(help: "The user to run the command as (default root).") var runas: String?
    @Flag(help: "A one-shot grant: spent by this one use (some rules require it).") var once = false
    @Option(help: "Give up waiting after this long (default 1h).") var timeout: String = "1h"
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    var seconds: Int64 = 0
    var waitSeconds: Int64 = 3600

    mutating func validate() throws {
        do { seconds = try Durations.parse(duration) } catch { throw ArgumentParser.ValidationError("--for: \(error.message)") }
        do { waitSeconds = min(try Durations.parse(timeout), 3600) } catch { throw ArgumentParser.ValidationError("--timeout: \(error.message)") }
        guard !command.isEmpty else { throw ArgumentParser.ValidationError("give the command after --, like: jit run --reason TEXT -- /usr/bin/systemctl restart nginx") }
        if reason.utf8.count > Limits.reasonBytes { throw ArgumentParser.ValidationError("--reason is \(reason.utf8.count) bytes; keep it under \(Limits.reasonBytes)") }
    }

    /// The exact command line sudo will run, resolved like sudo, or a refusal naming why.
    static func resolve(_ argv: [String], path: String?) throws(CLIError) -> String {
        for a in argv {
            if a.isEmpty || a.contains(" ") || a.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
                throw CLIError(code: 2, message: "the argument '\(Output.clean(a))' is empty or has spaces or control characters; sudo joins arguments with spaces, so it cannot be granted exactly")
            }
        }
        switch SudoUse.resolve(argv.joined(separator: " "), userPath: path, isExecutable: { access($0, X_OK) == 0 && !isDirectory($0) }) {
        case .command(let line):
            return line
        case .nothing, .unsure:
            let first = argv[0]
            if first.contains("/") && !first.hasPrefix("/") {
                throw CLIError(code: 2, message: "'\(Output.clean(first))' is a relative path; give the absolute path (sudo would not run it as you mean)")
            }
            if first.hasPrefix("/") {
                throw CLIError(code: 2, message: "'\(Output.clean(first))' is not a normalised absolute path; write the real path without '.', '..' or '//'")
            }
            throw CLIError(code: 2, message: "'\(Output.clean(first))' is not found the same way in sudo's secure_path (\(SudoUse.debianSecurePath)) and your PATH; give its absolute path")
        }
    }

    static func isDirectory(_ p: String) -> Bool {
        var st = stat()
        return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    func run() throws {
        let line = try Run.resolve(command, path: ProcessInfo.processInfo.environment["PATH"])
        var m = Message("request", [("for", String(seconds)), ("reason", reason), ("scope", "commands"), ("command", line)])
        if let runas { m.add("runas", runas) }
        if let ticket { m.add("ticket", ticket) }
        if once { m.add("uses", "1") }
        let r = RequestView(try connection.call(m).fields)
        if r.state != "approved" {
            let who = (try? connection.call(Message("explain", [("user", r.user), ("scope", "commands"), ("command", line), ("runas", r.runas), ("for", String(seconds))])))?["approvals"]
            printErr("jit: request \(r.id) filed for '\(line)'\(r.runas == "root" || r.runas.isEmpty ? "" : " as \(r.runas)"): waiting for \(who.map(Output.clean) ?? "an approver") (an approver runs: jit approve \(r.id)); Ctrl-C cancels it.")
            let c = try Client(path: connection.path)
            defer { c.close() }
            let w = try c.call(Message("wait", [("request", String(r.id)), ("timeout", String(waitSeconds)), ("cancel_on_close", "1")]),
                               timeout: Double(waitSeconds) + 10)
            guard w.isOK else { throw CLIError.from(w) }
            guard w["decision"] == "allow" else {
                printErr("jit: \(Output.clean(w["message"] ?? "not granted"))")
                throw CLIError(code: 3, message: w["decision"] == "pending" ? "request \(r.id) is still pending after \(timeout); nothing was run" : "request \(r.id) was not granted (\(w["state"] ?? "denied")); nothing was run")
            }
            printErr("jit: request \(r.id) approved; running it.")
        } else {
            printErr("jit: request \(r.id) approved by rule '\(Output.clean(r.rule))'; running it.")
        }
        try Run.execSudo(line: line, runas: runas)
    }

    /// Replaces this process with `sudo -n [-u USER] -- PATH ARGS...`: the exit status is then the command's.
    static func execSudo(line: String, runas: String?) throws(CLIError) -> Never {
        var argv = ["sudo", "-n"]
        if let runas { argv += ["-u", runas] }
        argv.append("--")
        argv += line.split(separator: " ").map(String.init)
        let cargs = argv.map { strdup($0) } + [nil]
        execv("/usr/bin/sudo", cargs)
        throw CLIError(code: 1, message: "could not run /usr/bin/sudo: \(String(cString: strerror(errno)))")
    }
}

/// `jit replay GRANT [--session N]`: the sudo sessions recorded under a grant (`record:` rules), and what one
/// of them printed, played back by sudo's own `sudoreplay` inside jitd (the logs are root's).
struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a recorded grant's sudo sessions, or replay one (root and approvers; the requester their own).")
    @OptionGroup var connection: Connection
    @Argument(help: "The grant ID (see 'jit grants').") var grant: String
    @Option(help: "The session to replay (its TSID, from the listing).") var session: String?
    @Flag(help: "Print JSON.") var json = false
    func validate() throws { _ = try parseID(grant, "grant") }

    struct View: Codable {
        var session: String
        var at: String
        var runas: String
        var command: String
        var cwd: String
    }

    func run() throws {
        var m = Message("recordings", [("grant", grant)])
        if let session { m.add("session", session) }
        let r = try connection.call(m, timeout: 30)
        if session != nil {
            if json {
                print(Output.json(["grant": grant, "session": r["session"] ?? "", "command": r["command"] ?? "", "output": r["output"] ?? ""]))
                return
            }
            printErr("jit: grant \(grant), session \(Output.clean(r["session"] ?? "")): \(Output.clean(r["command"] ?? "")) as \(Output.clean(r["runas"] ?? ""))")
            // Control characters from the recording never reach this terminal raw (line breaks and tabs stay).
            let text = r["output"] ?? ""
            print(String(String.UnicodeScalarView(text.unicodeScalars.map {
                $0 == "\n" || $0 == "\t" ? $0 : ($0.properties.generalCategory == .control || $0.properties.generalCategory == .format ? "?" : $0)
            })), terminator: text.hasSuffix("\n") ? "" : "\n")
            return
        }
        func v(_ f: [(String, String)], _ k: String) -> String { f.first { $0.0 == k }?.1 ?? "" }
        let rows = r.records.map { View(session: v($0, "session"), at: v($0, "at"), runas: v($0, "runas"), command: v($0, "command"), cwd: v($0, "cwd")) }
        if json { print(Output.json(rows)); return }
        if rows.isEmpty { print("No recorded sessions for grant \(grant) yet."); return }
        print(Output.table(["SESSION", "STARTED", "RUNAS", "COMMAND"], rows.map { [$0.session, $0.at, $0.runas, $0.command] }))
        if let n = r["left_out"] { print("(\(n) more sessions did not fit; see them with sudoreplay -d \(Output.clean(r["dir"] ?? "")) -l as root)") }
        print("Replay one with: jit replay \(grant) --session SESSION")
    }
}
