import Crypto
import Foundation
public import JITFleet

/// An SSH public key as `authorized_keys` and `allowed_signers` write it, restricted to what login accepts:
/// `ssh-ed25519` and `ecdsa-sha2-nistp256` (verified with swift-crypto; no other kind is taken).
public struct SSHPublicKey: Sendable, Equatable {
    public static let supported = ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    /// The key's type name, as the blob starts.
    public var type: String
    /// The wire blob (RFC 4253 §6.6): what the fingerprint is taken over and what SSHSIG embeds.
    public var blob: [UInt8]
    public var comment: String

    /// `SHA256:...` (unpadded base64), as `ssh-keygen -l` prints it.
    public var fingerprint: String { Self.fingerprint(blob) }

    public static func fingerprint(_ blob: [UInt8]) -> String {
        var b = Data(SHA256.hash(data: blob)).base64EncodedString()
        while b.hasSuffix("=") { b.removeLast() }
        return "SHA256:" + b
    }

    /// The line `TYPE BASE64 COMMENT`.
    public var line: String { "\(type) \(Data(blob).base64EncodedString())\(comment.isEmpty ? "" : " " + comment)" }

    /// Parses `TYPE BASE64 [COMMENT]`; the type must match the blob's and be one login supports.
    public init(line: String) throws(FleetError) {
        let parts = line.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2 else {
            throw FleetError("bad_key", "an SSH public key is 'TYPE BASE64 [COMMENT]', as in ~/.ssh/id_ed25519.pub")
        }
        guard let data = Data(base64Encoded: String(parts[1])) else {
            throw FleetError("bad_key", "the key's second field is not base64; give the whole line of the .pub file")
        }
        try self.init(blob: [UInt8](data), comment: parts.count > 2 ? String(parts[2]) : "")
        guard String(parts[0]) == type else {
            throw FleetError("bad_key", "the key says it is '\(parts[0])' but its data is a '\(type)' key")
        }
    }

    /// Checks a wire blob: a supported type with exactly the fields it must have.
    public init(blob: [UInt8], comment: String = "") throws(FleetError) {
        var r = SSHReader(blob)
        let t = try r.text("the key's type")
        switch t {
        case "ssh-ed25519":
            let k = try r.bytes("the ed25519 key")
            guard k.count == 32 else { throw FleetError("bad_key", "an ssh-ed25519 key must be 32 bytes, not \(k.count)") }
        case "ecdsa-sha2-nistp256":
            guard try r.text("the curve") == "nistp256" else { throw FleetError("bad_key", "an ecdsa-sha2-nistp256 key must name curve nistp256") }
            let q = try r.bytes("the P-256 point")
            do { _ = try P256.Signing.PublicKey(x963Representation: q) } catch {
                throw FleetError("bad_key", "the ecdsa-sha2-nistp256 key's point is not on P-256")
            }
        default:
            throw FleetError("unsupported_key", "keys of type '\(t)' are not accepted for jit login; use an ssh-ed25519 or ecdsa-sha2-nistp256 key (ssh-keygen -t ed25519)")
        }
        try r.end("the key")
        self.type = t
        self.blob = blob
        self.comment = comment
    }

    /// Verifies a raw SSH signature blob (`string algorithm, string signature`) over `data`.
    func verify(signature: [UInt8], over data: [UInt8]) throws(FleetError) -> Bool {
        var s = SSHReader(signature)
        let algo = try s.text("the signature's algorithm")
        let sig = try s.bytes("the signature")
        try s.end("the signature")
        guard algo == type else {
            throw FleetError("bad_signature", "the signature is made with '\(algo)' but the key is '\(type)'")
        }
        var k = SSHReader(blob)
        _ = try k.text("the key's type")
        switch type {
        case "ssh-ed25519":
            let key: Curve25519.Signing.PublicKey
            do { key = try Curve25519.Signing.PublicKey(rawRepresentation: try k.bytes("the key")) } catch {
                throw FleetError("bad_key", "the ed25519 key cannot be used")
            }
            return sig.count == 64 && key.isValidSignature(sig, for: data)
        case "ecdsa-sha2-nistp256":
            _ = try k.text("the curve")
            let key: P256.Signing.PublicKey
            do { key = try P256.Signing.PublicKey(x963Representation: try k.bytes("the point")) } catch {
                throw FleetError("bad_key", "the P-256 key cannot be used")
            }
            var rs = SSHReader(sig)
            let r = try rs.mpint("r"), sv = try rs.mpint("s")
            try rs.end("the ECDSA signature")
            guard r.count <= 32, sv.count <= 32 else { return false }
            let raw = [UInt8](repeating: 0, count: 32 - r.count) + r + [UInt8](repeating: 0, count: 32 - sv.count) + sv
            guard let ecdsa = try? P256.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
            return key.isValidSignature(ecdsa, for: SHA256.hash(data: data))
        default:
            return false
        }
    }
}

