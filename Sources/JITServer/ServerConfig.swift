import Foundation
public import JITCore
public import JITFleet
import Yams

/// The control plane's configuration (`/etc/jit/server.yaml`). Strict: unknown keys are refused, and every
/// error names the file, the line and the field.
public struct ServerConfig: Equatable, Sendable {
    public static let defaultPath = "/etc/jit/server.yaml"

    /// How the server reaches PostgreSQL.
    public struct Database: Equatable, Sendable {
        public var host: String = "127.0.0.1"
        public var port: Int = 5432
        public var user: String = "jit"
        public var name: String = "jit"
        /// A root-only file holding the password (none: trust, peer or certificate auth).
        public var passwordFile: String? = nil
        /// A Unix socket folder instead of host/port (e.g. /run/postgresql).
        public var socketDir: String? = nil
        public init() {}
    }

    public var listenAddress: String = "0.0.0.0"
    public var listenPort: Int = 8443
    /// The URL hosts use, e.g. https://jit.example.org:8443. Its host goes into the server's TLS certificate.
    public var publicURL: String = ""
    public var tlsCertificate: String = "/etc/jit/server/tls.pem"
    public var tlsKey: String = "/etc/jit/server/tls.key"
    public var caCertificate: String = "/etc/jit/server/ca.pem"
    public var caKey: String = "/etc/jit/server/ca.key"
    public var database = Database()
    /// How long a host certificate lasts; hosts renew before it ends.
    public var hostCertificateLifetime: Int64 = 30 * 86_400
    /// The longest a join token may last.
    public var maxTokenTTL: Int64 = 7 * 86_400
    /// People (`login:`): how long a `jit login` lasts, and an optional allowed_signers file read at each login.
    public var loginTokenTTL: Int64 = 12 * 3600
    public var allowedSigners: String? = nil
    /// The policy the control plane decides by: a YAML file with jit.yaml's policy keys (`rules:`,
    /// `policy:`, `break_glass:`, `pending_ttl:`, `limits:`); nil: the built-in default policy.
    public var policyPath: String? = nil
    /// The control plane's own Unix socket: `jit --socket PATH list|show|approve|deny|grants|revoke` on the server.
    public var socket: String = "/run/jit/server.sock"
    /// Whether `socket:` was written in the file: then a socket that cannot be opened stops the server; the
    /// default one is skipped with a warning (another replica on this machine may hold it).
    public var socketRequired = false
    /// How long grant changes are kept for hosts to resume from (`stream.retention`); older cursors get a reset.
    public var streamRetention: Int64 = 7 * 86_400
    /// The limits of the grant stream on each replica (`stream.max_waiters`).
    public var streamLimits = StreamLimits()
    /// Notifications the control plane sends (`notify:`, the keys and meaning of jit.yaml's `notify:`).
    public var notify = NotifySettings()

    public init() {}

    /// The public URL's host (a DNS name or an IP address).
    public var publicHost: String { URL(string: publicURL)?.host ?? "" }

