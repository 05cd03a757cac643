public import Crypto

/// Thin spellings over swift-crypto for the forms this project stores and sends: lowercase hex for the
/// audit chain and `X-JIT-Signature`, raw bytes for base64 (`webhook-signature`). Nothing here hashes by hand.
extension SHA256 {
    /// The lowercase hex SHA-256 digest of some bytes (the audit chain's form).
    public static func hex(_ bytes: [UInt8]) -> String { Hex.encode(hash(data: bytes)) }
}

/// HMAC-SHA256 (RFC 2104, swift-crypto): webhook bodies are signed with it so a receiver can check that a
/// post came from this agent.
public enum HMACSHA256 {
    public static func mac(key: [UInt8], message: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }

    public static func hex(key: [UInt8], message: [UInt8]) -> String { Hex.encode(mac(key: key, message: message)) }
}

/// Lowercase hex, two digits a byte.
public enum Hex {
    static let digits = Array("0123456789abcdef".utf8)

    public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
