import Foundation
import JITCore
import JITFleet
import JITServer
import Testing

/// Keys and signatures made by the real `ssh-keygen` at test time, in a temp folder.
struct SSHKit {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "jit-sshsig-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    static func run(_ args: [String], input: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        p.standardInput = inp
        try p.run()
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
        try inp.fileHandleForWriting.close()
        let d = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw FleetError("test", "\(args.joined(separator: " ")) exited \(p.terminationStatus)") }
        return String(decoding: d, as: UTF8.self)
    }

    /// A new key pair; returns the private key's path.
    func key(_ name: String, type: String, bits: String? = nil) throws -> String {
        let path = dir + "/" + name
        try Self.run(["/usr/bin/ssh-keygen", "-q", "-t", type] + (bits.map { ["-b", $0] } ?? []) + ["-N", "", "-C", "\(name)@test", "-f", path])
        return path
    }

    func publicLine(_ key: String) throws -> String { try String(contentsOfFile: key + ".pub", encoding: .utf8) }

    func sign(_ message: String, key: String, namespace: String = "jit", hash: String? = nil) throws -> String {
        try Self.run(["/usr/bin/ssh-keygen", "-Y", "sign", "-n", namespace, "-f", key] + (hash.map { ["-O", "hashalg=\($0)"] } ?? []), input: message)
    }

    static var available: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/ssh-keygen") }
}

@Suite(.enabled(if: SSHKit.available, "needs /usr/bin/ssh-keygen (openssh-client)"))
struct SSHSignatureTests {
    @Test(arguments: [("ed25519", nil, nil), ("ed25519", nil, "sha256"), ("ecdsa", "256", nil), ("ecdsa", "256", "sha256")] as [(String, String?, String?)])
    func verifiesWhatSSHKeygenSigns(type: String, bits: String?, hash: String?) throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let key = try kit.key("k", type: type, bits: bits)
        let message = FleetWire.loginMessage(server: "https://jit.example.org:8443", user: "alice", nonce: "n_abc")
        let sig = try SSHSignature(armored: try kit.sign(message, key: key, hash: hash))
        let pub = try SSHPublicKey(line: try kit.publicLine(key))
        #expect(try sig.publicKey == SSHPublicKey(blob: pub.blob))
        #expect(sig.publicKey.fingerprint == pub.fingerprint)
        #expect(sig.hashAlgorithm == (hash ?? "sha512"))
        try sig.verify(message: Array(message.utf8), namespace: "jit")
        // The fingerprint is the one ssh-keygen -l prints.
        let listed = try SSHKit.run(["/usr/bin/ssh-keygen", "-l", "-E", "sha256", "-f", key + ".pub"])
        #expect(listed.split(separator: " ")[1] == Substring(pub.fingerprint))
    }

    @Test func refusesATamperedMessage() throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let key = try kit.key("k", type: "ed25519")
        let sig = try SSHSignature(armored: try kit.sign("jit-login-v1 https://a alice n_1", key: key))
        #expect(throws: FleetError.self) { try sig.verify(message: Array("jit-login-v1 https://a alice n_2".utf8), namespace: "jit") }
        #expect(throws: FleetError.self) { try sig.verify(message: Array("jit-login-v1 https://b alice n_1".utf8), namespace: "jit") }
    }

    @Test func refusesAnotherNamespace() throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let key = try kit.key("k", type: "ed25519")
        let sig = try SSHSignature(armored: try kit.sign("m", key: key, namespace: "git"))
        let e = try #require(throws: FleetError.self) { try sig.verify(message: Array("m".utf8), namespace: "jit") }
        #expect(e.message.contains("namespace 'git'"))
    }

    @Test func theEmbeddedKeyIsTheSignersNotAnother() throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let a = try kit.key("a", type: "ed25519"), b = try kit.key("b", type: "ed25519")
        let sig = try SSHSignature(armored: try kit.sign("m", key: a))
        #expect(sig.publicKey.fingerprint == (try SSHPublicKey(line: try kit.publicLine(a))).fingerprint)
        #expect(sig.publicKey.fingerprint != (try SSHPublicKey(line: try kit.publicLine(b))).fingerprint)
        // Swapping in key b's blob (a forged "signed by b") does not verify.
        var forged = sig
        forged.publicKey = try SSHPublicKey(line: try kit.publicLine(b))
        #expect(throws: FleetError.self) { try forged.verify(message: Array("m".utf8), namespace: "jit") }
    }

    @Test func refusesRSAAndOtherKeyTypes() throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let rsa = try kit.key("r", type: "rsa", bits: "2048")
        let e1 = try #require(throws: FleetError.self) { try SSHPublicKey(line: try kit.publicLine(rsa)) }
        #expect(e1.message.contains("'ssh-rsa' are not accepted"))
        let e2 = try #require(throws: FleetError.self) { try SSHSignature(armored: try kit.sign("m", key: rsa)) }
        #expect(e2.code == "unsupported_key")
        let p384 = try kit.key("p", type: "ecdsa", bits: "384")
        #expect(throws: FleetError.self) { try SSHPublicKey(line: try kit.publicLine(p384)) }
    }

    @Test(arguments: [
        "", "hello", "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAg==\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQAAAP8=\n-----END SSH SIGNATURE-----\n",
    ])
    func refusesMalformedArmor(text: String) {
        #expect(throws: FleetError.self) { try SSHSignature(armored: text) }
    }

    @Test func refusesTrailingBytesAndTruncation() throws {
        let kit = try SSHKit()
        defer { kit.remove() }
        let key = try kit.key("k", type: "ed25519")
        let armored = try kit.sign("m", key: key)
        let body = armored.split(separator: "\n").dropFirst().dropLast().joined()
        let blob = try #require(Data(base64Encoded: String(body)))
        func armor(_ d: Data) -> String { "-----BEGIN SSH SIGNATURE-----\n\(d.base64EncodedString())\n-----END SSH SIGNATURE-----\n" }
        #expect(throws: FleetError.self) { try SSHSignature(armored: armor(blob + Data([0]))) }
        #expect(throws: FleetError.self) { try SSHSignature(armored: armor(blob.dropLast(3))) }
        // A flipped bit in the signature itself.
        var flipped = blob
        flipped[flipped.count - 5] ^= 0x01
        let sig = try SSHSignature(armored: armor(flipped))
        #expect(throws: FleetError.self) { try sig.verify(message: Array("m".utf8), namespace: "jit") }
    }
}