    /// Reads and checks the file; refuses one that others may write (it names the CA key).
    public static func load(path: String) throws(ConfigError) -> ServerConfig {
        do { try SecureFiles.checkNotWritableByOthers(path, what: "the server config") } catch {
            throw ConfigError(file: path, line: nil, field: "", message: error.message)
        }
        let text: String
        do { text = try SecureFiles.read(path, what: "the server config") } catch {
            throw ConfigError(file: path, line: nil, field: "", message: error.message + "; check the path given with --config")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String = "server.yaml") throws(ConfigError) -> ServerConfig {
        guard let root = try YAMLReader.compose(text, file: file) else {
            throw ConfigError(file: file, line: 1, field: "", message: "the file is empty; it needs at least 'public_url:' and 'database:'")
        }
        let r = YAMLReader(file: file)
        let top = try r.mapping(root, path: "")
        try r.onlyKeys(top, ["listen", "public_url", "tls", "ca", "database", "host_certificates", "tokens", "policy", "socket", "stream", "login", "notify"], path: "")
        var c = ServerConfig()
        guard let url = top["public_url"]?.1 else {
            throw ConfigError(file: file, line: root.mark?.line, field: "public_url", message: "is required: the https:// URL hosts use to reach this server, e.g. 'public_url: https://jit.example.org:8443'")
        }
        c.publicURL = try r.string(url, path: "public_url")
        guard let u = URL(string: c.publicURL), u.scheme == "https", let h = u.host, !h.isEmpty, u.path.isEmpty || u.path == "/" else {
            throw r.error(url, "public_url", "must be an https:// URL with a host and no path, e.g. https://jit.example.org:8443")
        }
        if c.publicURL.hasSuffix("/") { c.publicURL.removeLast() }
        if let l = top["listen"]?.1 {
            let m = try r.mapping(l, path: "listen")
            try r.onlyKeys(m, ["address", "port"], path: "listen")
            if let a = m["address"]?.1 {
                c.listenAddress = try r.string(a, path: "listen.address")
                guard !c.listenAddress.isEmpty, c.listenAddress.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") }) else {
                    throw r.error(a, "listen.address", "must be an IP address or host name, e.g. 0.0.0.0 or 127.0.0.1")
                }
            }
            if let p = m["port"]?.1 { c.listenPort = try port(p, "listen.port", r) }
        }
        if let t = top["tls"]?.1 {
            let m = try r.mapping(t, path: "tls")
            try r.onlyKeys(m, ["certificate", "key"], path: "tls")
            if let v = m["certificate"]?.1 { c.tlsCertificate = try r.absolutePath(v, path: "tls.certificate") }
            if let v = m["key"]?.1 { c.tlsKey = try r.absolutePath(v, path: "tls.key") }
        }
        if let t = top["ca"]?.1 {
            let m = try r.mapping(t, path: "ca")
            try r.onlyKeys(m, ["certificate", "key"], path: "ca")
            if let v = m["certificate"]?.1 { c.caCertificate = try r.absolutePath(v, path: "ca.certificate") }
            if let v = m["key"]?.1 { c.caKey = try r.absolutePath(v, path: "ca.key") }
        }
        guard let d = top["database"]?.1 else {
            throw ConfigError(file: file, line: root.mark?.line, field: "database", message: "is required: 'database: {url: postgres://jit@127.0.0.1:5432/jit}' or host, port, user, name, password_file")
        }
        c.database = try parseDatabase(d, r)
        if let h = top["host_certificates"]?.1 {
            let m = try r.mapping(h, path: "host_certificates")
            try r.onlyKeys(m, ["lifetime"], path: "host_certificates")
            if let v = m["lifetime"]?.1 {
                c.hostCertificateLifetime = try r.duration(v, path: "host_certificates.lifetime", ceiling: 365 * 86_400)
                guard c.hostCertificateLifetime >= 60 else { throw r.error(v, "host_certificates.lifetime", "must be at least 1m") }
            }
        }
        if let t = top["tokens"]?.1 {
            let m = try r.mapping(t, path: "tokens")
            try r.onlyKeys(m, ["max_ttl"], path: "tokens")
            if let v = m["max_ttl"]?.1 { c.maxTokenTTL = try r.duration(v, path: "tokens.max_ttl", ceiling: 30 * 86_400) }
        }
        if let t = top["login"]?.1 {
            let m = try r.mapping(t, path: "login")
            try r.onlyKeys(m, ["token_ttl", "allowed_signers"], path: "login")
            if let v = m["token_ttl"]?.1 {
                c.loginTokenTTL = try r.duration(v, path: "login.token_ttl", ceiling: 7 * 86_400)
                guard c.loginTokenTTL >= 60 else { throw r.error(v, "login.token_ttl", "must be at least 1m") }
            }
            if let v = m["allowed_signers"]?.1 { c.allowedSigners = try r.absolutePath(v, path: "login.allowed_signers") }
        }
        if let v = top["policy"]?.1 { c.policyPath = try r.absolutePath(v, path: "policy") }
        if let v = top["socket"]?.1 {
            c.socket = try r.absolutePath(v, path: "socket")
            c.socketRequired = true
        }
        // The agent's own parser: the same keys, checks and messages as jit.yaml's notify:.
        if let n = top["notify"]?.1 { c.notify = try Config.parseNotify(n, r: r) }
        if let t = top["stream"]?.1 {
            let m = try r.mapping(t, path: "stream")
            try r.onlyKeys(m, ["retention", "max_waiters"], path: "stream")
            if let v = m["retention"]?.1 {
                c.streamRetention = try r.duration(v, path: "stream.retention", ceiling: 365 * 86_400)
                guard c.streamRetention >= 60 else { throw r.error(v, "stream.retention", "must be at least 1m (hosts offline longer than this get a reset)") }
            }
            if let v = m["max_waiters"]?.1 {
                let n = try r.int(v, path: "stream.max_waiters")
                guard (1...1_000_000).contains(n) else { throw r.error(v, "stream.max_waiters", "must be from 1 to 1000000 (long-polls one replica holds at once)") }
                c.streamLimits.maxWaiters = n
            }
        }
        return c
    }

