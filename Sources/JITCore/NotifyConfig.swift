import Foundation
package import Yams
#if canImport(Glibc)
import Glibc
#endif

/// What a channel is told about. `events:` in a channel names some of these; absent means all.
public enum NotifyEvent: String, Sendable, Equatable, CaseIterable {
    /// A new request waits for its approvers.
    case request
    /// Nobody decided in time: the next tier may decide.
    case escalation
    /// A break-glass bypass: every approver hears.
    case breakGlass = "break_glass"
    /// The requester hears the answer: approved, denied, or expired unanswered.
    case decision
    /// The requester's grant ends soon.
    case expiring
    /// Admins: a sudoers file could not be written, or reconcile found drift.
    case sudoers

    /// The audit kinds each event is derived from.
    public var auditKinds: [String] {
        switch self {
        case .request: ["request.filed"]
        case .escalation: ["request.escalated"]
        case .breakGlass: ["breakglass.bypass"]
        case .decision: ["request.approved", "request.denied", "request.expired"]
        case .expiring: ["grant.expiring"]
        case .sudoers: ["sudoers.write_failed", "sudoers.repair_failed", "sudoers.stale_removed", "sudoers.restored", "sudoers.repaired"]
        }
    }

    public static func of(auditKind k: String) -> NotifyEvent? { allCases.first { $0.auditKinds.contains(k) } }
    public static var allAuditKinds: [String] { allCases.flatMap(\.auditKinds) }
}

/// An `https://` (or `http://`) `host[:port]/path` URL, parsed once. Only the host and port ever appear in
/// logs: a Slack-style hook keeps its secret in the path.
public struct HTTPURL: Equatable, Sendable {
    public var host: String
    public var port: UInt16
    public var path: String
    /// https: TLS, the server's certificate verified.
    public var tls: Bool
    /// `host:port`, safe to log.
    public var endpoint: String { "\(host):\(port)" }
    /// The whole URL again (it may hold a secret in its path: never log it).
    public var string: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(tls ? "https" : "http")://\(h):\(port)\(path)"
    }
    /// The host is this machine (127.0.0.0/8, ::1 or localhost): plain http:// never leaves it.
    public var isLoopback: Bool { Loopback.isHost(host) }

    public init(host: String, port: UInt16, path: String, tls: Bool = false) {
        self.host = host
        self.port = port
        self.path = path
        self.tls = tls
    }

    /// nil with a reason when the text is not a usable URL.
    public static func parse(_ s: String) -> Result<HTTPURL, ConfigProblem> {
        let lower = s.lowercased()
        let tls = lower.hasPrefix("https://")
        guard tls || lower.hasPrefix("http://") else { return .failure(ConfigProblem("must be an https:// URL (or http:// to this host)")) }
        let rest = s.dropFirst(tls ? 8 : 7)
        guard !rest.contains(where: { $0.isWhitespace || $0.asciiValue.map { $0 < 0x20 || $0 == 0x7f } ?? false }) else {
            return .failure(ConfigProblem("must not contain spaces or control characters"))
        }
        let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let authority = rest[..<slash]
        var path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if !path.hasPrefix("/") { path = "/" + path }
        guard !path.contains("#") else { return .failure(ConfigProblem("must not contain a #fragment")) }
        guard !authority.isEmpty, !authority.contains("@") else { return .failure(ConfigProblem("must name a host (user:password@ is not supported)")) }
        var host = String(authority)
        var port: UInt16 = tls ? 443 : 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return .failure(ConfigProblem("has an unclosed '[' in its host")) }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = UInt16(after.dropFirst()), p > 0 else { return .failure(ConfigProblem("has a bad port")) }
                port = p
            } else if !after.isEmpty { return .failure(ConfigProblem("has a bad host")) }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = UInt16(host[host.index(after: colon)...]), p > 0 else { return .failure(ConfigProblem("has a bad port")) }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:_".contains($0)) }) else {
            return .failure(ConfigProblem("must name a host"))
        }
        return .success(HTTPURL(host: host, port: port, path: path, tls: tls))
    }
}

