import Foundation
public import X509
import JITCore

/// Who an enrolled host is: its name, and the environment and labels its join token gave it.
///
/// The host certificate carries them as subject alternative name URIs (`urn:jit:host:NAME`,
/// `urn:jit:environment:ENV`, `urn:jit:label:L`) and the common name. The control plane never takes them from
/// the certificate alone: every call looks the host up in PostgreSQL by name and serial.
public struct HostIdentity: Codable, Sendable, Equatable {
    public var name: String
    public var environment: String
    public var labels: [String]

    public init(name: String, environment: String, labels: [String]) {
        self.name = name
        self.environment = environment
        self.labels = labels
    }

    static let hostPrefix = "urn:jit:host:"
    static let environmentPrefix = "urn:jit:environment:"
    static let labelPrefix = "urn:jit:label:"

    /// The SAN URIs that name this identity in a host certificate.
    public var uris: [String] {
        [Self.hostPrefix + name, Self.environmentPrefix + environment] + labels.map { Self.labelPrefix + $0 }
    }

    /// Reads the identity a host certificate names; refuses one that names none or several.
    public init(certificate: Certificate) throws(FleetError) {
        let san: SubjectAlternativeNames?
        do { san = try certificate.extensions.subjectAlternativeNames } catch {
            throw FleetError("bad_certificate", "the certificate's subject alternative names cannot be read: \(error)")
        }
        var names: [String] = [], envs: [String] = [], labels: [String] = []
        for n in san ?? SubjectAlternativeNames() {
            guard case .uniformResourceIdentifier(let u) = n else { continue }
            if u.hasPrefix(Self.hostPrefix) { names.append(String(u.dropFirst(Self.hostPrefix.count))) }
            else if u.hasPrefix(Self.environmentPrefix) { envs.append(String(u.dropFirst(Self.environmentPrefix.count))) }
            else if u.hasPrefix(Self.labelPrefix) { labels.append(String(u.dropFirst(Self.labelPrefix.count))) }
        }
        guard names.count == 1, envs.count == 1 else {
            throw FleetError("bad_certificate", "the certificate does not name exactly one jit host and environment: it is not a fleet host certificate")
        }
        self.init(name: names[0], environment: envs[0], labels: labels)
    }

    /// A host name: lowercase letters, digits, '-' and '.', starting with a letter or digit; at most 253.
    public static func isValidHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253, let f = s.utf8.first, f != UInt8(ascii: "-"), f != UInt8(ascii: ".") else { return false }
        return s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "-") || b == UInt8(ascii: ".")
        }
    }

    /// Checks a host name, naming the flag or field it came from.
    public static func checkHostName(_ s: String, field: String) throws(FleetError) {
        guard isValidHostName(s) else {
            throw FleetError("invalid_name", "\(field) '\(s.prefix(64))' is not a valid host name (lowercase letters, digits, '-' and '.'; at most 253)")
        }
    }

    /// Checks an environment name or label (the same names jit.yaml takes).
    public static func checkName(_ s: String, field: String) throws(FleetError) {
        guard Names.isValid(s) else {
            throw FleetError("invalid_name", "\(field) '\(s.prefix(64))' is not a valid name (letters, digits, '_', '-', '.'; at most 64)")
        }
    }

    /// The host's default name: the kernel's host name, lowercased.
    public static func localHostName() -> String {
        ProcessInfo.processInfo.hostName.lowercased()
    }
}
