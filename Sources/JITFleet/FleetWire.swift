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
