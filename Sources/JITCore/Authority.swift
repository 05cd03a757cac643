import Foundation

/// An operation refused, with the wire error code and a sentence that says what to do.
public struct JITError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

extension JITError {
    public init(_ e: WireError) { self.init(e.code, e.message) }
    public init(_ e: ValidationError) { self.init(.invalid, e.message) }
    public init(_ e: TransitionError) { self.init(.conflict, e.description) }
}

/// A user as NSS knows them: who is calling (from SO_PEERCRED), or who a request is for.
public struct Identity: Equatable, Sendable {
    public var uid: UInt32
    public var name: String
    public var groups: Set<String>
    public init(uid: UInt32, name: String, groups: Set<String>) {
        self.uid = uid
        self.name = name
        self.groups = groups
    }
    public var isRoot: Bool { uid == 0 }
}

/// A new request before it is stored.
public struct Draft: Equatable, Sendable {
    public var environment: String?
    public var scope: Scope
    public var runAs: String?
    public var duration: Int64?
    public var reason: String
    public var rhost: String
    public var service: String
    public init(environment: String? = nil, scope: Scope, runAs: String? = nil, duration: Int64? = nil, reason: String, rhost: String = "", service: String = "") {
        self.environment = environment
        self.scope = scope
        self.runAs = runAs
        self.duration = duration
        self.reason = reason
        self.rhost = rhost
        self.service = service
    }
}

/// Limits on text from users, applied before anything is stored.
public enum Limits {
    public static let reasonBytes = 1000
    public static let commentBytes = 1000
    public static let commandBytes = 512
    public static let commands = 32
}

/// The decisions of the minimal policy: who is gated, who may ask for what, who may approve.
/// Pure: it is handed identities and a clock reading, and does no I/O.
extension Policy {
    public func isRequester(_ who: Identity) -> Bool { !who.groups.isDisjoint(with: requesterGroups) }
    public func isApprover(_ who: Identity) -> Bool { !who.groups.isDisjoint(with: approverGroups) }

    /// Whether the PAM gate applies to this user (root never is; the module's exempt group never gets here).
    public func gates(_ who: Identity) -> Bool {
        if who.isRoot { return false }
        switch gate {
        case .all: return true
        case .requesters: return isRequester(who)
        }
    }

    /// Checks a draft request against the policy and returns it completed (defaults filled in).
    public func admit(_ d: Draft, from who: Identity, hostEnvironment: String) throws(JITError) -> Draft {
        guard isRequester(who) else {
            throw JITError(.unauthorized, "\(who.name) is not in a requester group (\(requesterGroups.joined(separator: ", "))); ask an admin to add you")
        }
        var out = d
        let env = d.environment ?? hostEnvironment
        guard env == hostEnvironment else {
            throw JITError(.invalid, "this host is in environment '\(hostEnvironment)', not '\(env)'; drop --env or ask on a host of '\(env)'")
        }
        out.environment = env
        guard scopes.contains(d.scope.name) else {
            throw JITError(.invalid, "the policy does not allow '\(d.scope.name)' requests; allowed: \(scopes.sorted().joined(separator: ", "))")
        }
        let duration = d.duration ?? defaultDuration
        guard duration > 0 else { throw JITError(.invalid, "the duration must be at least 1s") }
        guard duration <= maxDuration else {
            throw JITError(.invalid, "\(Durations.format(duration)) is over the policy's maximum of \(Durations.format(maxDuration)); ask for less with --for")
        }
        out.duration = duration
        let reason = d.reason.trimmingCharacters(in: .whitespacesAndNewlines)
        if requireReason && reason.isEmpty {
            throw JITError(.invalid, "the policy requires a reason; give one with --reason TEXT")
        }
        guard reason.utf8.count <= Limits.reasonBytes else {
            throw JITError(.invalid, "the reason is \(reason.utf8.count) bytes; keep it under \(Limits.reasonBytes)")
        }
        guard !reason.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw JITError(.invalid, "the reason contains control characters; write it on one line")
        }
        out.reason = reason
        let runAs = d.runAs ?? (runAsDefault)
        if d.scope == .login {
            out.runAs = ""
        } else {
            guard Names.isValid(runAs), runAs.utf8.count <= 32 else {
                throw JITError(.invalid, "'\(runAs)' is not a valid user name for --runas")
            }
            guard self.runAs.contains(runAs) else {
                throw JITError(.invalid, "the policy does not allow running as '\(runAs)'; allowed: \(self.runAs.joined(separator: ", "))")
            }
            out.runAs = runAs
        }
        if case .commands(let cs) = d.scope {
            guard cs.count <= Limits.commands else { throw JITError(.invalid, "ask for at most \(Limits.commands) commands at once") }
            for c in cs {
                guard c.hasPrefix("/") else {
                    throw JITError(.invalid, "the command '\(c)' is not an absolute path; write it like /usr/bin/systemctl restart nginx")
                }
                guard c.utf8.count <= Limits.commandBytes else { throw JITError(.invalid, "a command is longer than \(Limits.commandBytes) bytes") }
                guard !c.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                    throw JITError(.invalid, "a command contains control characters")
                }
            }
        }
        return out
    }

    var runAsDefault: String { runAs.contains("root") ? "root" : (runAs.first ?? "root") }

    /// Whether `who` may approve or deny `request`: an approver, and never for their own request.
    public func mayDecide(_ r: AccessRequest, by who: Identity) throws(JITError) {
        guard isApprover(who) else {
            throw JITError(.unauthorized, "\(who.name) is not in an approver group (\(approverGroups.joined(separator: ", "))); ask an approver")
        }
        guard who.uid != r.uid && who.name != r.user else {
            throw JITError(.unauthorized, "nobody approves or denies their own request; ask another approver")
        }
    }
}
