public import Foundation

/// What a request asks for.
public enum Scope: Equatable, Hashable, Sendable {
    /// Log in (ssh, console); sudo and command grants cover it too when their rule grants login (`Grant.coversLogin`).
    case login
    /// Run any command with sudo as the run-as user.
    case sudo
    /// Run exactly these commands (absolute paths, optional exact arguments) with sudo.
    case commands([String])

    public var name: String {
        switch self {
        case .login: "login"
        case .sudo: "sudo"
        case .commands: "commands"
        }
    }

    public var commands: [String] {
        if case .commands(let c) = self { return c }
        return []
    }

    public var includesSudo: Bool { self != .login }

    /// A readable form: `login`, `sudo`, `sudo: /usr/bin/systemctl restart nginx, /usr/bin/id`.
    public var summary: String {
        switch self {
        case .login: "login"
        case .sudo: "sudo (all commands)"
        case .commands(let c): "sudo: " + c.joined(separator: ", ")
        }
    }

    public init(name: String, commands: [String]) throws(ValidationError) {
        switch name {
        case "login":
            guard commands.isEmpty else { throw ValidationError("a login request takes no commands; drop --command or use scope commands") }
            self = .login
        case "sudo":
            guard commands.isEmpty else { throw ValidationError("'--sudo' means all commands; drop --command, or drop --sudo to list commands") }
            self = .sudo
        case "commands":
            guard !commands.isEmpty else { throw ValidationError("name at least one command with --command /absolute/path") }
            self = .commands(commands)
        default:
            throw ValidationError("the scope '\(name)' is unknown; use login, sudo or commands")
        }
    }
}

/// Life cycle of a request. The only place transitions are decided: see `RequestState.transition`.
public enum RequestState: String, Sendable, Codable, CaseIterable {
    case pending, approved, denied, cancelled, expired

    public var isFinal: Bool { self != .pending }

    /// The one place request transitions are allowed: pending → approved | denied | cancelled | expired.
    /// Everything else (leaving a final state, staying pending by "transition") is refused.
    public func transition(to next: RequestState) throws(TransitionError) -> RequestState {
        guard self == .pending, next != .pending else {
            throw TransitionError(entity: "request", from: rawValue, to: next.rawValue)
        }
        return next
    }
}

/// Life cycle of a grant: active → expired | revoked | used, nothing else. `used`: a grant with a use
/// limit (`uses: N`, `jit run --once`) whose last use was admitted.
public enum GrantState: String, Sendable, Codable, CaseIterable {
    case active, expired, revoked, used

    public func transition(to next: GrantState) throws(TransitionError) -> GrantState {
        guard self == .active, next != .active else {
            throw TransitionError(entity: "grant", from: rawValue, to: next.rawValue)
        }
        return next
    }
}

public struct TransitionError: Error, Equatable, Sendable, CustomStringConvertible {
    public var entity: String
    public var from: String
    public var to: String
    public var description: String {
        "the \(entity) is \(from) and cannot become \(to)"
    }
}

/// What sudo records of a grant's uses (`record:` in a rule): nothing, what the command printed, or what
/// it printed and what was typed. Rendered as sudo's own `LOG_OUTPUT:` / `LOG_INPUT:` tags.
public enum RecordMode: String, Equatable, Sendable, CaseIterable {
    case none = ""
    case output = "output"
    case inputOutput = "input,output"

    public var logsOutput: Bool { self != .none }
    public var logsInput: Bool { self == .inputOutput }

    /// Reads `output`, `input,output` (either order, `input` alone is refused: sudo's input log without the
    /// output cannot be replayed), or empty.
    public init(text: String) throws(ValidationError) {
        let parts = Set(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        switch parts {
        case []: self = .none
        case ["output"]: self = .output
        case ["input", "output"]: self = .inputOutput
        default: throw ValidationError("record must be 'output' or 'input,output', not '\(text)'")
        }
    }
}

/// A request for access, as stored.
public struct AccessRequest: Equatable, Sendable {
    public var id: Int64
    public var user: String
    public var uid: UInt32
    public var environment: String
    public var scope: Scope
    public var runAs: String
    public var duration: Int64
    public var reason: String
    public var state: RequestState
    public var createdAt: Date
    /// When a still-pending request expires (created + pending_ttl).
    public var expiresAt: Date
    public var decidedAt: Date?
    public var decidedBy: String?
    public var comment: String?
    public var rule: String
    public var rhost: String
    public var service: String
    public var approvals: [String]
    public var grantID: Int64?
    /// How it was approved: approvers, auto (the rule approved it) or break-glass (a bypass). Nil until approved.
    public var approvedVia: ApprovedVia?
    /// The ticket given with the request, if any.
    public var ticket: String?
    /// For an extension: the grant it asks more time for.
    public var extends: Int64?
    /// How many sudo uses the grant allows (nil: any number until it ends): `jit run --once`, or the rule's `uses`.
    public var uses: Int?
    /// What sudo records of the grant's uses (the rule's `record`).
    public var record: RecordMode
    /// Fleet (control plane only): the hosts the request names (empty: every host of the environment its
    /// rule's labels allow), and the host that filed it with that host's outbox sequence number.
    public var hosts: [String] = []
    /// The labels of the rule that admitted it: a grant for every host holds every one of them.
    public var labels: [String] = []
    public var filedByHost: String? = nil
    public var hostSeq: Int64? = nil