@Suite struct AllowedSignersTests {
    static let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1dEmdzNSFdB+HqrFDNK/IizoAx8LqNd/Mn+skgaFiB"

    @Test func parsesPrincipalsOptionsAndComments() throws {
        let s = try AllowedSigners.parse("""
            # people
            alice,bob \(Self.ed) laptop
            carol namespaces="git,jit" \(Self.ed)

            """, file: "signers")
        #expect(s.entries.count == 2)
        #expect(s.keys(of: "bob").count == 1)
        #expect(s.keys(of: "carol").count == 1)
        #expect(s.keys(of: "dave").isEmpty)
        #expect(s.entries[0].line == 2)
    }

    @Test(arguments: [
        ("alice", "signers:1: an entry is"),
        ("al*ce \(ed)", "signers:1: the principal 'al*ce' is a pattern"),
        ("alice cert-authority \(ed)", "signers:1: cert-authority is not supported"),
        ("alice namespaces=\"git\" \(ed)", "which do not include \"jit\""),
        ("alice valid-before=\"20300101\" \(ed)", "valid-before is not supported"),
        ("alice bogus \(ed)", "the option 'bogus' is not known"),
        ("alice ssh-ed25519 AAAA", "signers:1:"),
        ("ok \(ed)\n\nalice ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "signers:3:"),
        ("alice namespaces=\"jit \(ed)", "a quote is not closed"),
    ])
    func refusesWithTheLine(text: String, expected: String) {
        let e = #expect(throws: FleetError.self) { try AllowedSigners.parse(text, file: "signers") }
        #expect(e?.message.contains(expected) == true, "\(e?.message ?? "")")
    }
}

@Suite struct CallWireTests {
    @Test func roundTripsAMessageWithRepeatedKeysAndRecords() throws {
        let m = Message("ok", [("command", "/bin/a"), ("command", "/bin/b 100%")], records: [[("id", "1")], [("id", "2")]])
        let json = try JSONEncoder().encode(FleetWire.Call(m))
        #expect(try JSONDecoder().decode(FleetWire.Call.self, from: json).message() == m)
    }

    @Test(arguments: [
        #"{"word":"Request","fields":[],"records":[]}"#,
        #"{"word":"request","fields":[["Bad","x"]],"records":[]}"#,
        #"{"word":"request","fields":[["a"]],"records":[]}"#,
        #"{"word":"request","fields":[["a","b","c"]],"records":[]}"#,
        #"{"word":"","fields":[],"records":[]}"#,
    ])
    func refusesWhatTheSocketWouldRefuse(json: String) throws {
        let c = try JSONDecoder().decode(FleetWire.Call.self, from: Data(json.utf8))
        #expect(throws: WireError.self) { try c.message() }
    }
}
