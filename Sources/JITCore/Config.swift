import Foundation
package import Yams

/// A config error that names the file, the line and the field to fix.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var field: String
    public var message: String
    public init(file: String, line: Int?, field: String, message: String) {
        self.file = file
        self.line = line
        self.field = field
        self.message = message
    }
    public var description: String {
        let at = line.map { "\(file):\($0)" } ?? file
        return field.isEmpty ? "\(at): \(message)" : "\(at): \(field): \(message)"
    }
}

/// What jitd does when a login grant ends while sessions opened under it are still running.
public enum OnExpiry: String, Sendable, Equatable {
    /// Warn the sessions, then end them at expiry.
    case terminate
    /// Leave running sessions alone; only new logins and sudo stop.
    case keep
}

/// Which users the gate applies to (the PAM module returns PAM_IGNORE for the rest).
public enum Gate: String, Sendable, Equatable {
    /// Members of the requester groups need a grant; other users are not gated.
    case requesters
    /// Every user except root and the PAM module's exempt group needs a grant.
    case all
}

/// The minimal policy: who may ask, for what, for how long, and who approves.
/// The full rule engine replaces this with a list of rules; the agent asks `Policy` only.
public struct Policy: Equatable, Sendable {
    public var requesterGroups: [String] = ["jit-requesters"]
    public var approverGroups: [String] = ["jit-approvers"]
    public var approvalsRequired: Int = 1
    public var maxDuration: Int64 = 4 * 3600
    public var defaultDuration: Int64 = 3600
    public var requireReason: Bool = true
    public var scopes: Set<String> = ["login", "sudo", "commands"]
    public var runAs: [String] = ["root"]
    public var noPassword: Bool = true
    public var gate: Gate = .requesters
    public var onExpiry: OnExpiry = .terminate
    public var expiryWarning: Int64 = 300
    /// The rules written under `rules:`, tried in order before the default rule.
    public var rules: [Rule] = []
    /// Whether the request settings above form a last rule named "default" (see `Config.parse`).
    public var defaultRule: Bool = true
    /// Break-glass, when the config has a `break_glass:` block.
    public var breakGlass: BreakGlass? = nil
    /// The line of the `policy:` block, for messages about the default rule.
    public var line: Int? = nil
    public init() {}
}

/// The agent's configuration (`/etc/jit/jit.yaml`).
public struct Config: Equatable, Sendable {
    public static let defaultPath = "/etc/jit/jit.yaml"
    public static let defaultSocket = "/run/jit/jitd.sock"
    public static let defaultDatabase = "/var/lib/jit/jit.db"
    public static let defaultSudoersDir = "/etc/sudoers.d"
    /// No grant or pending request may be longer than this, whatever the policy says.
    public static let hardCeiling: Int64 = 7 * 86_400

    public var environment: String = "production"
    /// This host's labels; rules may require some (`labels: [db]`).
    public var labels: [String] = []
    public var socket: String = Config.defaultSocket
    public var database: String = Config.defaultDatabase
    public var sudoersDir: String = Config.defaultSudoersDir
    /// Where sudo writes the I/O logs of recorded grants (`record:`), one folder per grant.
    public var sudoIODir: String = "/var/log/jit/sudo-io"
    public var pendingTTL: Int64 = 3600
    /// How often sudoers files are reconciled with the store even when nothing changed (at most 1 minute).
    public var reconcileInterval: Int64 = 60
    public var audit = AuditSettings()
    /// Notification channels (`notify:`); none by default.
    public var notify = NotifySettings()
    /// What one user may take of the agent (`limits:`).
    public var limits = LimitSettings()
    public var policy = Policy()
    /// `server:`: fleet mode (nil: a single host).
    public var server: FleetSettings? = nil

    public init() {}

