import Foundation

/// The JSON bodies of the control plane's `/v1` API. Keys are snake_case; times are RFC 3339 UTC.
public enum FleetWire {
    /// `POST /v1/enrol`: the join token and a PEM CSR made with the host's own key. A name is a wish that
    /// the token may overrule (a token made with `--host NAME` names its host).
    public struct EnrolRequest: Codable, Sendable {
        public var token: String
        public var csr: String
        public var name: String?
        public init(token: String, csr: String, name: String?) {
            self.token = token
            self.csr = csr
            self.name = name
        }
    }

    /// `POST /v1/renew`: a PEM CSR, with the same key or a new one. The identity stays the server's.
    public struct RenewRequest: Codable, Sendable {
        public var csr: String
        public init(csr: String) { self.csr = csr }
    }

    /// The answer to enrolment and renewal: the host certificate and the CA that signed it.
    public struct CertificateBundle: Codable, Sendable {
        public var name: String
        public var environment: String
        public var labels: [String]
        public var serial: String
        public var certificate: String
        public var ca: String
        public var notAfter: String
        enum CodingKeys: String, CodingKey {
            case name, environment, labels, serial, certificate, ca
            case notAfter = "not_after"
        }
        public init(name: String, environment: String, labels: [String], serial: String, certificate: String, ca: String, notAfter: String) {
            self.name = name
            self.environment = environment
            self.labels = labels
            self.serial = serial
            self.certificate = certificate
            self.ca = ca
            self.notAfter = notAfter
        }
    }

    /// `GET /v1/hosts/self`: who the server says the caller is.
    public struct HostSelf: Codable, Sendable {
        public var name: String
        public var environment: String
        public var labels: [String]
        public var serial: String
        public var notAfter: String
        public var enrolledAt: String
        enum CodingKeys: String, CodingKey {
            case name, environment, labels, serial
            case notAfter = "not_after"
            case enrolledAt = "enrolled_at"
        }
        public init(name: String, environment: String, labels: [String], serial: String, notAfter: String, enrolledAt: String) {
            self.name = name
            self.environment = environment
            self.labels = labels
            self.serial = serial
            self.notAfter = notAfter
            self.enrolledAt = enrolledAt
        }
    }

    /// `GET /v1/ca`: the fleet CA certificate (public), for the host to compare with its token's fingerprint.
    public struct CA: Codable, Sendable {
        public var certificate: String
        public var fingerprint: String
        public init(certificate: String, fingerprint: String) {
            self.certificate = certificate
            self.fingerprint = fingerprint
        }
    }

    /// Every error: `{"error": {"code": ..., "message": ...}}`.
    public struct ErrorBody: Codable, Sendable {
        public struct Detail: Codable, Sendable {
            public var code: String
            public var message: String
        }
        public var error: Detail
        public init(code: String, message: String) { self.error = Detail(code: code, message: message) }
    }
}

// MARK: slice 2 — requests from hosts, the grant stream, host events (docs/FLEET.md "The wire of slice 2")

extension FleetWire {
    /// `POST /v1/requests`: a request filed on a host (by the PAM module's refused login/sudo, or a local
    /// `jit request`), sent from the host's durable outbox. `(caller host, seq)` is the idempotency key: the
    /// same host sending the same `seq` again gets the first answer again, nothing is filed twice. The filer
    /// is always the caller's certificate, never a body field; `hosts` are *targets* (empty: every host of the
    /// caller's environment that the rule's labels allow), checked against the rule.
    public struct HostRequest: Codable, Sendable, Equatable {
        public var seq: Int64
        public var user: String
        /// "login", "sudo" or "commands".
        public var scope: String
        public var commands: [String]
        public var runAs: String?
        /// Seconds; nil: the rule's default.
        public var duration: Int64?
        public var reason: String
        public var ticket: String?
        public var uses: Int?
        public var hosts: [String]
        /// The host's own claim about its check path (recorded as the host's claim).
        public var rhost: String
        public var service: String
        public var filedAt: String
        enum CodingKeys: String, CodingKey {
            case seq, user, scope, commands, reason, ticket, uses, hosts, rhost, service
            case runAs = "run_as"
            case duration
            case filedAt = "filed_at"
        }
        public init(seq: Int64, user: String, scope: String, commands: [String] = [], runAs: String? = nil, duration: Int64? = nil,
                    reason: String, ticket: String? = nil, uses: Int? = nil, hosts: [String] = [], rhost: String = "", service: String = "",
                    filedAt: String) {
            self.seq = seq
            self.user = user
            self.scope = scope
            self.commands = commands
            self.runAs = runAs
            self.duration = duration
            self.reason = reason
            self.ticket = ticket
            self.uses = uses
            self.hosts = hosts
            self.rhost = rhost
            self.service = service
            self.filedAt = filedAt
        }
    }

