import Crypto
import Foundation

/// A one-time join token: `jit1.<id>.<secret>.<ca fingerprint>`.
///
/// The id names the token's row on the control plane, the secret proves it (the server keeps only its
/// SHA-256), and the fingerprint is the SHA-256 of the fleet CA's certificate (DER), so that the host verifies
/// the server on its very first contact, as kubeadm's discovery hash and `step ca bootstrap --fingerprint` do.
public struct JoinToken: Sendable, Equatable {
    public static let version = "jit1"
    /// 16 lowercase hex digits.
    public var id: String
    /// 32 random bytes.
    public var secret: [UInt8]
    /// SHA-256 of the fleet CA certificate's DER bytes.
    public var caFingerprint: [UInt8]

    public init(id: String, secret: [UInt8], caFingerprint: [UInt8]) {
        self.id = id
        self.secret = secret
        self.caFingerprint = caFingerprint
    }

    /// A new token with fresh random id and secret.
    public static func generate(caFingerprint: [UInt8]) -> JoinToken {
        var rng = SystemRandomNumberGenerator()
        let id = (0..<8).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return JoinToken(id: Hex.encode(id), secret: secret, caFingerprint: caFingerprint)
    }

    /// The text an admin hands to `jitd enrol --token`.
    public var encoded: String {
        "\(Self.version).\(id).\(Base64URL.encode(secret)).\(Hex.encode(caFingerprint))"
    }

    /// What the server stores and compares: hex SHA-256 of the secret.
    public var secretHash: String { Hex.encode(Array(SHA256.hash(data: secret))) }

    /// Parses a token; every malformed part is named.
    public init(parsing text: String) throws(FleetError) {
        let parts = text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else {
            throw FleetError("invalid_token", "the join token is not of the form jit1.ID.SECRET.FINGERPRINT; copy it whole from 'jitd server token create'")
        }
        guard parts[0] == Self.version else {
            throw FleetError("invalid_token", "the join token starts with '\(parts[0].prefix(8))', not '\(Self.version)'; copy it whole from 'jitd server token create'")
        }
        guard parts[1].count == 16, let id = Hex.decode(String(parts[1])) , id.count == 8 else {
            throw FleetError("invalid_token", "the join token's id is not 16 hex digits; copy it whole from 'jitd server token create'")
        }
        guard let secret = Base64URL.decode(String(parts[2])), secret.count == 32 else {
            throw FleetError("invalid_token", "the join token's secret is damaged; copy it whole from 'jitd server token create'")
        }
        guard parts[3].count == 64, let fp = Hex.decode(String(parts[3])) else {
            throw FleetError("invalid_token", "the join token's CA fingerprint is not 64 hex digits; copy it whole from 'jitd server token create'")
        }
        self.init(id: String(parts[1]).lowercased(), secret: secret, caFingerprint: fp)
    }
}

/// The fingerprint people compare: `sha256:` and 64 hex digits of the certificate's DER bytes.
public enum Fingerprint {
    public static func of(der: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: der)) }
    public static func display(_ fp: [UInt8]) -> String { "sha256:" + Hex.encode(fp) }
}

public enum Hex {
    public static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var out = [UInt8]()
        var i = 0
        while i < u.count {
            guard let h = v(u[i]), let l = v(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}

public enum Base64URL {
    public static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func decode(_ s: String) -> [UInt8]? {
        guard s.utf8.allSatisfy({ b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
        }) else { return nil }
        var t = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while t.utf8.count % 4 != 0 { t += "=" }
        return Data(base64Encoded: t).map { Array($0) }
    }
}