    /// Reads and validates a config file. Every error names the file, line and field.
    public static func load(path: String) throws(ConfigError) -> Config {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigError(file: path, line: nil, field: "", message: "cannot read the config file (\(Self.reason(error))); check the path given with --config")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(file: path, line: nil, field: "", message: "the file is not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    package static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain,
            let s = strerror(Int32(u.code))
        {
            return String(cString: s)
        }
        return ns.localizedDescription
    }

    /// Parses config text. Unknown keys, wrong types and bad values are errors, never ignored.
    public static func parse(_ text: String, file: String = "jit.yaml") throws(ConfigError) -> Config {
        guard let root = try YAMLReader.compose(text, file: file) else {
            throw ConfigError(file: file, line: 1, field: "", message: "the file is empty; it needs at least 'environment:'")
        }
        let r = YAMLReader(file: file)
        var c = Config()
        let top = try r.mapping(root, path: "")
        try r.onlyKeys(top, ["environment", "labels", "socket", "database", "sudoers_dir", "sudo_io_dir", "pending_ttl", "reconcile_interval", "audit", "notify", "limits", "policy", "rules", "break_glass", "server"], path: "")
        guard top["environment"] != nil else {
            throw ConfigError(file: file, line: root.mark?.line, field: "environment", message: "is required: name this host's environment, e.g. 'environment: production'")
        }
        for (key, (keyNode, value)) in top {
            switch key {
            case "environment":
                c.environment = try r.name(value, path: key)
            case "socket": c.socket = try r.absolutePath(value, path: key)
            case "database": c.database = try r.absolutePath(value, path: key)
            case "sudoers_dir": c.sudoersDir = try r.absolutePath(value, path: key)
            case "sudo_io_dir": c.sudoIODir = try r.absolutePath(value, path: key)
            case "pending_ttl": c.pendingTTL = try r.duration(value, path: key, ceiling: Config.hardCeiling)
            case "reconcile_interval": c.reconcileInterval = try r.duration(value, path: key, ceiling: 60)
            case "audit": c.audit = try parseAudit(value, r: r)
            case "notify": c.notify = try parseNotify(value, r: r)
            case "limits": c.limits = try parseLimits(value, r: r)
            case "policy":
                let rules = c.policy.rules, bg = c.policy.breakGlass
                c.policy = try parsePolicy(value, r: r)
                c.policy.line = keyNode.mark?.line
                c.policy.rules = rules
                c.policy.breakGlass = bg
            case "labels": c.labels = try r.names(value, path: key, nonEmpty: false)
            case "server": c.server = try parseServer(value, r: r)
            case "rules", "break_glass": break
            default: throw r.error(keyNode, key, "is not a known setting")
            }
        }
        try parseRules(top, into: &c, r: r)
        return c
    }

    static func parsePolicy(_ node: Node, r: YAMLReader) throws(ConfigError) -> Policy {
        var p = Policy()
        let m = try r.mapping(node, path: "policy")
        let known = [
            "requester_groups", "approver_groups", "approvals_required", "max_duration", "default_duration",
            "require_reason", "scopes", "runas", "nopasswd", "gate", "on_expiry", "expiry_warning",
        ]
        try r.onlyKeys(m, known, path: "policy")
        var defaultGiven = false
        for (key, (_, v)) in m {
            let path = "policy.\(key)"
            switch key {
            case "requester_groups": p.requesterGroups = try r.names(v, path: path, nonEmpty: true)
            case "approver_groups": p.approverGroups = try r.names(v, path: path, nonEmpty: true)
            case "approvals_required":
                let n = try r.int(v, path: path)
                guard (1...10).contains(n) else { throw r.error(v, path, "must be between 1 and 10 (the requester never counts)") }
                p.approvalsRequired = n
            case "max_duration": p.maxDuration = try r.duration(v, path: path, ceiling: Config.hardCeiling)
            case "default_duration":
                p.defaultDuration = try r.duration(v, path: path, ceiling: Config.hardCeiling)
                defaultGiven = true
            case "require_reason": p.requireReason = try r.bool(v, path: path)
            case "scopes":
                let s = try r.names(v, path: path, nonEmpty: true)
                for x in s where !["login", "sudo", "commands"].contains(x) {
                    throw r.error(v, path, "'\(x)' is not a scope; use login, sudo or commands")
                }
                p.scopes = Set(s)
            case "runas": p.runAs = try r.names(v, path: path, nonEmpty: true)
            case "nopasswd": p.noPassword = try r.bool(v, path: path)
            case "gate":
                guard let g = Gate(rawValue: try r.string(v, path: path)) else {
                    throw r.error(v, path, "must be 'requesters' or 'all'")
                }
                p.gate = g
            case "on_expiry":
                guard let o = OnExpiry(rawValue: try r.string(v, path: path)) else {
                    throw r.error(v, path, "must be 'terminate' or 'keep'")
                }
                p.onExpiry = o
            case "expiry_warning":
                p.expiryWarning = try r.duration(v, path: path, ceiling: 86_400)
            default: break
            }
        }
        if !defaultGiven { p.defaultDuration = min(p.defaultDuration, p.maxDuration) }
        if p.defaultDuration > p.maxDuration {
            throw r.error(m["default_duration"]!.1, "policy.default_duration", "is longer than policy.max_duration (\(Durations.format(p.maxDuration)))")
        }
        return p
    }
}

/// Typed access to a Yams node tree that reports errors with the line and the field path.
package struct YAMLReader {
    package let file: String
    package init(file: String) { self.file = file }

    /// The node tree of a YAML text (nil when empty); syntax errors and duplicate keys name their line.
    package static func compose(_ text: String, file: String) throws(ConfigError) -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch let YamlError.duplicatedKeysInMapping(keys, context) {
            throw ConfigError(file: file, line: context.mark.line, field: keys.joined(separator: ", "), message: "is given twice in the same mapping (first here); keep one")
        } catch let e as YamlError {
            throw ConfigError(file: file, line: YAMLReader.line(of: e), field: "", message: "not valid YAML: \(YAMLReader.problem(of: e))")
        } catch {
            throw ConfigError(file: file, line: nil, field: "", message: "not valid YAML: \(error)")
        }
    }

