import ArgumentParser
import Foundation
import JITCore
import JITAgent
import JITFleet
#if !JIT_HOST_ONLY
import JITServer
import Logging

/// `jitd server ...`: the fleet's control plane. The logic is in JITServer; these commands parse and print.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "The fleet's control plane: HTTPS API for enrolled hosts, on PostgreSQL (see jitd-server(8)).",
        subcommands: [ServerRun.self, ServerInit.self, ServerCheckConfig.self, ServerToken.self, ServerHost.self, ServerKey.self, ServerWeb.self],
        defaultSubcommand: ServerRun.self)
}

struct ServerOptions: ParsableArguments {
    @Option(help: "The server config file.") var config: String = ServerConfig.defaultPath

    func load() throws -> ServerConfig {
        do { return try ServerConfig.load(path: config) } catch {
            FileHandleErr.write("jitd server: \(error.description)\n")
            throw ExitCode(1)
        }
    }
}

func quietLogger(_ label: String) -> Logger {
    var l = Logger(label: label)
    l.logLevel = .error
    return l
}

/// Runs `body` against the configured database, migrations applied and the CA checked first.
func withServerDatabase<T: Sendable>(_ config: ServerConfig, _ body: @Sendable @escaping (FleetDatabase, FleetCA) async throws -> T) async throws -> T {
    do {
        let ca = try FleetCA.load(certificatePath: config.caCertificate, keyPath: config.caKey)
        return try await FleetDatabase.with(config: config, logger: quietLogger("jitd.server")) { db in
            try await db.migrate()
            try await db.bind(ca: ca)
            return try await body(db, ca)
        }
    } catch {
        throw fleetFailure(error)
    }
}

func printJSON(_ value: some Encodable) {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    enc.keyEncodingStrategy = .convertToSnakeCase
    enc.dateEncodingStrategy = .custom { d, e in
        var c = e.singleValueContainer()
        try c.encode(Timestamps.format(d))
    }
    if let d = try? enc.encode(value) { print(String(decoding: d, as: UTF8.self)) }
}

struct ServerRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the control plane (the default).")
    @OptionGroup var options: ServerOptions

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "jitd.server")
        logger.logLevel = .info
        let config = try options.load()
        do {
            let app = try FleetServer.buildApplication(config: config, logger: logger, people: ServerPeople.services)
            try await app.runService()
        } catch {
            throw fleetFailure(error)
        }
    }
}

struct ServerInit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Make the fleet CA (key mode 0600) and the server's TLS certificate, issued by it.",
        discussion: "The TLS certificate names the host of public_url, listen.address unless it is a wildcard, and every --name.")
    @OptionGroup var options: ServerOptions
    @Option(name: .customLong("name"), help: "Another DNS name or IP address for the TLS certificate (repeatable).") var names: [String] = []
    @Flag(name: .customLong("reissue-tls"), help: "Keep the CA; make only a new TLS certificate.") var reissueTLS = false

    func run() async throws {
        let config = try options.load()
        do { print(try FleetServer.initialize(config: config, names: names, reissueTLS: reissueTLS)) } catch { throw fleetFailure(error) }
    }
}

struct ServerCheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate server.yaml, the CA and TLS files; exit 1 naming the line and field of any error.")
    @OptionGroup var options: ServerOptions

    func run() async throws {
        let c = try options.load()
        guard FileManager.default.fileExists(atPath: c.caKey) else {
            FileHandleErr.write("jitd server: \(options.config): no fleet CA yet (ca.key \(c.caKey) does not exist): make it and the TLS certificate with 'jitd server init --config \(options.config)' (packaged: 'jitd-server init')\n")
            throw ExitCode(1)
        }
        do {
            let ca = try FleetCA.load(certificatePath: c.caCertificate, keyPath: c.caKey)
            try SecureFiles.checkPrivate(c.tlsKey, what: "tls.key")
            _ = try c.databasePassword()
            do { _ = try ServerEngine.loadPolicy(c) } catch { throw FleetError("config", error.description) }
            print("\(options.config): OK; public_url \(c.publicURL), listen \(c.listenAddress):\(c.listenPort), fleet CA \(Fingerprint.display(ca.fingerprint)), database '\(c.database.name)' at \(c.database.socketDir ?? "\(c.database.host):\(c.database.port)"), host certificates last \(Durations.format(c.hostCertificateLifetime))")
        } catch {
            throw fleetFailure(error)
        }
    }
}

