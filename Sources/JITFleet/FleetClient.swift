import AsyncHTTPClient
import Crypto
public import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import SwiftASN1
import X509

/// The host's side of the control plane: enrolment, renewal and "who am I", over HTTPS.
///
/// The first contact is pinned by the join token: the host fetches the fleet CA, compares its SHA-256 with
/// the token's fingerprint, and only then sends the token, over a connection verified against that CA.
/// Every later call proves the host's key with its certificate (mutual TLS).
public struct FleetClient: Sendable {
    public var server: String
    var timeout: TimeAmount = .seconds(30)

    public init(server: String) throws(FleetError) {
        var s = server
        while s.hasSuffix("/") { s.removeLast() }
        guard let u = URL(string: s), u.scheme == "https", let h = u.host, !h.isEmpty, u.path.isEmpty, u.query == nil else {
            throw FleetError("invalid_url", "--server '\(server)' must be an https:// URL with a host and no path, e.g. https://jit.example.org:8443")
        }
        self.server = s
    }

    // MARK: enrolment

    /// Enrols this host: a new P-256 key made here (it never leaves the host), a CSR, the token; writes the
    /// key (0600), the certificates and the fleet file.
    public func enrol(token text: String, name: String?, dir: String, fleetPath: String) async throws(FleetError) -> FleetFile {
        let token = try JoinToken(parsing: text)
        if let name { try HostIdentity.checkHostName(name, field: "--name") }
        try SecureFiles.ensurePrivateDirectory(dir)
        let caPEM = try await fetchPinnedCA(expected: token.caFingerprint)
        let key = P256.Signing.PrivateKey()
        let csr = try Self.csr(key: key, name: name ?? HostIdentity.localHostName())
        let body = FleetWire.EnrolRequest(token: token.encoded, csr: csr, name: name)
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try Self.nioCertificates(caPEM, what: "the fleet CA"))
        let bundle: FleetWire.CertificateBundle = try await call("POST", "/v1/enrol", body: body, tls: tls)
        return try save(bundle: bundle, key: key, dir: dir, fleetPath: fleetPath)
    }

    /// Renews the host certificate: same identity, the same key or (newKey) a fresh one.
    public func renew(fleet: FleetFile, fleetPath: String, newKey: Bool) async throws(FleetError) -> FleetFile {
        let tls = try Self.mutualTLS(fleet)
        let key = newKey ? P256.Signing.PrivateKey() : try Self.loadKey(fleet.key)
        let csr = try Self.csr(key: key, name: fleet.name)
        let bundle: FleetWire.CertificateBundle = try await call("POST", "/v1/renew", body: FleetWire.RenewRequest(csr: csr), tls: tls)
        let dir = (fleet.key as NSString).deletingLastPathComponent
        return try save(bundle: bundle, key: newKey ? key : nil, dir: dir, fleetPath: fleetPath, keyPath: fleet.key, certPath: fleet.certificate, caPath: fleet.ca)
    }

    /// Who the control plane says this host is.
    public func whoami(fleet: FleetFile) async throws(FleetError) -> FleetWire.HostSelf {
        try await call("GET", "/v1/hosts/self", body: Optional<FleetWire.RenewRequest>.none, tls: try Self.mutualTLS(fleet))
    }

    /// When the current host certificate ends.
    public static func notAfter(fleet: FleetFile) throws(FleetError) -> Date {
        let pem = try SecureFiles.read(fleet.certificate, what: "the host certificate")
        do { return try Certificate(pemEncoded: pem).notValidAfter } catch {
            throw FleetError("bad_certificate", "the host certificate \(fleet.certificate) cannot be read: \(error); enrol again")
        }
    }

    // MARK: pieces

    func fetchPinnedCA(expected: [UInt8]) async throws(FleetError) -> String {
        // Unverified on purpose: what we get is compared with the token's fingerprint before anything is sent.
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        let ca: FleetWire.CA = try await call("GET", "/v1/ca", body: Optional<FleetWire.RenewRequest>.none, tls: tls)
        let cert: Certificate
        do { cert = try Certificate(pemEncoded: ca.certificate) } catch {
            throw FleetError("bad_ca", "the server at \(server) sent a fleet CA that cannot be read; is this a jit control plane?")
        }
        let got = Fingerprint.of(der: try Self.der(cert))
        guard got == expected else {
            throw FleetError("ca_mismatch", "the server at \(server) belongs to fleet CA \(Fingerprint.display(got)), but the token was made for \(Fingerprint.display(expected)): this is not the control plane that made the token (or someone is in between); nothing was sent. Check --server, or ask for a token from this server")
        }
        return ca.certificate
    }

    static func csr(key: P256.Signing.PrivateKey, name: String) throws(FleetError) -> String {
        do {
            let subject = try DistinguishedName { CommonName(name) }
            let csr = try CertificateSigningRequest(
                version: .v1, subject: subject, privateKey: Certificate.PrivateKey(key),
                attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
            return try csr.serializeAsPEM().pemString
        } catch {
            throw FleetError("internal", "cannot make a certificate request: \(error)")
        }
    }

    static func der(_ cert: Certificate) throws(FleetError) -> [UInt8] {
        var s = DER.Serializer()
        do { try s.serialize(cert) } catch { throw FleetError("internal", "cannot encode a certificate: \(error)") }
        return s.serializedBytes
    }

    static func loadKey(_ path: String) throws(FleetError) -> P256.Signing.PrivateKey {
        try SecureFiles.checkPrivate(path, what: "the host key")
        let pem = try SecureFiles.read(path, what: "the host key")
        do { return try P256.Signing.PrivateKey(pemRepresentation: pem) } catch {
            throw FleetError("bad_key", "the host key \(path) is not a P-256 private key in PEM; enrol again")
        }
    }

    static func nioCertificates(_ pem: String, what: String) throws(FleetError) -> [NIOSSLCertificate] {
        do { return try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8)) } catch {
            throw FleetError("bad_certificate", "\(what) is not a PEM certificate: \(error)")
        }
    }

    static func mutualTLS(_ fleet: FleetFile) throws(FleetError) -> TLSConfiguration {
        try SecureFiles.checkPrivate(fleet.key, what: "the host key")
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try nioCertificates(try SecureFiles.read(fleet.ca, what: "the fleet CA"), what: "the fleet CA \(fleet.ca)"))
        tls.certificateChain = try nioCertificates(try SecureFiles.read(fleet.certificate, what: "the host certificate"), what: "the host certificate \(fleet.certificate)").map { .certificate($0) }
        do {
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(try SecureFiles.read(fleet.key, what: "the host key").utf8), format: .pem))
        } catch let e as FleetError { throw e } catch {
            throw FleetError("bad_key", "the host key \(fleet.key) cannot be read: \(error); enrol again")
        }
        return tls
    }

    func save(bundle: FleetWire.CertificateBundle, key: P256.Signing.PrivateKey?, dir: String, fleetPath: String,
              keyPath: String? = nil, certPath: String? = nil, caPath: String? = nil) throws(FleetError) -> FleetFile {
        let p = FleetFile.paths(dir: dir)
        let f = FleetFile(server: server, name: bundle.name, environment: bundle.environment, labels: bundle.labels,
                          key: keyPath ?? p.key, certificate: certPath ?? p.certificate, ca: caPath ?? p.ca)
        // The key first: a certificate is only ever beside the key it names.
        if let key { try SecureFiles.write(key.pemRepresentation, to: f.key, mode: 0o600) }
        try SecureFiles.write(bundle.ca, to: f.ca, mode: 0o644)
        try SecureFiles.write(bundle.certificate, to: f.certificate, mode: 0o644)
        try SecureFiles.write(f.text, to: fleetPath, mode: 0o644)
        return f
    }

    func call<Body: Encodable, Answer: Decodable>(_ method: String, _ path: String, body: Body?, tls: TLSConfiguration) async throws(FleetError) -> Answer {
        let client = HTTPClient(
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            configuration: HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: timeout)))
        do {
            let answer: Answer = try await send(client, method, path, body: body)
            try? await client.shutdown()
            return answer
        } catch {
            try? await client.shutdown()
            if let e = error as? FleetError { throw e }
            throw FleetError("unreachable", "cannot reach the control plane at \(server): \(Self.describe(error))")
        }
    }

    func send<Body: Encodable, Answer: Decodable>(_ client: HTTPClient, _ method: String, _ path: String, body: Body?) async throws -> Answer {
        var req = HTTPClientRequest(url: server + path)
        req.method = method == "GET" ? .GET : .POST
        req.headers.add(name: "accept", value: "application/json")
        if let body {
            req.headers.add(name: "content-type", value: "application/json")
            req.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(body)))
        }
        let resp = try await client.execute(req, timeout: timeout)
        let bytes = try await resp.body.collect(upTo: 1 << 20)
        let data = Data(bytes.readableBytesView)
        guard resp.status.code / 100 == 2 else { throw refusal(resp, data, "\(method) \(path)") }
        do { return try JSONDecoder().decode(Answer.self, from: data) } catch {
            throw FleetError("bad_answer", "the control plane at \(server) sent an answer to \(method) \(path) that cannot be read: \(error)")
        }
    }

    /// The error a non-2xx answer carries: the API's JSON error when it is one, else its status.
    func refusal(_ resp: HTTPClientResponse, _ body: Data, _ call: String) -> FleetError {
        if let e = try? JSONDecoder().decode(FleetWire.ErrorBody.self, from: body) { return FleetError(e.error.code, e.error.message) }
        return FleetError("http_\(resp.status.code)", "the control plane at \(server) answered \(resp.status.code) \(resp.status.reasonPhrase) to \(call)")
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOSSLError { return "TLS failed (\(e))" }
        if let e = error as? BoringSSLError { return "TLS failed (\(e)): does the server's certificate name this address, and was it issued by the fleet CA?" }
        if let e = error as? HTTPClientError { return "\(e)" }
        return "\(error)"
    }
}
