import Crypto
import Foundation
import PropertyBased
import Testing
@testable import JITCore

@Suite struct TOTPTests {
    func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    /// RFC 2202 test cases 1, 2 and 6 (a key longer than the block): the HMAC-SHA1 TOTP uses.
    @Test func hmacMatchesRFC2202() {
        func mac(_ key: [UInt8], _ msg: String) -> String {
            hex(Array(HMAC<Insecure.SHA1>.authenticationCode(for: Array(msg.utf8), using: SymmetricKey(data: key))))
        }
        #expect(mac([UInt8](repeating: 0x0b, count: 20), "Hi There") == "b617318655057264e28bc0b6fb378c8ef146be00")
        #expect(mac(Array("Jefe".utf8), "what do ya want for nothing?") == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        #expect(mac([UInt8](repeating: 0xaa, count: 80), "Test Using Larger Than Block-Size Key - Hash Key First") == "aa4ae5e15272d00e95705637ce8a3b55ed402112")
    }

    /// RFC 6238 appendix B, SHA-1 column (8 digits), and RFC 4226 appendix D (6 digits).
    @Test(arguments: [
        (Int64(59), "94287082"), (1_111_111_109, "07081804"), (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"), (2_000_000_000, "69279037"), (20_000_000_000, "65353130"),
    ])
    func totpMatchesRFC6238(time: Int64, code: String) {
        let secret = Array("12345678901234567890".utf8)
        #expect(TOTP.code(secret: secret, step: time / 30, digits: 8) == code)
    }

    @Test func hotpMatchesRFC4226() {
        let secret = Array("12345678901234567890".utf8)
        let expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
        for (i, c) in expected.enumerated() { #expect(TOTP.code(secret: secret, step: Int64(i)) == c) }
    }

    @Test func aCodeIsGoodOnceAndOnlyNearItsTime() {
        let secret = Array("12345678901234567890".utf8)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let step = TOTP.step(at: now)
        let code = TOTP.code(secret: secret, step: step)
        #expect(TOTP.verify(code, secret: secret, at: now, after: 0) == step)
        #expect(TOTP.verify(code, secret: secret, at: now, after: step) == nil, "replay")
        #expect(TOTP.verify(code, secret: secret, at: now.addingTimeInterval(30), after: 0) == step, "one step of drift")
        #expect(TOTP.verify(code, secret: secret, at: now.addingTimeInterval(90), after: 0) == nil, "too old")
        #expect(TOTP.verify("12345", secret: secret, at: now, after: 0) == nil)
        #expect(TOTP.verify("abcdef", secret: secret, at: now, after: 0) == nil)
        let previous = TOTP.code(secret: secret, step: step - 1)
        #expect(TOTP.verify(previous, secret: secret, at: now, after: step) == nil, "an older code after a newer one was used")
    }

    @Test func base32MatchesRFC4648() {
        #expect(Base32.encode(Array("foobar".utf8)) == "MZXW6YTBOI")
        #expect(Base32.encode(Array("f".utf8)) == "MY")
        #expect(Base32.decode("MZXW6YTBOI") == Array("foobar".utf8))
        #expect(Base32.decode("mzxw6ytboi======") == Array("foobar".utf8))
        #expect(Base32.decode("M1") == nil)
    }

    @Test func base32RoundTrips() async {
        await propertyCheck(input: Gen.int(in: 0...255).array(of: 0...40)) { ints in
            let bytes = ints.map { UInt8($0) }
            #expect(Base32.decode(Base32.encode(bytes)) == bytes)
        }
    }

    @Test func theURIIsWhatAuthenticatorAppsRead() {
        let uri = TOTP.uri(secret: Array("foobar".utf8), account: "bob")
        #expect(uri == "otpauth://totp/jit-access:bob?secret=MZXW6YTBOI&issuer=jit-access&algorithm=SHA1&digits=6&period=30")
        #expect(TOTP.newSecret().count == 20)
        #expect(TOTP.newSecret() != TOTP.newSecret())
    }
}