    static func port(_ n: Node, _ path: String, _ r: YAMLReader) throws(ConfigError) -> Int {
        let p = try r.int(n, path: path)
        guard (1...65535).contains(p) else { throw r.error(n, path, "must be a port number from 1 to 65535") }
        return p
    }

    static func parseDatabase(_ node: Node, _ r: YAMLReader) throws(ConfigError) -> Database {
        let m = try r.mapping(node, path: "database")
        try r.onlyKeys(m, ["url", "host", "port", "user", "name", "password_file", "socket_dir"], path: "database")
        var d = Database()
        if let u = m["url"]?.1 {
            for k in ["host", "port", "user", "name", "socket_dir"] where m[k] != nil {
                throw r.error(m[k]!.0, "database.\(k)", "cannot be given with database.url; use one or the other")
            }
            let s = try r.string(u, path: "database.url")
            guard let c = URLComponents(string: s), c.scheme == "postgres" || c.scheme == "postgresql", let host = c.host, !host.isEmpty else {
                throw r.error(u, "database.url", "must look like postgres://USER@HOST:PORT/DATABASE")
            }
            guard c.password == nil else {
                throw r.error(u, "database.url", "holds a password: put it in a root-only file named by database.password_file instead")
            }
            guard c.query == nil else { throw r.error(u, "database.url", "takes no ?options here; use the other database keys") }
            d.host = host
            d.port = c.port ?? 5432
            if let user = c.user, !user.isEmpty { d.user = user }
            let name = String(c.path.drop(while: { $0 == "/" }))
            if !name.isEmpty { d.name = name }
        }
        if let v = m["host"]?.1 { d.host = try r.string(v, path: "database.host") }
        if let v = m["port"]?.1 { d.port = try port(v, "database.port", r) }
        if let v = m["user"]?.1 { d.user = try r.name(v, path: "database.user") }
        if let v = m["name"]?.1 { d.name = try r.name(v, path: "database.name") }
        if let v = m["password_file"]?.1 { d.passwordFile = try r.absolutePath(v, path: "database.password_file") }
        if let v = m["socket_dir"]?.1 { d.socketDir = try r.absolutePath(v, path: "database.socket_dir") }
        return d
    }

    /// The database password, from its file (which must be root's and private).
    public func databasePassword() throws(FleetError) -> String? {
        guard let f = database.passwordFile else { return nil }
        try SecureFiles.checkPrivate(f, what: "database.password_file")
        return try SecureFiles.read(f, what: "database.password_file").trimmingCharacters(in: .newlines)
    }
}
