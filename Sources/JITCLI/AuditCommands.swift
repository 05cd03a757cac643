import ArgumentParser
import Foundation
import JITCore

/// `jit audit`: read the trail; `jit audit verify`: check its hash chain.
struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read the audit trail (your own events; approvers and root see everyone's), or verify it.",
        subcommands: [AuditList.self, AuditVerify.self],
        defaultSubcommand: AuditList.self)
}

struct AuditEventView: Codable {
    var id: Int64
    var at: String
    var kind: String
    var actor: String
    var user: String
    var request_id: Int64?
    var grant_id: Int64?
    var data: [String: String]
    var hash: String

    init(_ f: [(String, String)]) {
        func v(_ k: String) -> String? { f.first { $0.0 == k }?.1 }
        id = Int64(v("id") ?? "") ?? 0
        at = v("at") ?? ""
        kind = v("kind") ?? ""
        actor = v("actor") ?? ""
        user = v("user") ?? ""
        request_id = v("request").flatMap { Int64($0) }
        grant_id = v("grant").flatMap { Int64($0) }
        var d: [String: String] = [:]
        for (k, val) in f where k.hasPrefix("d_") { d[String(k.dropFirst(2))] = val }
        data = d
        hash = v("hash") ?? ""
    }

    var details: String { data.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
}

struct AuditList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List events, oldest first (the default).")
    @OptionGroup var connection: Connection
    @Option(help: "From this time (RFC 3339, or an age like 2h or 7d).") var since: String?
    @Option(help: "Until this time (RFC 3339, or an age).") var until: String?
    @Option(help: "Only events about this user.") var user: String?
    @Option(help: "Only events about this grant.") var grant: String?
    @Flag(help: "Print one JSON document (an array).") var json = false
    @Flag(help: "Print JSON lines, one event per line (for log shippers).") var jsonl = false
    @Flag(help: "Print CSV (for spreadsheets).") var csv = false

    func validate() throws {
        if [json, jsonl, csv].filter({ $0 }).count > 1 { throw ArgumentParser.ValidationError("choose one of --json, --jsonl and --csv") }
        if let grant { _ = try parseID(grant, "grant") }
    }

    func run() throws {
        var m = Message("audit")
        if let since { m.add("since", since) }
        if let until { m.add("until", until) }
        if let user { m.add("user", user) }
        if let grant { m.add("grant", grant) }
        var events: [AuditEventView] = []
        var req = m
        for _ in 0..<1_000_000 {
            let r = try connection.call(req)
            let page = r.records.map(AuditEventView.init)
            if jsonl {
                let e = JSONEncoder()
                e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                for ev in page { print(String(decoding: try e.encode(ev), as: UTF8.self)) }
            } else {
                events += page
            }
            guard let next = r["next"] else { break }
            req = m
            req.add("after", next)
        }
        if jsonl { return }
        if json { print(Output.json(events)); return }
        if csv {
            print("id,at,kind,actor,user,request_id,grant_id,details,hash")
            for e in events {
                print([String(e.id), e.at, e.kind, e.actor, e.user, e.request_id.map(String.init) ?? "", e.grant_id.map(String.init) ?? "", e.details, e.hash]
                    .map(Output.csvField).joined(separator: ","))
            }
            return
        }
        if events.isEmpty { print("No events."); return }
        print(Output.table(["ID", "AT", "KIND", "ACTOR", "USER", "REQ", "GRANT", "DETAILS"],
            events.map { [String($0.id), $0.at, $0.kind, $0.actor, $0.user, $0.request_id.map(String.init) ?? "", $0.grant_id.map(String.init) ?? "", String($0.details.prefix(100))] }))
    }
}

struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Walk the hash chain; name the first event that was changed, removed, inserted or reordered (exit 1).")
    @OptionGroup var connection: Connection
    @Option(help: "Verify an archive file written by retention instead of the live trail (root).") var archive: String?
    @Flag(help: "Print JSON.") var json = false

    struct View: Codable {
        var ok: Bool
        var count: Int64
        var last_id: Int64
        var last_hash: String
        var problem: String?
        var bad_id: Int64?
        var archives: [String]
    }

    func run() throws {
        var m = Message("audit_verify")
        if let archive { m.add("archive", archive) }
        let r = try connection.call(m, timeout: 600)
        let v = View(ok: r["ok"] == "1", count: Int64(r["count"] ?? "") ?? 0, last_id: Int64(r["last_id"] ?? "") ?? 0,
                     last_hash: r["last_hash"] ?? "", problem: r["problem"], bad_id: r["bad_id"].flatMap { Int64($0) }, archives: r.all("archive"))
        if json {
            print(Output.json(v))
        } else if v.ok {
            print("audit trail OK: \(v.count) events verified, head is event \(v.last_id) \(v.last_hash)")
            for a in v.archives { print("  archived before it: \(a) (check with: jit audit verify --archive FILE)") }
        }
        if !v.ok { throw CLIError(code: 1, message: "audit trail BROKEN: \(v.problem ?? "unknown problem")") }
    }
}

extension Output {
    /// RFC 4180 quoting, and a leading ' on cells a spreadsheet would run as a formula. Control and format
    /// characters (ESC sequences that came in through rhost or command) are made '?' first, as on the terminal.
    static func csvField(_ s: String) -> String {
        var v = clean(s)
        if let f = v.first, "=+-@\t\r".contains(f) { v = "'" + v }
        if v.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return v
    }
}