    public init(
        id: Int64 = 0, user: String, uid: UInt32, environment: String, scope: Scope, runAs: String,
        duration: Int64, reason: String, state: RequestState = .pending, createdAt: Date, expiresAt: Date,
        decidedAt: Date? = nil, decidedBy: String? = nil, comment: String? = nil, rule: String = "default",
        rhost: String = "", service: String = "", approvals: [String] = [], grantID: Int64? = nil,
        approvedVia: ApprovedVia? = nil, ticket: String? = nil, extends: Int64? = nil, uses: Int? = nil,
        record: RecordMode = .none
    ) {
        self.uses = uses
        self.record = record
        self.id = id
        self.user = user
        self.uid = uid
        self.environment = environment
        self.scope = scope
        self.runAs = runAs
        self.duration = duration
        self.reason = reason
        self.state = state
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.decidedAt = decidedAt
        self.decidedBy = decidedBy
        self.comment = comment
        self.rule = rule
        self.rhost = rhost
        self.service = service
        self.approvals = approvals
        self.grantID = grantID
        self.approvedVia = approvedVia
        self.ticket = ticket
        self.extends = extends
    }

    /// Wire form (docs/PROTOCOL.md, `show`).
    public var fields: [(String, String)] {
        var f: [(String, String)] = [
            ("id", String(id)), ("state", state.rawValue), ("user", user), ("uid", String(uid)),
            ("environment", environment), ("scope", scope.name),
        ]
        for c in scope.commands { f.append(("command", c)) }
        for w in CommandRisk.warnings(for: scope) { f.append(("warning", w)) }
        f += [
            ("runas", runAs), ("duration", String(duration)), ("reason", reason),
            ("created_at", Timestamps.format(createdAt)), ("expires_at", Timestamps.format(expiresAt)),
            ("rule", rule),
        ]
        if let d = decidedAt { f.append(("decided_at", Timestamps.format(d))) }
        if let b = decidedBy { f.append(("decided_by", b)) }
        if let c = comment { f.append(("comment", c)) }
        if let g = grantID { f.append(("grant", String(g))) }
        for a in approvals { f.append(("approval", a)) }
        if let v = approvedVia { f.append(("approved_via", v.rawValue)) }
        if let t = ticket { f.append(("ticket", t)) }
        if let e = extends { f.append(("extends", String(e))) }
        if let u = uses { f.append(("uses", String(u))) }
        if record != .none { f.append(("record", record.rawValue)) }
        return f
    }
}

/// Access that was approved, while and after it lasts.
public struct Grant: Equatable, Sendable {
    public var id: Int64
    public var requestID: Int64
    public var user: String
    public var uid: UInt32
    public var environment: String
    public var scope: Scope
    public var runAs: String
    public var state: GrantState
    public var startsAt: Date
    public var expiresAt: Date
    public var endedAt: Date?
    public var endedBy: String?
    public var noPassword: Bool
    /// Whether the grant also lets its user log in: true for login grants, and for sudo or command grants
    /// whose rule lists `login` in its `scopes` (the same approval path would have granted a login). A rule
    /// that grants only commands or sudo never opens ssh (issue 13, finding 7).
    public var coversLogin: Bool
    /// Sudo uses allowed in all (nil: no limit) and how many are left.
    public var uses: Int?
    public var usesLeft: Int?
    /// What sudo records of the grant's uses.
    public var record: RecordMode
    /// Fleet (control plane only): the hosts the grant opens (empty: every host of the environment holding
    /// every label in `labels`, the rule's labels).
    public var hosts: [String] = []
    public var labels: [String] = []

    public init(
        id: Int64 = 0, requestID: Int64, user: String, uid: UInt32, environment: String, scope: Scope,
        runAs: String, state: GrantState = .active, startsAt: Date, expiresAt: Date, endedAt: Date? = nil,
        endedBy: String? = nil, noPassword: Bool = true, coversLogin: Bool? = nil, uses: Int? = nil, usesLeft: Int? = nil,
        record: RecordMode = .none
    ) {
        self.coversLogin = coversLogin ?? (scope.name != "commands")
        self.uses = uses
        self.usesLeft = usesLeft ?? uses
        self.record = record
        self.id = id
        self.requestID = requestID
        self.user = user
        self.uid = uid
        self.environment = environment
        self.scope = scope
        self.runAs = runAs
        self.state = state
        self.startsAt = startsAt
        self.expiresAt = expiresAt
        self.endedAt = endedAt
        self.endedBy = endedBy
        self.noPassword = noPassword
    }

    /// Whether this grant lets its user use a PAM service: login services need `coversLogin`; services
    /// named `sudo*` (sudo, sudo-i) need a sudo scope.
    public func covers(service: String) -> Bool {
        covers(ServiceKind(service: service))
    }

    public func covers(_ kind: ServiceKind) -> Bool {
        kind == .login ? coversLogin : scope.includesSudo
    }

    public var fields: [(String, String)] {
        var f: [(String, String)] = [
            ("id", String(id)), ("request_id", String(requestID)), ("user", user), ("uid", String(uid)),
            ("environment", environment), ("scope", scope.name),
        ]
        for c in scope.commands { f.append(("command", c)) }
        f += [
            ("runas", runAs), ("state", state.rawValue), ("starts_at", Timestamps.format(startsAt)),
            ("expires_at", Timestamps.format(expiresAt)), ("login", coversLogin ? "1" : "0"),
        ]
        if let d = endedAt { f.append(("ended_at", Timestamps.format(d))) }
        if let b = endedBy { f.append(("ended_by", b)) }
        if let u = uses { f += [("uses", String(u)), ("uses_left", String(usesLeft ?? 0))] }
        if record != .none { f.append(("record", record.rawValue)) }
        return f
    }
}

/// How a PAM service name maps to what a grant must cover.
public enum ServiceKind: Equatable, Sendable {
    case login, sudo
    public init(service: String) {
        self = service.hasPrefix("sudo") ? .sudo : .login
    }
}
