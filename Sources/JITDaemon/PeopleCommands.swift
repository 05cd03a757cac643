import ArgumentParser
import Foundation
import JITAgent
import JITCore
import JITFleet
#if !JIT_HOST_ONLY
import JITServer

/// `jitd server key ...`: people's SSH public keys, which `jit login` proves (issue #15).
struct ServerKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "People's SSH public keys for 'jit login' (ssh-ed25519, ecdsa-sha2-nistp256).",
        subcommands: [KeyAdd.self, KeyList.self, KeyRemove.self])
}

/// The server's NSS: a person is who it says now (a user it no longer knows has no working key or token).
let serverDirectory = SystemDirectory()

func checkPerson(_ user: String, field: String) throws {
    guard Names.isValid(user) else { throw ArgumentParser.ValidationError("\(field) '\(user)' is not a user name") }
}

func knownPerson(_ user: String, what: String) throws(FleetError) {
    guard let id = serverDirectory.user(name: user) else {
        throw FleetError("user_unknown", "user '\(user)' is not known to this server's user directory (NSS); \(what) only for users it knows")
    }
    guard !id.isRoot else { throw FleetError("usage", "root does not act over the network; root uses the server's own socket") }
}

struct KeyAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Register an SSH public key of USER: 'jitd server key add alice \"ssh-ed25519 AAAA... alice@laptop\"' or --file alice.pub.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The user (as the server's NSS knows them).") var user: String
    @Argument(help: "The public key line (TYPE BASE64 [COMMENT]).") var key: String?
    @Option(help: "Read the public key from this file (a .pub file, one key).") var file: String?

    func validate() throws {
        try checkPerson(user, field: "USER")
        guard (key == nil) != (file == nil) else { throw ArgumentParser.ValidationError("give the key as an argument or with --file, one of them") }
    }

    func run() async throws {
        let config = try options.load()
        let user = self.user
        let k: SSHPublicKey
        do {
            try knownPerson(user, what: "keys are registered")
            var text = key ?? ""
            if let file { text = try SecureFiles.read(file, what: "the key file") }
            let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
            guard lines.count == 1 else { throw FleetError("bad_key", "\(file ?? "the argument") holds \(lines.count) keys; give exactly one") }
            k = try SSHPublicKey(line: lines[0])
        } catch {
            throw fleetFailure(error)
        }
        let row = try await withServerDatabase(config) { db, _ in try await db.addKey(user: user, key: k, by: FleetServer.actor()) }
        print("jitd: key \(row.fingerprint) (\(row.type)) registered for \(user); they log in with: jit login --server \(config.publicURL) --user \(user)")
    }
}

struct KeyList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List registered keys (of USER, or everyone's).")
    @OptionGroup var options: ServerOptions
    @Argument(help: "Only this user's keys.") var user: String?
    @Flag(help: "One JSON document on stdout.") var json = false

    func run() async throws {
        let config = try options.load()
        let user = self.user
        let keys = try await withServerDatabase(config) { db, _ in try await db.listKeys(user: user) }
        if json { return printJSON(["keys": keys]) }
        print("USER             FINGERPRINT                                         TYPE                 LAST USED             COMMENT")
        for k in keys {
            print([k.user.col(16), k.fingerprint.col(51), k.type.col(20), (k.lastUsedAt.map(Timestamps.format) ?? "-").col(21), k.comment].joined(separator: " "))
        }
    }
}

struct KeyRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a key of USER; the logins made with it end at once.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The user.") var user: String
    @Argument(help: "The key's fingerprint (SHA256:..., as 'key list' shows).") var fingerprint: String

    func run() async throws {
        let config = try options.load()
        let user = self.user, fp = fingerprint
        let ok = try await withServerDatabase(config) { db, _ in try await db.removeKey(user: user, fingerprint: fp, by: FleetServer.actor()) }
        guard ok else { throw fleetFailure(FleetError("not_found", "\(user) has no registered key \(fp); see 'jitd server key list \(user)'")) }
        print("jitd: key \(fp) of \(user) removed; its logins are ended")
    }
}

// MARK: API tokens

