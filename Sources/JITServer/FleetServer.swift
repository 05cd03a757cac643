import Crypto
import Foundation
public import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import JITCore
public import JITFleet
public import Logging
import NIOSSL
import ServiceLifecycle
import X509

/// Builds and runs the control plane: `buildApplication` makes everything (tests build the same thing),
/// `jitd server` only parses arguments and runs it.
public enum FleetServer {
    /// Loads the CA and the server's TLS identity, and builds the HTTPS application. The PostgreSQL client
    /// runs beside it in the same service group; migrations and the CA check run before the port opens.
    /// `filing` is the decision engine behind `POST /v1/requests` (none: this server's own `ServerEngine`);
    /// `people`: the server's NSS for people's tokens and the web page (#15), and (tests) another engine behind
    /// `/v1/call` and the web page than the server's own.
    public static func buildApplication(config: ServerConfig, logger: Logger, filing: (any HostFiling)? = nil, people: PeopleServices = .none) throws(FleetError) -> some ApplicationProtocol {
        let ca = try FleetCA.load(certificatePath: config.caCertificate, keyPath: config.caKey)
        let tls = try tlsConfiguration(config: config, ca: ca)
        let db = try FleetDatabase(config: config, logger: logger)
        // The decision engine over PostgreSQL: the approvers' socket, the timer, and `HostFiling` for the host routes.
        let decide = try ServerEngine(config: config, db: db, logger: logger)
        let hub = StreamHub(db: db, limits: config.streamLimits, logger: logger)
        let router = Router(context: FleetContext.self)
        // People's calls (#15) run through the same engine, on its pool of plain threads, as the token's user.
        var people = people
        if people.call == nil {
            people.call = { m, id in
                // The trail the engine reads is a host's; the control plane's is in PostgreSQL (CentralAudit).
                if m.word == "audit" {
                    return await CentralAudit.read(m, as: id, isApprover: decide.engine.config.policy.isApprover(id), db: db)
                }
                do throws(FleetError) { return try await decide.onPool { decide.engine.remoteCall(m, from: id) } } catch {
                    return .error(.busy, error.message)
                }
            }
        }
        FleetAPI(ca: ca, db: db, config: config, stream: hub, filing: filing ?? decide, web: WebServices.wired(people: people, db: db)).addRoutes(to: router)
        PeopleAPI(db: db, config: config, services: people).addRoutes(to: router)
        let server: HTTPServerBuilder
        do { server = try .tls(.http1(), tlsConfiguration: tls) } catch {
            throw FleetError("tls", "cannot set up TLS with \(config.tlsCertificate) and \(config.tlsKey): \(error)")
        }
        var app = Application(
            router: router, server: server,
            configuration: .init(address: .hostname(config.listenAddress, port: config.listenPort), serverName: nil),
            services: [db.client, StreamListener(hub: hub, db: db, retention: config.streamRetention, logger: logger), EngineService(engine: decide)], logger: logger)
        app.beforeServerStarts {
            let applied = try await db.migrate()
            if !applied.isEmpty { logger.info("applied schema migrations \(applied.map(String.init).joined(separator: ", "))") }
            try await db.bind(ca: ca)
            try decide.start()
            logger.info("fleet CA \(Fingerprint.display(ca.fingerprint)); listening on \(config.listenAddress):\(config.listenPort) for \(config.publicURL)")
        }
        return app
    }

