import Crypto
public import Foundation

/// RFC 6238 time-based one-time passwords (HMAC-SHA1, 30-second steps, 6 digits), the kind every
/// authenticator app reads from an `otpauth://` URI. HMAC-SHA1 comes from swift-crypto (`Insecure.SHA1`:
/// HOTP/TOTP rely on HMAC's properties, which SHA-1's collision weakness does not break, and it is what
/// authenticator apps implement); checked against the test vectors of RFC 4226 and RFC 6238.
public enum TOTP {
    public static let period: Int64 = 30
    public static let digits = 6

    /// The time step of a moment (seconds since the epoch / 30).
    public static func step(at date: Date) -> Int64 {
        Int64(date.timeIntervalSince1970.rounded(.down)) / period
    }

    /// The code for a step, as the authenticator app shows it (zero-padded).
    public static func code(secret: [UInt8], step: Int64, digits: Int = TOTP.digits) -> String {
        var counter = [UInt8](repeating: 0, count: 8)
        var s = UInt64(bitPattern: step)
        for i in (0..<8).reversed() {
            counter[i] = UInt8(s & 0xff)
            s >>= 8
        }
        let mac = Array(HMAC<Insecure.SHA1>.authenticationCode(for: counter, using: SymmetricKey(data: secret)))
        let offset = Int(mac[19] & 0x0f)
        let bin = (UInt32(mac[offset] & 0x7f) << 24) | (UInt32(mac[offset + 1]) << 16) | (UInt32(mac[offset + 2]) << 8) | UInt32(mac[offset + 3])
        var mod: UInt32 = 1
        for _ in 0..<digits { mod *= 10 }
        let n = String(bin % mod)
        return String(repeating: "0", count: digits - n.count) + n
    }

    /// The step a code belongs to, if it is valid at `now` (one step of clock drift either way) and newer
    /// than `after` (the last step used: a code is good once). Nil otherwise.
    public static func verify(_ code: String, secret: [UInt8], at now: Date, after lastStep: Int64) -> Int64? {
        guard code.utf8.count == digits, code.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let current = step(at: now)
        var found: Int64? = nil
        for s in (current - 1)...(current + 1) where s > lastStep {
            // Compare every candidate, so timing does not tell which step matched.
            if constantTimeEqual(Array(TOTP.code(secret: secret, step: s).utf8), Array(code.utf8)) && found == nil { found = s }
        }
        return found
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var d: UInt8 = 0
        for i in 0..<a.count { d |= a[i] ^ b[i] }
        return d == 0
    }

    /// A new random secret (160 bits, as RFC 4226 recommends).
    public static func newSecret() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<20).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    /// The URI an authenticator app reads (usually as a QR code).
    public static func uri(secret: [UInt8], account: String, issuer: String = "jit-access") -> String {
        // Account names are plain user names (letters, digits, '_', '-', '.'): nothing to escape.
        return "otpauth://totp/\(issuer):\(account)?secret=\(Base32.encode(secret))&issuer=\(issuer)&algorithm=SHA1&digits=\(digits)&period=\(period)"
    }
}

/// RFC 4648 base32 without padding, as authenticator apps expect.
public enum Base32 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for b in bytes {
            buffer = (buffer << 8) | UInt32(b)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for c in s.uppercased().utf8 where c != UInt8(ascii: "=") && c != UInt8(ascii: " ") {
            guard let v = alphabet.firstIndex(of: c) else { return nil }
            buffer = (buffer << 5) | UInt32(v)
            bits += 5
            if bits >= 8 {
                out.append(UInt8((buffer >> UInt32(bits - 8)) & 0xff))
                bits -= 8
            }
        }
        return out
    }
}