struct ServerToken: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "One-time join tokens for enrolling hosts.",
        subcommands: [TokenCreate.self, TokenList.self, TokenRevoke.self, APITokenCreate.self, APITokenList.self, APITokenRevoke.self])
}

struct TokenCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Print a one-time join token: the host it enrols gets this environment and these labels.",
        discussion: "The token carries the fleet CA's SHA-256 fingerprint, so 'jitd enrol' verifies the server on first contact. It works once, until --ttl.")
    @OptionGroup var options: ServerOptions
    @Option(help: "The environment of the host it enrols.") var environment: String
    @Option(help: "Labels of the host, comma-separated (e.g. db,eu).") var labels: String = ""
    @Option(help: "Enrol only a host of this name.") var host: String?
    @Option(help: "How long the token works (e.g. 30m, 1h).") var ttl: String = "1h"

    func validate() throws {
        do {
            try HostIdentity.checkName(environment, field: "--environment")
            for l in labelList { try HostIdentity.checkName(l, field: "--labels") }
            if let host { try HostIdentity.checkHostName(host, field: "--host") }
            _ = try Durations.parse(ttl)
        } catch let e as FleetError {
            throw ArgumentParser.ValidationError(e.message)
        } catch let e as JITCore.ValidationError {
            throw ArgumentParser.ValidationError("--ttl: \(e.message)")
        }
    }

    var labelList: [String] { labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }

    func run() async throws {
        let config = try options.load()
        let seconds: Int64
        do { seconds = try Durations.parse(ttl) } catch { throw fleetFailure(FleetError("usage", "--ttl: \(error.message)")) }
        guard seconds <= config.maxTokenTTL else {
            throw fleetFailure(FleetError("usage", "--ttl \(ttl) is longer than tokens.max_ttl (\(Durations.format(config.maxTokenTTL))) in \(options.config)"))
        }
        let env = environment, labels = labelList, host = self.host
        let (token, record) = try await withServerDatabase(config) { db, ca in
            let t = JoinToken.generate(caFingerprint: ca.fingerprint)
            return (t.encoded, try await db.createToken(t, environment: env, labels: labels, host: host, ttl: seconds, by: FleetServer.actor()))
        }
        print(token)
        FileHandleErr.write("jitd: token \(record.id) enrols one host\(host.map { " named \($0)" } ?? "") into \(env)\(labels.isEmpty ? "" : " with labels \(labels.joined(separator: ","))") until \(Timestamps.format(record.expiresAt)); on the host: jitd enrol --server \(config.publicURL) --token TOKEN\n")
    }
}

struct TokenList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List join tokens (never their secrets).")
    @OptionGroup var options: ServerOptions
    @Flag(help: "One JSON document on stdout.") var json = false

    struct Row: Encodable {
        var id: String, state: String, environment: String, labels: [String], host: String?
        var createdBy: String, createdAt: Date, expiresAt: Date, usedAt: Date?, usedByHost: String?, revokedAt: Date?
    }

    func run() async throws {
        let config = try options.load()
        let now = Date()
        let rows = try await withServerDatabase(config) { db, _ in try await db.listTokens() }.map {
            Row(id: $0.id, state: $0.state(now: now), environment: $0.environment, labels: $0.labels, host: $0.host, createdBy: $0.createdBy,
                createdAt: $0.createdAt, expiresAt: $0.expiresAt, usedAt: $0.usedAt, usedByHost: $0.usedByHost, revokedAt: $0.revokedAt)
        }
        if json { return printJSON(["tokens": rows]) }
        print("ID                STATE    ENVIRONMENT   LABELS        HOST          EXPIRES")
        for r in rows {
            print([r.id.col(16), r.state.col(8), r.environment.col(13), r.labels.joined(separator: ",").col(13), (r.host ?? r.usedByHost ?? "-").col(13), Timestamps.format(r.expiresAt)].joined(separator: " "))
        }
    }
}