/// An armored SSHSIG signature (openssh PROTOCOL.sshsig), as `ssh-keygen -Y sign -n NAMESPACE` writes it.
/// Parsed strictly and verified here over swift-crypto: nothing is shelled out on the server.
public struct SSHSignature: Sendable {
    public var publicKey: SSHPublicKey
    public var namespace: String
    public var hashAlgorithm: String
    var reserved: [UInt8]
    var signature: [UInt8]

    static let magic = Array("SSHSIG".utf8)
    static let begin = "-----BEGIN SSH SIGNATURE-----"
    static let end = "-----END SSH SIGNATURE-----"

    public init(armored text: String) throws(FleetError) {
        let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard lines.first == Self.begin, lines.last == Self.end, lines.count >= 3 else {
            throw FleetError("bad_signature", "the signature is not an armored SSH signature ('\(Self.begin)' ... '\(Self.end)', as ssh-keygen -Y sign writes)")
        }
        guard let data = Data(base64Encoded: lines.dropFirst().dropLast().joined()) else {
            throw FleetError("bad_signature", "the signature's body is not base64")
        }
        var r = SSHReader([UInt8](data))
        guard let m = try? r.raw(6), m == Self.magic else { throw FleetError("bad_signature", "the signature does not start with SSHSIG") }
        let version = try r.uint32("the version")
        guard version == 1 else { throw FleetError("bad_signature", "SSHSIG version \(version) is not known (only 1)") }
        publicKey = try SSHPublicKey(blob: try r.bytes("the public key"))
        namespace = try r.text("the namespace")
        reserved = try r.bytes("the reserved field")
        hashAlgorithm = try r.text("the hash algorithm")
        signature = try r.bytes("the signature")
        try r.end("the SSHSIG blob")
    }

    /// Checks the namespace and hash algorithm, then the signature over `message` by the embedded key.
    /// Whether that key may sign for someone is the caller's question.
    public func verify(message: [UInt8], namespace expected: String) throws(FleetError) {
        guard namespace == expected else {
            throw FleetError("bad_signature", "the signature is for namespace '\(namespace)', not '\(expected)': sign with ssh-keygen -Y sign -n \(expected)")
        }
        let digest: [UInt8]
        switch hashAlgorithm {
        case "sha256": digest = Array(SHA256.hash(data: message))
        case "sha512": digest = Array(SHA512.hash(data: message))
        default: throw FleetError("bad_signature", "the signature's hash algorithm '\(hashAlgorithm)' is not accepted (sha256 or sha512)")
        }
        var signed = Self.magic
        SSHReader.put(Array(namespace.utf8), into: &signed)
        SSHReader.put(reserved, into: &signed)
        SSHReader.put(Array(hashAlgorithm.utf8), into: &signed)
        SSHReader.put(digest, into: &signed)
        guard try publicKey.verify(signature: signature, over: signed) else {
            throw FleetError("bad_signature", "the signature does not verify with key \(publicKey.fingerprint) over this message")
        }
    }
}

/// Reads the SSH wire encoding (RFC 4251 §5): uint32 lengths, strings, mpints. Every read is bounded.
struct SSHReader {
    let buf: [UInt8]
    var at = 0
    init(_ b: [UInt8]) { buf = b }

    mutating func raw(_ n: Int) throws(FleetError) -> [UInt8] {
        guard n >= 0, buf.count - at >= n else { throw FleetError("bad_signature", "the data ends too early") }
        defer { at += n }
        return Array(buf[at..<at + n])
    }

    mutating func uint32(_ what: String) throws(FleetError) -> UInt32 {
        guard buf.count - at >= 4 else { throw FleetError("bad_signature", "the data ends before \(what)") }
        let v = UInt32(buf[at]) << 24 | UInt32(buf[at + 1]) << 16 | UInt32(buf[at + 2]) << 8 | UInt32(buf[at + 3])
        at += 4
        return v
    }

    mutating func bytes(_ what: String) throws(FleetError) -> [UInt8] {
        let n = Int(try uint32(what))
        guard buf.count - at >= n else { throw FleetError("bad_signature", "\(what) is longer than the data") }
        return try raw(n)
    }

    mutating func text(_ what: String) throws(FleetError) -> String {
        guard let s = String(validating: try bytes(what), as: UTF8.self) else { throw FleetError("bad_signature", "\(what) is not UTF-8") }
        return s
    }

    /// A non-negative mpint, without its leading zero bytes.
    mutating func mpint(_ what: String) throws(FleetError) -> [UInt8] {
        let b = try bytes(what)
        if let f = b.first, f & 0x80 != 0 { throw FleetError("bad_signature", "\(what) is negative") }
        return Array(b.drop(while: { $0 == 0 }))
    }

    func end(_ what: String) throws(FleetError) {
        guard at == buf.count else { throw FleetError("bad_signature", "\(what) has \(buf.count - at) bytes left over") }
    }

    static func put(_ b: [UInt8], into out: inout [UInt8]) {
        let n = UInt32(b.count)
        out += [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)]
        out += b
    }
}
