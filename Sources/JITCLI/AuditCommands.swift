import ArgumentParser
import Foundation
import JITAgent
import JITCore

/// `jit audit`: read the trail; `jit audit verify`: check its hash chain.
struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read the audit trail (your own events; approvers and root see everyone's), or verify it.",
        subcommands: [AuditList.self, AuditVerify.self, AuditSetupKeys.self, AuditSealNow.self],
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
    @Option(name: .customLong("verify-key"),
            help: "Also check every seal with this verification key (from jit audit setup-keys; '-' reads it from stdin). Reads the database itself: the key never goes to jitd.")
    var verifyKey: String?
    @Option(help: "With --verify-key: the database, or a copy of it (default: \(Config.defaultDatabase)).") var database: String?
    @Option(name: .customLong("archive-dir"), help: "With --verify-key: the folder holding the archives (a copy), found by file name.") var archiveDir: String?
    @Option(name: .customLong("as-of"), help: "With --verify-key: when the copy was taken (RFC 3339); the default is now.") var asOf: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if verifyKey == nil && (database != nil || archiveDir != nil || asOf != nil) {
            throw ArgumentParser.ValidationError("--database, --archive-dir and --as-of go with --verify-key")
        }
        if let asOf, Timestamps.parse(asOf) == nil {
            throw ArgumentParser.ValidationError("--as-of '\(asOf)' is not an RFC 3339 time (2026-11-22T10:00:00Z)")
        }
    }

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
        if let verifyKey { return try SealedVerify(command: self, keyText: verifyKey).run() }
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

/// `jit audit verify --verify-key K`: the chain and every seal, checked in this process.
struct SealedVerify {
    var command: AuditVerify
    var keyText: String

    struct View: Codable {
        var ok: Bool
        var count: Int64
        var last_id: Int64
        var last_hash: String
        var problem: String?
        var bad_id: Int64?
        var bad_epoch: Int64?
        var setup: String
        var seals: Int64
        var last_seal_id: Int64?
        var last_sealed_epoch: Int64?
        var last_seal_at: String?
        var unsealed: Int64
        var unsealed_since: String?
        var before_setup: Int64
        var archives: [String]
    }

    func run() throws {
        var text = keyText
        if text == "-" { text = readLine(strippingNewline: true) ?? "" }
        let key: SealKey
        do { key = try SealKey.parse(text) } catch { throw CLIError(code: 2, message: "\(error.message); copy it again from where the auditor keeps it") }
        let now = command.asOf.flatMap(Timestamps.parse) ?? Date()
        var walk = SealedWalk(key: key, midstream: command.archive != nil)
        var archives: [String] = []
        do {
            if let archive = command.archive {
                for e in try AuditArchive.events(path: archive) where !walk.step(e) { break }
            } else {
                archives = try AuditReader.walk(database: command.database ?? Config.defaultDatabase, archiveDir: command.archiveDir) { walk.step($0) }
            }
        } catch {
            throw CLIError(code: 1, message: error.message)
        }
        let r = walk.finish(now: now)
        let v = View(ok: r.problem == nil, count: r.chain.count, last_id: r.chain.lastID, last_hash: r.chain.lastHash, problem: r.problem,
                     bad_id: r.badID, bad_epoch: r.badEpoch, setup: key.setupID, seals: r.seals, last_seal_id: r.lastSeal == nil ? nil : r.lastSealID,
                     last_sealed_epoch: r.lastSeal?.epoch, last_seal_at: r.lastSeal.map { Timestamps.format(Timestamps.date(millis: $0.at)) },
                     unsealed: r.unsealed, unsealed_since: r.unsealedSince.map(Timestamps.format), before_setup: r.beforeSetup, archives: archives)
        if command.json {
            print(Output.json(v))
        } else if v.ok {
            print("audit trail OK: \(v.count) events verified, head is event \(v.last_id) \(v.last_hash)")
            if let s = r.lastSeal {
                print("sealed: \(r.seals) seals under key \(key.setupID), epochs 0 to \(s.epoch) of \(Durations.format(key.interval)) from \(Timestamps.format(key.begins(0))); events through \(s.headID) are sealed (last seal: event \(r.lastSealID), \(v.last_seal_at ?? ""))")
            } else {
                print("sealed: no seal yet under key \(key.setupID) (set up \(Timestamps.format(key.begins(0))))")
            }
            if r.unsealed > 0 {
                print("not yet sealed: \(r.unsealed) events since \(v.unsealed_since ?? "") (in the chain, proven only once the next seal is made)")
            } else {
                print("not yet sealed: none")
            }
            if r.beforeSetup > 0 { print("before the key was set up: \(r.beforeSetup) events (chained, not sealed)") }
            if let id = r.replacedAt { print("the key was replaced at event \(id) (setup-keys --force): the events after it are sealed under the newer key") }
            for a in archives { print("  read the archive \(a)") }
        }
        if !v.ok { throw CLIError(code: 1, message: "audit trail BROKEN: \(v.problem ?? "unknown problem")") }
    }
}

struct AuditSetupKeys: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup-keys",
        abstract: "Set up forward-secure sealing (root): prints the verification key once, for the auditor to keep off this host.")
    @OptionGroup var connection: Connection
    @Flag(help: "Replace an existing key (seals made so far still verify with the old key).") var force = false
    @Flag(help: "Print JSON.") var json = false

    struct View: Codable {
        var verify_key: String
        var verify_key_short: String
        var setup: String
        var start: String
        var interval: String
        var key_file: String
    }

    func run() throws {
        var m = Message("audit_setup_keys")
        if force { m.add("force", "1") }
        let r = try connection.call(m, timeout: 60)
        let v = View(verify_key: r["verify_key"] ?? "", verify_key_short: r["verify_key_short"] ?? "", setup: r["setup"] ?? "",
                     start: r["start"] ?? "", interval: r["interval"] ?? "", key_file: r["key_file"] ?? "")
        if json { print(Output.json(v)); return }
        print("""
            Forward-secure sealing is set up (setup \(v.setup)): epochs of \(v.interval) from \(v.start).
            This host keeps only the current epoch's key (\(v.key_file)); earlier keys are destroyed as epochs end.

            The verification key, shown only now. Keep it OFF this host (whoever holds it can forge seals):

                \(v.verify_key)

            The same key, short form (for paper or a QR code; a typo fails its checksum):

                \(v.verify_key_short)

            Verify a copy of the database elsewhere with:
                jit audit verify --verify-key KEY --database COPY/jit.db [--archive-dir COPY/audit] [--as-of WHEN]
            """)
    }
}

struct AuditSealNow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seal", abstract: "Seal the audit trail now (root), e.g. before handing a copy to the auditor.")
    @OptionGroup var connection: Connection

    func run() throws {
        let r = try connection.call(Message("audit_seal"), timeout: 60)
        print("sealed: event \(r["id"] ?? "?") seals \(r["count"] ?? "?") events in epoch \(r["epoch"] ?? "?")")
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
