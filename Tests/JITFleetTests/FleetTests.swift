import Crypto
import Foundation
import JITCore
import JITFleet
import JITServer
import Testing
import X509

@Suite struct JoinTokenTests {
    @Test func roundTrips() throws {
        let fp = Array(repeating: UInt8(0xab), count: 32)
        let t = JoinToken.generate(caFingerprint: fp)
        let back = try JoinToken(parsing: t.encoded)
        #expect(back == t)
        #expect(t.encoded.hasPrefix("jit1.\(t.id)."))
        #expect(t.encoded.hasSuffix("." + String(repeating: "ab", count: 32)))
        #expect(t.id.count == 16)
        #expect(t.secret.count == 32)
        // Surrounding whitespace (a pasted line) is fine.
        #expect(try JoinToken(parsing: " \(t.encoded)\n") == t)
    }

    @Test func twoTokensDiffer() {
        let fp = Array(repeating: UInt8(1), count: 32)
        let a = JoinToken.generate(caFingerprint: fp), b = JoinToken.generate(caFingerprint: fp)
        #expect(a.id != b.id)
        #expect(a.secret != b.secret)
        #expect(a.secretHash != b.secretHash)
        #expect(a.secretHash.count == 64)
        #expect(!a.encoded.contains(a.secretHash))
    }

    @Test(arguments: [
        "", "jit1", "jit2.0011223344556677.AAAA.00", "jit1.00112233.x.y",
        "jit1.zz11223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.\(String(repeating: "0", count: 64))",
        "jit1.0011223344556677.short.\(String(repeating: "0", count: 64))",
        "jit1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.\(String(repeating: "0", count: 63))",
        "jit1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+.\(String(repeating: "0", count: 64))",
        "jit1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.\(String(repeating: "g", count: 64))",
        "jit1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.\(String(repeating: "0", count: 64)).extra",
    ])
    func refusesMalformed(_ text: String) {
        #expect(throws: FleetError.self) { try JoinToken(parsing: text) }
        do { _ = try JoinToken(parsing: text) } catch {
            #expect(error.code == "invalid_token")
            #expect(error.message.contains("jitd server token create"))
        }
    }

    @Test func acceptsAWellFormedHandWrittenToken() throws {
        let t = try JoinToken(parsing: "jit1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.\(String(repeating: "0f", count: 32))")
        #expect(t.id == "0011223344556677")
        #expect(t.secret == Array(repeating: 0, count: 32))
        #expect(t.caFingerprint == Array(repeating: 0x0f, count: 32))
    }