struct TokenRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke an unused join token.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The token's id (the second part of the token, as 'token list' shows).") var id: String

    func run() async throws {
        let config = try options.load()
        let id = self.id.lowercased()
        let ok = try await withServerDatabase(config) { db, _ in try await db.revokeToken(id: id, by: FleetServer.actor()) }
        guard ok else { throw fleetFailure(FleetError("not_found", "no unused, unrevoked join token has id \(id); see 'jitd server token list'")) }
        print("jitd: token \(id) revoked")
    }
}

struct ServerWeb: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "web", abstract: "The web approval page.", subcommands: [WebLinkCommand.self])
}

struct WebLinkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link",
        abstract: "Print a one-time sign-in link to the web page for USER (valid 60 s, works once).",
        discussion: "For the server's admin; people signed in with 'jit login' use 'jit web' instead. USER must be known to this server's NSS.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The user the link signs in.") var user: String

    func run() async throws {
        let config = try options.load()
        guard let id = serverDirectory.user(name: user) else {
            throw fleetFailure(FleetError("not_found", "the user '\(user)' is not known to this server (getent passwd \(user)); the web page signs in only users the server knows"))
        }
        guard !id.isRoot else { throw fleetFailure(FleetError("usage", "root does not act over the network; use the server's own socket")) }
        let user = self.user
        let link = try await withServerDatabase(config) { db, _ in
            let l = try await WebRoutes.makeLink(user: user, login: nil, sessions: PostgresWebSessions(db: db), now: Date(), publicURL: config.publicURL)
            try await db.audit("web_link", actor: FleetServer.actor(), data: ["user": user, "expires_at": l.expiresAt])
            return l
        }
        print(link.url)
        FileHandleErr.write("jitd: the link signs in \(user) once, until \(link.expiresAt)\n")
    }
}

struct ServerHost: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host", abstract: "Enrolled hosts.", subcommands: [HostList.self, HostRevoke.self])
}

struct HostList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List enrolled hosts.")
    @OptionGroup var options: ServerOptions
    @Flag(help: "One JSON document on stdout.") var json = false

    func run() async throws {
        let config = try options.load()
        let hosts = try await withServerDatabase(config) { db, _ in try await db.listHosts() }
        if json { return printJSON(["hosts": hosts]) }
        print("NAME                 ENVIRONMENT   LABELS        STATE    CERT UNTIL            LAST SEEN")
        for h in hosts {
            print([h.name.col(20), h.environment.col(13), h.labels.joined(separator: ",").col(13), (h.revokedAt == nil ? "enrolled" : "revoked").col(8),
                   Timestamps.format(h.notAfter).col(21), h.lastSeen.map(Timestamps.format) ?? "-"].joined(separator: " "))
        }
    }
}

struct HostRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke", abstract: "Cut a host off: every call it makes is refused from now on, whatever certificate it holds.")
    @OptionGroup var options: ServerOptions
    @Argument(help: "The host's name.") var name: String

    func run() async throws {
        let config = try options.load()
        let name = self.name
        let h = try await withServerDatabase(config) { db, _ in try await db.revokeHost(name: name, by: FleetServer.actor()) }
        guard let h else { throw fleetFailure(FleetError("not_found", "no enrolled, unrevoked host is named '\(name)'; see 'jitd server host list'")) }
        print("jitd: host \(h.name) (\(h.environment)) revoked")
    }
}

extension String {
    func col(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}
#else
/// The host package (`make deb`, built with JIT_HOST_ONLY=1) leaves the control plane out: a host needs
/// `jitd enrol`, not PostgreSQL and an HTTPS server, and the package stays small (see README, Running a fleet).
struct ServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "The fleet's control plane: not part of this build (the host package); see jitd-server(8).")

    @Argument(parsing: .captureForPassthrough, help: .hidden) var rest: [String] = []

    func run() throws {
        FileHandleErr.write("jitd server: this jitd is the host package's and has no control plane; install the jit-access-server package and run 'jitd-server' (or 'jitd server' from a source build: 'make build')\n")
        throw ExitCode(1)
    }
}
#endif
