import Crypto
import Testing
@testable import JITCore

@Suite struct SHA256Tests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        (String(repeating: "a", count: 1_000_000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ])
    func knownVectors(input: String, digest: String) {
        #expect(SHA256.hex(Array(input.utf8)) == digest)
    }

    @Test func blockBoundaries() {
        // 55, 56, 63, 64 and 65 bytes straddle the padding rules.
        let expected = [
            55: "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
            56: "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
            64: "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
        ]
        for (n, d) in expected { #expect(SHA256.hex(Array(repeating: UInt8(ascii: "a"), count: n)) == d, "\(n)") }
    }

    /// The audit chain's hash of fixed events, computed independently (Python's hashlib over the same
    /// length-prefixed serialisation): databases written before swift-crypto must still verify.
    @Test func auditChainKnownHashes() {
        let first = AuditChain.hash(id: 1, at: 1_800_000_000, kind: "request.filed", actor: "alice", user: "alice", requestID: 12, grantID: nil,
                                    data: "reason=OPS-1 disk full", prevHash: AuditChain.genesis)
        #expect(first == "2f4115fce169bd3ca8694bb22e9612bf5df54ce840e51d0282fbee80077b42b1")
        let second = AuditChain.hash(id: 2, at: 1_800_000_001, kind: "request.approved", actor: "bob", user: "alice", requestID: 12, grantID: 3,
                                     data: "comment=go \u{e9}", prevHash: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
        #expect(second == "4d0db29db153c46dac42c516c1ec43289409376a9d7744b2d6884e6e4ea5c43a")
    }
}