    @Test func fingerprintIsSHA256OfDER() {
        let der: [UInt8] = Array("abc".utf8)
        #expect(Fingerprint.display(Fingerprint.of(der: der)) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

@Suite struct FleetCATests {
    static func csr(name: String, claims: [String] = [], key: P256.Signing.PrivateKey = .init()) throws -> String {
        var attrs = CertificateSigningRequest.Attributes()
        if !claims.isEmpty {
            let ext = try Certificate.Extensions { SubjectAlternativeNames(claims.map { .uniformResourceIdentifier($0) }) }
            attrs.insert(try CertificateSigningRequest.Attribute(ExtensionRequest(extensions: ext)))
        }
        let c = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { OrganizationalUnitName("production"); CommonName(name) },
            privateKey: Certificate.PrivateKey(key), attributes: attrs, signatureAlgorithm: .ecdsaWithSHA256)
        return try c.serializeAsPEM().pemString
    }

    @Test func issuesTheTokensIdentityWhateverTheCSRClaims() throws {
        let (ca, _) = try FleetCA.create(commonName: "test CA", lifetime: 86_400)
        let pem = try Self.csr(name: "db1", claims: ["urn:jit:environment:production", "urn:jit:host:other", "urn:jit:label:admin"])
        let csr = try FleetCA.checkCSR(pem)
        let now = Date()
        let cert = try ca.issueHost(csr: csr, identity: HostIdentity(name: "db1", environment: "staging", labels: ["db"]), lifetime: 3600, now: now)
        let id = try HostIdentity(certificate: cert)
        #expect(id == HostIdentity(name: "db1", environment: "staging", labels: ["db"]))
        #expect(ca.signed(cert))
        #expect(cert.publicKey == csr.publicKey)
        #expect(try cert.extensions.basicConstraints == .notCertificateAuthority)
        // X.509 times are whole seconds.
        #expect(abs(cert.notValidAfter.timeIntervalSince(now) - 3600) <= 1)
    }

    @Test func anotherCAsCertificateIsNotSigned() throws {
        let (ca, _) = try FleetCA.create(commonName: "test CA", lifetime: 86_400)
        let (other, _) = try FleetCA.create(commonName: "test CA", lifetime: 86_400)
        let csr = try FleetCA.checkCSR(try Self.csr(name: "h"))
        let cert = try other.issueHost(csr: csr, identity: HostIdentity(name: "h", environment: "e", labels: []), lifetime: 600)
        #expect(!ca.signed(cert))
        #expect(other.signed(cert))
        #expect(ca.fingerprint != other.fingerprint)
    }

    @Test func expiredOrNotYetValidIsNotAccepted() throws {
        let (ca, _) = try FleetCA.create(commonName: "test CA", lifetime: 86_400)
        let csr = try FleetCA.checkCSR(try Self.csr(name: "h"))
        let cert = try ca.issueHost(csr: csr, identity: HostIdentity(name: "h", environment: "e", labels: []), lifetime: 600)
        #expect(ca.signed(cert, now: Date()))
        #expect(!ca.signed(cert, now: Date().addingTimeInterval(601)))
        #expect(!ca.signed(cert, now: Date().addingTimeInterval(-3600)))
    }

    @Test func hostCertificatesNeverOutliveTheCA() throws {
        let (ca, _) = try FleetCA.create(commonName: "short CA", lifetime: 600)
        let csr = try FleetCA.checkCSR(try Self.csr(name: "h"))
        let cert = try ca.issueHost(csr: csr, identity: HostIdentity(name: "h", environment: "e", labels: []), lifetime: 86_400)
        #expect(cert.notValidAfter <= ca.certificate.notValidAfter)
    }

    @Test func refusesACSRWhoseSignatureDoesNotMatch() throws {
        let good = try Self.csr(name: "h")
        let parsed = try CertificateSigningRequest(pemEncoded: good)
        // Same request, signed by another key than the one it carries.
        let forged = try CertificateSigningRequest(
            version: .v1, subject: parsed.subject, publicKey: parsed.publicKey, attributes: parsed.attributes,
            signatureAlgorithm: .ecdsaWithSHA256, signature: try Certificate.PrivateKey(P256.Signing.PrivateKey()).sign(bytes: Array("x".utf8)[...], signatureAlgorithm: .ecdsaWithSHA256))
        #expect(throws: FleetError.self) { try FleetCA.checkCSR(try forged.serializeAsPEM().pemString) }
        #expect(throws: FleetError.self) { try FleetCA.checkCSR("not a csr") }
    }

    @Test func loadRefusesAKeyOthersCanRead() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("jitca-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (ca, key) = try FleetCA.create(commonName: "t", lifetime: 3600)
        try SecureFiles.write(ca.pem, to: dir + "/ca.pem", mode: 0o644)
        try SecureFiles.write(key.pemRepresentation, to: dir + "/ca.key", mode: 0o644)
        #expect(throws: FleetError.self) { try FleetCA.load(certificatePath: dir + "/ca.pem", keyPath: dir + "/ca.key") }
        chmod(dir + "/ca.key", 0o600)
        let back = try FleetCA.load(certificatePath: dir + "/ca.pem", keyPath: dir + "/ca.key")
        #expect(back.fingerprint == ca.fingerprint)
        // A key that is not the CA's.
        try SecureFiles.write(P256.Signing.PrivateKey().pemRepresentation, to: dir + "/ca.key", mode: 0o600)
        #expect(throws: FleetError.self) { try FleetCA.load(certificatePath: dir + "/ca.pem", keyPath: dir + "/ca.key") }
    }

    @Test func serverCertificateNamesDNSAndIP() throws {
        let (ca, _) = try FleetCA.create(commonName: "t", lifetime: 3600)
        let cert = try ca.issueServer(publicKey: Certificate.PublicKey(P256.Signing.PrivateKey().publicKey), names: ["jit.example.org", "127.0.0.1"], lifetime: 600)
        let san = try #require(try cert.extensions.subjectAlternativeNames)
        #expect(san.contains(.dnsName("jit.example.org")))
        #expect(san.contains(where: { if case .ipAddress(let o) = $0 { return Array(o.bytes) == [127, 0, 0, 1] } else { return false } }))
    }

    @Test func hostNames() {
        #expect(HostIdentity.isValidHostName("db1.eu-west"))
        #expect(!HostIdentity.isValidHostName("DB1"))
        #expect(!HostIdentity.isValidHostName("-x"))
        #expect(!HostIdentity.isValidHostName("a/b"))
        #expect(!HostIdentity.isValidHostName(""))
    }
}

@Suite struct ServerConfigTests {
    @Test func parsesAFullConfig() throws {
        let c = try ServerConfig.parse("""
            listen:
              address: 127.0.0.1
              port: 9443
            public_url: https://jit.example.org:9443/
            tls: {certificate: /etc/x/tls.pem, key: /etc/x/tls.key}
            ca: {certificate: /etc/x/ca.pem, key: /etc/x/ca.key}
            database:
              url: postgres://jitsrv@db.example.org:5433/fleet
              password_file: /etc/x/pw
            host_certificates: {lifetime: 2d}
            tokens: {max_ttl: 1d}
            """)
        #expect(c.listenAddress == "127.0.0.1" && c.listenPort == 9443)
        #expect(c.publicURL == "https://jit.example.org:9443")
        #expect(c.publicHost == "jit.example.org")
        #expect(c.tlsKey == "/etc/x/tls.key" && c.caKey == "/etc/x/ca.key")
        #expect(c.database.host == "db.example.org" && c.database.port == 5433 && c.database.user == "jitsrv" && c.database.name == "fleet")
        #expect(c.database.passwordFile == "/etc/x/pw")
        #expect(c.hostCertificateLifetime == 2 * 86_400)
        #expect(c.maxTokenTTL == 86_400)
    }