    /// The answer to `POST /v1/requests` and `GET /v1/requests/{id}` (a host may read only requests it filed).
    public struct RequestStatus: Codable, Sendable, Equatable {
        public var id: Int64
        /// pending, approved, denied, cancelled, expired.
        public var state: String
        public var rule: String
        public var user: String
        public var environment: String
        public var hosts: [String]
        /// The approver groups of the first tier (for "ask someone in ..." messages).
        public var approverGroups: [String]
        public var grantID: Int64?
        public var expiresAt: String
        /// The sentence the host shows the user (the same the server's CLI would print).
        public var message: String
        enum CodingKeys: String, CodingKey {
            case id, state, rule, user, environment, hosts, message
            case approverGroups = "approver_groups"
            case grantID = "grant_id"
            case expiresAt = "expires_at"
        }
        public init(id: Int64, state: String, rule: String, user: String, environment: String, hosts: [String], approverGroups: [String],
                    grantID: Int64?, expiresAt: String, message: String) {
            self.id = id
            self.state = state
            self.rule = rule
            self.user = user
            self.environment = environment
            self.hosts = hosts
            self.approverGroups = approverGroups
            self.grantID = grantID
            self.expiresAt = expiresAt
            self.message = message
        }
    }

    /// A grant as hosts see it. No uid: the host resolves the user by name in its own NSS and refuses a user
    /// it does not know.
    public struct Grant: Codable, Sendable, Equatable {
        public var id: Int64
        public var requestID: Int64
        public var user: String
        public var environment: String
        /// Named target hosts; empty: every host of the environment holding every label in `labels`.
        public var hosts: [String]
        public var labels: [String]
        public var scope: String
        public var commands: [String]
        public var runAs: String
        /// active, expired, revoked, used.
        public var state: String
        public var startsAt: String
        public var expiresAt: String
        public var endedAt: String?
        public var endedBy: String?
        public var noPassword: Bool
        public var login: Bool
        public var uses: Int?
        public var record: String
        enum CodingKeys: String, CodingKey {
            case id, user, environment, hosts, labels, scope, commands, state, login, uses, record
            case requestID = "request_id"
            case runAs = "run_as"
            case startsAt = "starts_at"
            case expiresAt = "expires_at"
            case endedAt = "ended_at"
            case endedBy = "ended_by"
            case noPassword = "nopasswd"
        }
        public init(id: Int64, requestID: Int64, user: String, environment: String, hosts: [String], labels: [String], scope: String,
                    commands: [String], runAs: String, state: String, startsAt: String, expiresAt: String, endedAt: String?, endedBy: String?,
                    noPassword: Bool, login: Bool, uses: Int?, record: String) {
            self.id = id
            self.requestID = requestID
            self.user = user
            self.environment = environment
            self.hosts = hosts
            self.labels = labels
            self.scope = scope
            self.commands = commands
            self.runAs = runAs
            self.state = state
            self.startsAt = startsAt
            self.expiresAt = expiresAt
            self.endedAt = endedAt
            self.endedBy = endedBy
            self.noPassword = noPassword
            self.login = login
            self.uses = uses
            self.record = record
        }
    }

    /// `GET /v1/grants/stream?cursor=N&wait=S` (long-poll, `wait` ≤ 55 s, default 30): the changes to grants
    /// that concern the caller with version > N, in version order, at once if there are any, else when one
    /// comes or `wait` passes (then `changes` is empty and `cursor` is N or later: nothing up to it concerns the
    /// caller). `reset`: the host must replace
    /// everything it holds from the fleet by `changes` (which then are the caller's grants that are active
    /// now): sent for cursor 0 and for a cursor older than what the server keeps.
    public struct GrantStream: Codable, Sendable, Equatable {
        public var cursor: Int64
        public var reset: Bool
        public var changes: [Grant]
        public init(cursor: Int64, reset: Bool, changes: [Grant]) {
            self.cursor = cursor
            self.reset = reset
            self.changes = changes
        }
    }

    /// One event of a host's own trail (checks, sessions, sudoers writes, break-glass), shipped to the
    /// central trail. `seq` is the host's audit event id: `(caller host, seq)` is unique server-side, so a
    /// batch sent twice is stored once.
    public struct HostEvent: Codable, Sendable, Equatable {
        public var seq: Int64
        public var at: String
        public var kind: String
        public var actor: String
        public var user: String
        public var data: [String: String]
        public init(seq: Int64, at: String, kind: String, actor: String, user: String, data: [String: String]) {
            self.seq = seq
            self.at = at
            self.kind = kind
            self.actor = actor
            self.user = user
            self.data = data
        }
    }

    /// `POST /v1/events` (at most 500 events): answered with the highest `seq` now stored for the caller.
    public struct EventBatch: Codable, Sendable, Equatable {
        public var events: [HostEvent]
        public init(events: [HostEvent]) { self.events = events }
    }

    public struct EventAck: Codable, Sendable, Equatable {
        public var acked: Int64
        public init(acked: Int64) { self.acked = acked }
    }

    /// `POST /v1/web/link` (bearer token of `jit login`): a one-time sign-in link for the web page, valid 60 s.
    public struct WebLink: Codable, Sendable, Equatable {
        public var url: String
        public var expiresAt: String
        enum CodingKeys: String, CodingKey {
            case url
            case expiresAt = "expires_at"
        }
        public init(url: String, expiresAt: String) {
            self.url = url
            self.expiresAt = expiresAt
        }
    }
}