/// Whether a host name or address is this machine.
public enum Loopback {
    public static func isHost(_ h: String) -> Bool {
        let l = h.lowercased()
        if l == "localhost" || l == "::1" || l == "0:0:0:0:0:0:0:1" { return true }
        let parts = l.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}

public struct ConfigProblem: Error, Sendable {
    public var message: String
    public init(_ m: String) { message = m }
}

/// One notification channel from the `notify:` section.
public struct NotifyChannel: Equatable, Sendable {
    public enum Kind: String, Sendable, Equatable { case webhook, slack, email }
    public var kind: Kind
    public var name: String
    public var events: Set<NotifyEvent> = Set(NotifyEvent.allCases)
    /// webhook and slack: where to post (read from `url` or `url_file`).
    public var url: HTTPURL? = nil
    /// webhook: the HMAC key (from `secret_file`), signing `X-JIT-Signature`.
    public var secret: [UInt8]? = nil
    /// webhook: the Standard Webhooks key (`webhook-signature`): the decoded bytes of a `whsec_<base64>`
    /// secret, else the same bytes as `secret` (the receiver's secret is then `whsec_` + base64 of them).
    public var webhookKey: [UInt8]? = nil
    /// webhook and slack: http:// to a host other than this one (clear text over the network).
    public var allowPlainHTTP = false
    /// The CA certificates (PEM) the server's certificate must chain to, instead of the system bundle.
    public var caFile: String? = nil
    // email
    public enum MailTransport: String, Sendable, Equatable { case sendmail, smtp }
    /// How mail leaves: the system MTA's `sendmail -t -i` (Debian Policy 11.6), or SMTP to `smtp_host`.
    public var transport: MailTransport = .sendmail
    /// The sendmail-compatible program (`transport: sendmail`).
    public var sendmail = "/usr/sbin/sendmail"
    /// TLS on an SMTP connection: STARTTLS required, implicit (SMTPS, port 465), or none (a relay on this host).
    public enum SMTPSecurity: String, Sendable, Equatable { case starttls, implicit, none }
    public var smtpSecurity: SMTPSecurity = .starttls
    public var smtpHost = ""
    public var smtpPort: UInt16 = 25
    public var from = ""
    public var to: [String] = []
    /// Send approver events to the approver groups' members and requester events to the requester, as `user@domain`.
    public var toGroups = false
    public var domain: String? = nil
    public var username: String? = nil
    public var password: String? = nil
    public var line: Int? = nil

    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    public func wants(_ e: NotifyEvent) -> Bool { events.contains(e) }
}

/// The `notify:` section: channels and how hard delivery tries.
public struct NotifySettings: Equatable, Sendable {
    public var channels: [NotifyChannel] = []
    /// The back-off doubles from 1 s up to this.
    public var maxBackoff: Int64 = 300
    /// A message not delivered after this long is marked failed.
    public var giveUpAfter: Int64 = 86_400
    /// ... or after this many attempts (nil: only the age counts).
    public var maxAttempts: Int? = nil
    /// Bounds each connect, read and write.
    public var timeout: Int64 = 5
    /// How long before a grant ends its requester is told.
    public var expiryNotice: Int64 = 600
    public init() {}

    public func channel(named n: String) -> NotifyChannel? { channels.first { $0.name == n } }
    public var wantsExpiring: Bool { channels.contains { $0.wants(.expiring) } }
}

extension Config {
    /// `notify:` of jit.yaml, and the same section of the control plane's server.yaml (one parser for both).
    package static func parseNotify(_ node: Node, r: YAMLReader) throws(ConfigError) -> NotifySettings {
        var n = NotifySettings()
        let m = try r.mapping(node, path: "notify")
        try r.onlyKeys(m, ["webhooks", "slack", "email", "max_backoff", "give_up_after", "max_attempts", "timeout", "expiry_notice"], path: "notify")
        for (key, (_, v)) in m.sorted(by: { ($0.value.0.mark?.line ?? 0) < ($1.value.0.mark?.line ?? 0) }) {
            let path = "notify.\(key)"
            switch key {
            case "max_backoff": n.maxBackoff = try r.duration(v, path: path, ceiling: 3600)
            case "give_up_after": n.giveUpAfter = try r.duration(v, path: path, ceiling: Config.hardCeiling)
            case "max_attempts":
                let a = try r.int(v, path: path)
                guard a >= 1 else { throw r.error(v, path, "must be at least 1") }
                n.maxAttempts = a
            case "timeout": n.timeout = try r.duration(v, path: path, ceiling: 60)
            case "expiry_notice": n.expiryNotice = try r.duration(v, path: path, ceiling: 86_400)
            case "webhooks", "slack", "email":
                guard case .sequence(let seq) = v else { throw r.error(v, path, "must be a list of channels, e.g. - name: ops") }
                for item in seq {
                    let c = try parseChannel(item, kind: key == "webhooks" ? .webhook : key == "slack" ? .slack : .email, path: path, r: r)
                    if let other = n.channels.first(where: { $0.name == c.name }) {
                        throw r.error(item, "\(path).name", "'\(c.name)' is already the name of another channel (line \(other.line ?? 0)); names must be unique")
                    }
                    n.channels.append(c)
                }
            default: break
            }
        }
        return n
    }