    @Test func defaults() throws {
        let c = try ServerConfig.parse("public_url: https://jit\ndatabase: {host: 127.0.0.1, port: 6000, user: u, name: n}\n")
        #expect(c.listenPort == 8443 && c.listenAddress == "0.0.0.0")
        #expect(c.caKey == "/etc/jit/server/ca.key")
        #expect(c.database.port == 6000 && c.database.passwordFile == nil)
    }

    static let cases: [(String, String)] = [
        ("public_url: https://a\ndatabase: {url: postgres://u@h/d}\nlisten: {adress: x}\n", "server.yaml:3: listen.adress: is not a known setting; did you mean 'address'?"),
        ("public_url: https://a\ndatabase: {url: postgres://u@h/d}\nbogus: 1\n", "server.yaml:3: bogus: is not a known setting"),
        ("database: {url: postgres://u@h/d}\n", "server.yaml:1: public_url: is required"),
        ("public_url: http://a\ndatabase: {url: postgres://u@h/d}\n", "server.yaml:1: public_url: must be an https:// URL"),
        ("public_url: https://a\n", "server.yaml:1: database: is required"),
        ("public_url: https://a\ndatabase:\n  url: postgres://u:secret@h/d\n", "server.yaml:3: database.url: holds a password"),
        ("public_url: https://a\ndatabase:\n  url: postgres://u@h/d\n  host: x\n", "server.yaml:4: database.host: cannot be given with database.url"),
        ("public_url: https://a\ndatabase: {url: postgres://u@h/d}\nlisten:\n  port: 70000\n", "server.yaml:4: listen.port: must be a port number"),
        ("public_url: https://a\ndatabase: {url: postgres://u@h/d}\ntls:\n  key: relative/tls.key\n", "server.yaml:4: tls.key: must be an absolute path"),
        ("public_url: https://a\ndatabase: {url: postgres://u@h/d}\nhost_certificates:\n  lifetime: 10s\n", "server.yaml:4: host_certificates.lifetime: must be at least 1m"),
        ("public_url: https://a\npublic_url: https://b\ndatabase: {url: postgres://u@h/d}\n", "public_url: is given twice"),
    ]

    @Test(arguments: cases)
    func namesTheLineAndField(_ c: (String, String)) {
        do {
            _ = try ServerConfig.parse(c.0)
            Issue.record("accepted: \(c.0)")
        } catch {
            #expect(error.description.contains(c.1), "got: \(error.description)")
        }
    }
}

@Suite struct FleetFileTests {
    @Test func roundTrips() throws {
        let f = FleetFile(server: "https://jit.example.org:8443", name: "db1", environment: "production", labels: ["db", "eu"],
                          key: "/var/lib/jit/fleet/host.key", certificate: "/var/lib/jit/fleet/host.pem", ca: "/var/lib/jit/fleet/ca.pem")
        #expect(try FleetFile.parse(f.text, file: "fleet.yaml") == f)
    }

    @Test func refusesUnknownKeys() {
        #expect(throws: ConfigError.self) {
            try FleetFile.parse("server: https://a\nname: a\nenvironment: e\nlabels: []\nkey: /k\ncertificate: /c\nca: /a\nextra: 1\n", file: "f")
        }
    }
}