struct APITokenCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create-api",
        abstract: "Print an API token for automation, once (stored hashed): JIT_TOKEN=... jit request --env staging ...",
        discussion: """
            --may request: file, show, list, cancel and wait for requests; --may approve: approve and deny, and only with --as naming an \
            approver (a token never approves its own identity's requests). --env limits it to those environments.
            """)
    @OptionGroup var options: ServerOptions
    @Option(help: "The token's name (unique among active tokens).") var name: String
    @Option(help: "What it may do, comma-separated: request, approve.") var may: String = "request"
    @Option(help: "Environments it may act in, comma-separated (default: any).") var env: String = ""
    @Option(help: "How long it works (e.g. 90d).") var ttl: String = "90d"
    @Option(name: .customLong("as"), help: "The user it acts as (default: a user named like --name); required for --may approve.") var asUser: String?

    var kinds: [String] { may.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    var envs: [String] { env.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }

    func validate() throws {
        try checkPerson(name, field: "--name")
        if let asUser { try checkPerson(asUser, field: "--as") }
        guard !kinds.isEmpty else { throw ArgumentParser.ValidationError("--may needs at least one of: request, approve") }
        for k in kinds where !["request", "approve"].contains(k) {
            throw ArgumentParser.ValidationError("--may '\(k)' is not known; it takes request, approve")
        }
        if kinds.contains("approve") && asUser == nil {
            throw ArgumentParser.ValidationError("--may approve needs --as USER: a token approves only as a named approver, and never that user's own requests")
        }
        for e in envs {
            do { try HostIdentity.checkName(e, field: "--env") } catch { throw ArgumentParser.ValidationError(error.message) }
        }
        do { _ = try Durations.parse(ttl) } catch { throw ArgumentParser.ValidationError("--ttl: \(error.message)") }
    }

    func run() async throws {
        let config = try options.load()
        let name = self.name, kinds = self.kinds, envs = self.envs
        let user = asUser ?? name
        let seconds: Int64
        do { seconds = try Durations.parse(ttl) } catch { throw fleetFailure(FleetError("usage", "--ttl: \(error.message)")) }
        guard seconds <= 366 * 86_400 else { throw fleetFailure(FleetError("usage", "--ttl \(ttl) is longer than a year; make a new token when it ends")) }
        do { try knownPerson(user, what: "API tokens act") } catch { throw fleetFailure(error) }
        let (token, row) = try await withServerDatabase(config) { db, _ in
            try await db.createPersonToken(kind: "api", user: user, name: name, may: kinds, environments: envs, keyFingerprint: nil, ttl: seconds, by: FleetServer.actor())
        }
        print(token)
        FileHandleErr.write("jitd: API token '\(name)' (\(row.id)) acts as \(user), may \(kinds.joined(separator: ",")) in \(envs.isEmpty ? "any environment" : envs.joined(separator: ",")) until \(Timestamps.format(row.expiresAt)); it is shown only now. Use: JIT_TOKEN=TOKEN jit --server \(config.publicURL) request ...\n")
    }
}

struct APITokenList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list-api", abstract: "List API tokens (never their secrets), with their last use.")
    @OptionGroup var options: ServerOptions
    @Flag(help: "One JSON document on stdout.") var json = false

    struct Row: Encodable {
        var name: String?, id: String, state: String, user: String, may: [String], environments: [String]
        var createdAt: Date, expiresAt: Date, revokedAt: Date?, lastUsedAt: Date?, lastPeer: String?
    }

    func run() async throws {
        let config = try options.load()
        let now = Date()
        let rows = try await withServerDatabase(config) { db, _ in try await db.listAPITokens() }.map {
            Row(name: $0.name, id: $0.id, state: $0.state(now: now), user: $0.user, may: $0.may, environments: $0.environments,
                createdAt: $0.createdAt, expiresAt: $0.expiresAt, revokedAt: $0.revokedAt, lastUsedAt: $0.lastUsedAt, lastPeer: $0.lastPeer)
        }
        if json { return printJSON(["tokens": rows]) }
        print("NAME             STATE    AS           MAY              ENVIRONMENTS   EXPIRES               LAST USED")
        for r in rows {
            print([(r.name ?? r.id).col(16), r.state.col(8), r.user.col(12), r.may.joined(separator: ",").col(16), (r.environments.isEmpty ? "any" : r.environments.joined(separator: ",")).col(14),
                   Timestamps.format(r.expiresAt).col(21), r.lastUsedAt.map { Timestamps.format($0) + (r.lastPeer.map { " from \($0)" } ?? "") } ?? "never"].joined(separator: " "))
        }
    }
}

struct APITokenRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke-api", abstract: "Revoke an API token: refused from its next call on.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The token's name.") var name: String

    func run() async throws {
        let config = try options.load()
        let name = self.name
        let t = try await withServerDatabase(config) { db, _ in try await db.revokeAPIToken(name: name, by: FleetServer.actor()) }
        guard t != nil else { throw fleetFailure(FleetError("not_found", "no active API token is named '\(name)'; see 'jitd server token list-api'")) }
        print("jitd: API token '\(name)' revoked")
    }
}

/// The people routes' directory for `jitd server run` (the engine is the server's own).
enum ServerPeople {
    static let services = PeopleServices(call: nil, lookup: { serverDirectory.user(name: $0) })
}
#endif