    /// The server's TLS: its own certificate and key; client certificates requested and, when given,
    /// verified against the fleet CA (only `/v1/ca` and `/v1/enrol` answer without one).
    static func tlsConfiguration(config: ServerConfig, ca: FleetCA) throws(FleetError) -> TLSConfiguration {
        try SecureFiles.checkPrivate(config.tlsKey, what: "tls.key")
        let chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, root: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMBytes(Array(try SecureFiles.read(config.tlsCertificate, what: "tls.certificate").utf8)) } catch {
            throw FleetError("tls", "tls.certificate \(config.tlsCertificate) is not a PEM certificate: \(error)")
        }
        do { key = try NIOSSLPrivateKey(bytes: Array(try SecureFiles.read(config.tlsKey, what: "tls.key").utf8), format: .pem) } catch {
            throw FleetError("tls", "tls.key \(config.tlsKey) is not a PEM private key: \(error)")
        }
        do { root = try NIOSSLCertificate.fromPEMBytes(Array(ca.pem.utf8)) } catch { throw FleetError("tls", "the CA certificate cannot be used for TLS: \(error)") }
        guard !chain.isEmpty else { throw FleetError("tls", "tls.certificate \(config.tlsCertificate) holds no certificate") }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        tls.trustRoots = .certificates(root)
        tls.certificateVerification = .optionalVerification
        return tls
    }

    /// `jitd server init`: makes the fleet CA (key 0600) and the server's TLS certificate, issued by it for
    /// the public URL's host and `names`. With `reissueTLS`, keeps the CA and only makes a new TLS certificate.
    public static func initialize(config: ServerConfig, names: [String], reissueTLS: Bool) throws(FleetError) -> String {
        let fm = FileManager.default
        for p in [config.caCertificate, config.caKey, config.tlsCertificate, config.tlsKey] {
            try SecureFiles.ensurePrivateDirectory((p as NSString).deletingLastPathComponent)
        }
        let ca: FleetCA
        if reissueTLS {
            ca = try FleetCA.load(certificatePath: config.caCertificate, keyPath: config.caKey)
        } else {
            guard !fm.fileExists(atPath: config.caKey), !fm.fileExists(atPath: config.caCertificate) else {
                throw FleetError("exists", "a fleet CA is already at \(config.caKey): a new CA would cut off every enrolled host. To renew only the TLS certificate use --reissue-tls; to start over, remove \(config.caKey) and \(config.caCertificate) yourself")
            }
            let (c, key) = try FleetCA.create(commonName: "jit-access fleet CA " + JoinToken.generate(caFingerprint: []).id.prefix(8), lifetime: 10 * 365 * 86_400)
            try SecureFiles.write(key.pemRepresentation, to: config.caKey, mode: 0o600)
            try SecureFiles.write(c.pem, to: config.caCertificate, mode: 0o644)
            ca = c
        }
        var all = [config.publicHost]
        if !["0.0.0.0", "::", config.publicHost].contains(config.listenAddress) { all.append(config.listenAddress) }
        for n in names where !all.contains(n) { all.append(n) }
        let tlsKey = P256.Signing.PrivateKey()
        let cert = try ca.issueServer(publicKey: Certificate.PublicKey(tlsKey.publicKey), names: all, lifetime: 365 * 86_400)
        let pem: String
        do { pem = try cert.serializeAsPEM().pemString } catch { throw FleetError("internal", "cannot encode the TLS certificate: \(error)") }
        try SecureFiles.write(tlsKey.pemRepresentation, to: config.tlsKey, mode: 0o600)
        try SecureFiles.write(pem, to: config.tlsCertificate, mode: 0o644)
        return """
            fleet CA: \(Fingerprint.display(ca.fingerprint)) (\(config.caCertificate); key \(config.caKey), mode 0600)
            TLS certificate for \(all.joined(separator: ", ")) until \(Timestamps.format(cert.notValidAfter)) (\(config.tlsCertificate))
            """
    }

    /// Who runs an admin command, as the audit trail records it.
    public static func actor() -> String {
        let uid = getuid()
        let name = getpwuid(uid).map { String(cString: $0.pointee.pw_name) } ?? "?"
        return "uid \(uid) (\(name)) on the server host"
    }
}

/// Stops the decision engine (its socket, timer and scratch folder) when the server shuts down.
struct EngineService: Service {
    let engine: ServerEngine
    func run() async throws {
        try? await gracefulShutdown()
        engine.stop()
    }
}
