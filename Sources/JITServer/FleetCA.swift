public import Crypto
public import Foundation
public import JITFleet
import SwiftASN1
public import X509

/// The fleet's own small CA (P-256): it signs the server's TLS certificate and every host certificate.
public struct FleetCA: Sendable {
    public let certificate: Certificate
    let key: Certificate.PrivateKey
    /// The CA certificate in PEM, as hosts receive it.
    public let pem: String
    /// SHA-256 of the CA certificate's DER bytes: what join tokens carry.
    public let fingerprint: [UInt8]

    public init(certificate: Certificate, key: P256.Signing.PrivateKey) throws(FleetError) {
        guard P256.Signing.PublicKey(certificate.publicKey)?.rawRepresentation == key.publicKey.rawRepresentation else {
            throw FleetError("bad_ca", "the CA key does not belong to the CA certificate")
        }
        self.certificate = certificate
        self.key = Certificate.PrivateKey(key)
        do { self.pem = try certificate.serializeAsPEM().pemString } catch {
            throw FleetError("bad_ca", "cannot encode the CA certificate: \(error)")
        }
        self.fingerprint = Fingerprint.of(der: try Self.der(certificate))
    }

    /// A new CA: a fresh P-256 key and a self-signed certificate valid for `lifetime` seconds.
    public static func create(commonName: String, lifetime: TimeInterval, now: Date = Date()) throws(FleetError) -> (FleetCA, P256.Signing.PrivateKey) {
        let k = P256.Signing.PrivateKey()
        let key = Certificate.PrivateKey(k)
        do {
            let name = try DistinguishedName {
                OrganizationName("jit-access fleet")
                CommonName(commonName)
            }
            let cert = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(lifetime),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: key.publicKey)
                },
                issuerPrivateKey: key)
            return (try FleetCA(certificate: cert, key: k), k)
        } catch let e as FleetError { throw e } catch {
            throw FleetError("internal", "cannot make the fleet CA: \(error)")
        }
    }

    /// Loads the CA from its PEM files.
    public static func load(certificatePath: String, keyPath: String) throws(FleetError) -> FleetCA {
        try SecureFiles.checkPrivate(keyPath, what: "the CA key")
        let certPEM = try SecureFiles.read(certificatePath, what: "the CA certificate")
        let keyPEM = try SecureFiles.read(keyPath, what: "the CA key")
        let cert: Certificate
        do { cert = try Certificate(pemEncoded: certPEM) } catch {
            throw FleetError("bad_ca", "the CA certificate \(certificatePath) is not a PEM certificate: \(error)")
        }
        let key: P256.Signing.PrivateKey
        do { key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM) } catch {
            throw FleetError("bad_ca", "the CA key \(keyPath) is not a P-256 private key in PEM")
        }
        do { return try FleetCA(certificate: cert, key: key) } catch {
            throw FleetError("bad_ca", "the CA key \(keyPath) does not belong to the CA certificate \(certificatePath)")
        }
    }

    /// The server's TLS certificate, naming `names` (DNS names or IP addresses).
    public func issueServer(publicKey: Certificate.PublicKey, names: [String], lifetime: TimeInterval, now: Date = Date()) throws(FleetError) -> Certificate {
        var general: [GeneralName] = []
        for n in names {
            if let ip = Self.ipBytes(n) { general.append(.ipAddress(ASN1OctetString(contentBytes: ip[...]))) } else { general.append(.dnsName(n)) }
        }
        do {
            return try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(lifetime),
                issuer: certificate.subject, subject: try DistinguishedName { CommonName(names.first ?? "jit control plane") },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth])
                    SubjectAlternativeNames(general)
                },
                issuerPrivateKey: key)
        } catch {
            throw FleetError("internal", "cannot issue the server certificate: \(error)")
        }
    }

    /// Checks a CSR: well formed, signed by the key it carries (proof of possession), and a P-256 key.
    /// Nothing else in it is used: the identity comes from the token or the enrolled host's row.
    public static func checkCSR(_ pem: String) throws(FleetError) -> CertificateSigningRequest {
        let csr: CertificateSigningRequest
        do { csr = try CertificateSigningRequest(pemEncoded: pem) } catch {
            throw FleetError("invalid_csr", "the certificate request is not a PEM CSR")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw FleetError("invalid_csr", "the certificate request is not signed by the key it carries")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil else {
            throw FleetError("invalid_csr", "the certificate request's key is not P-256; 'jitd enrol' makes one")
        }
        return csr
    }

    /// A host certificate for `identity`, for the key in a checked CSR, valid for `lifetime` seconds.
    public func issueHost(csr: CertificateSigningRequest, identity: HostIdentity, lifetime: TimeInterval, now: Date = Date()) throws(FleetError) -> Certificate {
        do {
            return try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: csr.publicKey,
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: min(now.addingTimeInterval(lifetime), certificate.notValidAfter),
                issuer: certificate.subject,
                subject: try DistinguishedName {
                    OrganizationName("jit-access fleet")
                    OrganizationalUnitName(identity.environment)
                    CommonName(identity.name)
                },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.clientAuth])
                    SubjectAlternativeNames(identity.uris.map { .uniformResourceIdentifier($0) })
                },
                issuerPrivateKey: key)
        } catch {
            throw FleetError("internal", "cannot issue the host certificate: \(error)")
        }
    }

    /// Whether this CA signed `cert` and `now` is inside its validity (the TLS layer checks too; this is the
    /// second lock, in the process that decides).
    public func signed(_ cert: Certificate, now: Date = Date()) -> Bool {
        cert.issuer == certificate.subject && certificate.publicKey.isValidSignature(cert.signature, for: cert)
            && cert.notValidBefore <= now && now < cert.notValidAfter
    }

    public static func der(_ cert: Certificate) throws(FleetError) -> [UInt8] {
        var s = DER.Serializer()
        do { try s.serialize(cert) } catch { throw FleetError("internal", "cannot encode a certificate: \(error)") }
        return s.serializedBytes
    }

    public static func serialHex(_ cert: Certificate) -> String { Hex.encode(Array(cert.serialNumber.bytes)) }

    static func ipBytes(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