    static func parseChannel(_ node: Node, kind: NotifyChannel.Kind, path: String, r: YAMLReader) throws(ConfigError) -> NotifyChannel {
        let m = try r.mapping(node, path: path)
        let keys: [String]
        switch kind {
        case .webhook: keys = ["name", "url", "url_file", "secret_file", "events", "ca_file", "allow_plain_http"]
        case .slack: keys = ["name", "url", "url_file", "events", "ca_file", "allow_plain_http"]
        case .email:
            keys = ["name", "transport", "sendmail", "smtp_host", "smtp_port", "from", "to", "to_groups", "domain", "starttls", "implicit_tls", "ca_file",
                    "username", "password_file", "events"]
        }
        try r.onlyKeys(m, keys, path: path)
        guard let nameNode = m["name"]?.1 else { throw r.error(node, "\(path).name", "is required: give the channel a name") }
        var c = NotifyChannel(kind: kind, name: try r.name(nameNode, path: "\(path).name"))
        c.line = node.mark?.line
        let p = "\(path)[\(c.name)]"
        if let e = m["events"]?.1 {
            let names = try r.names(e, path: "\(p).events", nonEmpty: true)
            var set = Set<NotifyEvent>()
            for x in names {
                guard let ev = NotifyEvent(rawValue: x) else {
                    throw r.error(e, "\(p).events", "'\(x)' is not an event; use \(NotifyEvent.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                set.insert(ev)
            }
            c.events = set
        }
        switch kind {
        case .webhook, .slack:
            let text: String
            let at: Node
            switch (m["url"]?.1, m["url_file"]?.1) {
            case (let u?, nil): text = try r.string(u, path: "\(p).url"); at = u
            case (nil, let f?): text = try secretFile(f, path: "\(p).url_file", r: r).trimmingCharacters(in: .whitespacesAndNewlines); at = f
            case (nil, nil): throw r.error(node, "\(p).url", "is required (or url_file: a root-only file holding the URL)")
            default: throw r.error(node, "\(p).url", "give url or url_file, not both")
            }
            let urlField = m["url"] != nil ? "\(p).url" : "\(p).url_file"
            switch HTTPURL.parse(text) {
            case .success(let u): c.url = u
            case .failure(let e): throw r.error(at, urlField, e.message)
            }
            if let a = m["allow_plain_http"]?.1 { c.allowPlainHTTP = try r.bool(a, path: "\(p).allow_plain_http") }
            if let u = c.url, !u.tls, !u.isLoopback, !c.allowPlainHTTP {
                throw r.error(at, urlField, "http:// crosses the network in clear text: use https://, or http:// to this host (127.0.0.1, ::1, localhost), or write 'allow_plain_http: true'")
            }
            if let f = m["ca_file"]?.1 {
                guard c.url?.tls == true else { throw r.error(f, "\(p).ca_file", "applies to an https:// URL only") }
                c.caFile = try caFile(f, path: "\(p).ca_file", r: r)
            }
            if let s = m["secret_file"]?.1 {
                let key = try secretFile(s, path: "\(p).secret_file", r: r).trimmingCharacters(in: .whitespacesAndNewlines)
                guard key.utf8.count >= 16 else { throw r.error(s, "\(p).secret_file", "the secret is shorter than 16 bytes; use a long random one") }
                c.secret = Array(key.utf8)
                if key.hasPrefix("whsec_") {
                    guard let d = Data(base64Encoded: String(key.dropFirst(6))), d.count >= 16 else {
                        throw r.error(s, "\(p).secret_file", "a whsec_ secret must be whsec_ and the base64 of at least 16 random bytes")
                    }
                    c.webhookKey = Array(d)
                } else {
                    c.webhookKey = c.secret
                }
            }
        case .email:
            if let t = m["transport"]?.1 {
                let v = try r.string(t, path: "\(p).transport")
                guard let tr = NotifyChannel.MailTransport(rawValue: v) else {
                    throw r.error(t, "\(p).transport", "must be 'sendmail' (the system's MTA) or 'smtp' (with smtp_host)")
                }
                c.transport = tr
            } else {
                // Configs written before `transport` name an smtp_host; new ones hand mail to the MTA.
                c.transport = m["smtp_host"] != nil ? .smtp : .sendmail
            }
            switch c.transport {
            case .sendmail:
                for k in ["smtp_host", "smtp_port", "starttls", "implicit_tls", "ca_file", "username", "password_file"] {
                    if let n = m[k]?.1 { throw r.error(n, "\(p).\(k)", "applies to 'transport: smtp' only; with sendmail the MTA's own config decides") }
                }
                if let sm = m["sendmail"]?.1 { c.sendmail = try r.absolutePath(sm, path: "\(p).sendmail") }
            case .smtp:
                if let sm = m["sendmail"]?.1 { throw r.error(sm, "\(p).sendmail", "applies to 'transport: sendmail' only") }
                try parseSMTP(m, node: node, p: p, into: &c, r: r)
            }
            guard let f = m["from"]?.1 else { throw r.error(node, "\(p).from", "is required (the sender address)") }
            c.from = try address(f, path: "\(p).from", r: r)
            if let t = m["to"]?.1 {
                guard case .sequence(let seq) = t else { throw r.error(t, "\(p).to", "must be a list of addresses") }
                for a in seq { c.to.append(try address(a, path: "\(p).to", r: r)) }
            }
            if let g = m["to_groups"]?.1 { c.toGroups = try r.bool(g, path: "\(p).to_groups") }
            if let d = m["domain"]?.1 {
                let s = try r.string(d, path: "\(p).domain")
                guard Email.isDomain(s) else { throw r.error(d, "\(p).domain", "'\(s)' is not a mail domain") }
                c.domain = s
            }
            if c.toGroups && c.domain == nil {
                throw r.error(m["to_groups"]!.1, "\(p).to_groups", "needs 'domain:' (addresses are user@domain)")
            }
            if c.to.isEmpty && !c.toGroups { throw r.error(node, "\(p).to", "give 'to: [addresses]' or 'to_groups: true'") }
        }
        return c
    }

    /// `transport: smtp`: where, and how the connection is protected.
    static func parseSMTP(_ m: [String: (Node, Node)], node: Node, p: String, into c: inout NotifyChannel, r: YAMLReader) throws(ConfigError) {
        guard let h = m["smtp_host"]?.1 else { throw r.error(node, "\(p).smtp_host", "is required with 'transport: smtp'") }
        c.smtpHost = try r.string(h, path: "\(p).smtp_host")
        guard !c.smtpHost.isEmpty, c.smtpHost.allSatisfy({ $0.isLetter || $0.isNumber || ".-:".contains($0) }) else {
            throw r.error(h, "\(p).smtp_host", "must be a host name or address")
        }
        if let pn = m["smtp_port"]?.1 {
            let v = try r.int(pn, path: "\(p).smtp_port")
            guard (1...65535).contains(v) else { throw r.error(pn, "\(p).smtp_port", "must be between 1 and 65535") }
            c.smtpPort = UInt16(v)
        }
        let local = Loopback.isHost(c.smtpHost)
        var implicit = c.smtpPort == 465
        if let i = m["implicit_tls"]?.1 { implicit = try r.bool(i, path: "\(p).implicit_tls") }
        if let s = m["starttls"]?.1 {
            let v = try r.string(s, path: "\(p).starttls")
            guard !implicit else {
                throw r.error(s, "\(p).starttls", "implicit TLS (SMTPS, port 465 or implicit_tls: true) starts TLS at the first byte, no STARTTLS; leave starttls out")
            }
            switch v {
            case "required": c.smtpSecurity = .starttls
            case "never":
                // Allowed as before (configs written when TLS was not built in); check-config warns when
                // it crosses the network.
                c.smtpSecurity = .none
            default: throw r.error(s, "\(p).starttls", "must be 'required' (TLS, the server's certificate verified) or 'never' (clear text: a relay on this host)")
            }
        } else {
            c.smtpSecurity = implicit ? .implicit : (local ? .none : .starttls)
        }
        if let f = m["ca_file"]?.1 {
            guard c.smtpSecurity != .none else { throw r.error(f, "\(p).ca_file", "applies only with TLS (starttls: required, or implicit_tls)") }
            c.caFile = try caFile(f, path: "\(p).ca_file", r: r)
        }
        if let u = m["username"]?.1 {
            c.username = try r.string(u, path: "\(p).username")
            guard let pf = m["password_file"]?.1 else { throw r.error(u, "\(p).password_file", "is required with username") }
            guard c.smtpSecurity != .none || local else {
                throw r.error(u, "\(p).username", "a password is sent only over TLS (starttls: required, or implicit_tls) or to a relay on this host")
            }
            c.password = try secretFile(pf, path: "\(p).password_file", r: r).trimmingCharacters(in: .newlines)
        } else if let pf = m["password_file"]?.1 {
            throw r.error(pf, "\(p).username", "is required with password_file")
        }
    }

    /// A PEM file of CA certificates (public, so not root-only; it must not be writable by others).
    static func caFile(_ node: Node, path: String, r: YAMLReader) throws(ConfigError) -> String {
        let file = try r.absolutePath(node, path: path)
        var st = stat()
        guard stat(file, &st) == 0 else { throw r.error(node, path, "cannot read \(file): \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw r.error(node, path, "\(file) is not a regular file") }
        guard st.st_mode & 0o022 == 0 else {
            throw r.error(node, path, "\(file) is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): whoever can write it chooses whom jitd trusts; chmod 644 it")
        }
        guard let d = FileManager.default.contents(atPath: file), let text = String(data: d, encoding: .utf8),
              text.contains("-----BEGIN CERTIFICATE-----") else {
            throw r.error(node, path, "\(file) holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        return file
    }

    static func address(_ node: Node, path: String, r: YAMLReader) throws(ConfigError) -> String {
        let s = try r.string(node, path: path)
        guard Email.isAddress(s) else { throw r.error(node, path, "'\(s)' is not a plain mail address (user@domain)") }
        return s
    }

    /// Reads a root-only file: refused when group or others may read or write it.
    static func secretFile(_ node: Node, path: String, r: YAMLReader) throws(ConfigError) -> String {
        let file = try r.absolutePath(node, path: path)
        var st = stat()
        guard stat(file, &st) == 0 else {
            throw r.error(node, path, "cannot read \(file): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw r.error(node, path, "\(file) is not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw r.error(node, path, "\(file) is readable or writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); it holds a secret: chmod 600 it")
        }
        guard st.st_uid == geteuid() else {
            throw r.error(node, path, "\(file) belongs to uid \(st.st_uid), not to the user jitd runs as; chown it")
        }
        guard let d = FileManager.default.contents(atPath: file), let s = String(data: d, encoding: .utf8), !s.isEmpty else {
            throw r.error(node, path, "\(file) is empty or not UTF-8 text")
        }
        return s
    }
}

/// Mail addresses and domains, strictly: nothing that could carry a header or an SMTP command.
public enum Email {
    public static func isDomain(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 253 && !s.hasPrefix(".") && !s.hasSuffix(".") && !s.hasPrefix("-")
            && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x2e }
    }

    public static func isAddress(_ s: String) -> Bool {
        let parts = s.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= 64 else { return false }
        let localOK = parts[0].utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || "._+-=".utf8.contains(b)
        }
        return localOK && isDomain(String(parts[1]))
    }
}