    package static func line(of e: YamlError) -> Int? {
        switch e {
        case .scanner(_, _, let m, _), .parser(_, _, let m, _), .composer(_, _, let m, _): return m.line
        default: return nil
        }
    }

    package static func problem(of e: YamlError) -> String {
        switch e {
        case .scanner(_, let p, _, _), .parser(_, let p, _, _), .composer(_, let p, _, _): return p
        case .reader(let p, _, _, _): return p
        default: return "\(e)"
        }
    }

    package func error(_ node: Node, _ path: String, _ message: String) -> ConfigError {
        ConfigError(file: file, line: node.mark?.line, field: path, message: message)
    }

    /// A mapping as key → (key node, value node); duplicate keys are an error.
    package func mapping(_ node: Node, path: String) throws(ConfigError) -> [String: (Node, Node)] {
        guard case .mapping(let m) = node else {
            throw error(node, path.isEmpty ? "(top level)" : path, "must be a mapping of 'key: value' lines")
        }
        var out: [String: (Node, Node)] = [:]
        for (k, v) in m {
            guard case .scalar(let s) = k else { throw error(k, path, "has a key that is not plain text") }
            let name = s.string
            if out[name] != nil {
                throw error(k, path.isEmpty ? name : "\(path).\(name)", "is given twice")
            }
            out[name] = (k, v)
        }
        return out
    }

    package func onlyKeys(_ m: [String: (Node, Node)], _ known: [String], path: String) throws(ConfigError) {
        for (name, (k, _)) in m.sorted(by: { ($0.value.0.mark?.line ?? 0) < ($1.value.0.mark?.line ?? 0) }) where !known.contains(name) {
            let full = path.isEmpty ? name : "\(path).\(name)"
            let near = known.min { editDistance($0, name) < editDistance($1, name) }
            var hint = "known keys here: \(known.joined(separator: ", "))"
            if let near, editDistance(near, name) <= 3 { hint = "did you mean '\(near)'?" }
            throw error(k, full, "is not a known setting; \(hint)")
        }
    }

    package func string(_ node: Node, path: String) throws(ConfigError) -> String {
        guard case .scalar(let s) = node else { throw error(node, path, "must be a single value, not a list or mapping") }
        return s.string
    }

    package func bool(_ node: Node, path: String) throws(ConfigError) -> Bool {
        guard case .scalar(let s) = node, s.style == .plain else { throw error(node, path, "must be true or false") }
        switch s.string {
        case "true": return true
        case "false": return false
        default: throw error(node, path, "must be true or false, not '\(s.string)'")
        }
    }

    package func int(_ node: Node, path: String) throws(ConfigError) -> Int {
        guard case .scalar(let s) = node, s.style == .plain, let n = Int(s.string) else {
            throw error(node, path, "must be a whole number")
        }
        return n
    }

    package func duration(_ node: Node, path: String, ceiling: Int64) throws(ConfigError) -> Int64 {
        let s = try string(node, path: path)
        let d: Int64
        do { d = try Durations.parse(s) } catch { throw self.error(node, path, error.message) }
        guard d <= ceiling else {
            throw error(node, path, "\(s) is over the hard ceiling of \(Durations.format(ceiling))")
        }
        return d
    }

    /// A user, group or environment name: plain POSIX-style characters only.
    package func name(_ node: Node, path: String) throws(ConfigError) -> String {
        let s = try string(node, path: path)
        guard Names.isValid(s) else {
            throw error(node, path, "'\(s)' is not a valid name (letters, digits, '_', '-', '.'; at most 64)")
        }
        return s
    }

    package func names(_ node: Node, path: String, nonEmpty: Bool) throws(ConfigError) -> [String] {
        guard case .sequence(let seq) = node else { throw error(node, path, "must be a list, e.g. [a, b]") }
        var out: [String] = []
        for item in seq { out.append(try name(item, path: path)) }
        if nonEmpty && out.isEmpty { throw error(node, path, "must name at least one") }
        return out
    }

    package func absolutePath(_ node: Node, path: String) throws(ConfigError) -> String {
        let s = try string(node, path: path)
        guard s.hasPrefix("/"), !s.contains("\0"), !s.split(separator: "/").contains("..") else {
            throw error(node, path, "must be an absolute path without '..'")
        }
        return s
    }
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    for i in 1...a.count {
        var cur = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        prev = cur
    }
    return prev[b.count]
}

/// Names of users, groups and environments.
public enum Names {
    /// Letters, digits, `_`, `-`, `.`; not starting with `-` or `.`; 1 to 64 bytes.
    public static func isValid(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 64, let f = s.utf8.first, f != UInt8(ascii: "-"), f != UInt8(ascii: ".") else { return false }
        return s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                || b == UInt8(ascii: "_") || b == UInt8(ascii: "-") || b == UInt8(ascii: ".")
        }
    }
}
