public import Foundation
public import Hummingbird
import JITCore
public import JITFleet
import NIOCore
import NIOSSL
public import X509

/// The host the caller is, as the control plane knows it: found in PostgreSQL from the certificate the
/// caller proved on this connection (mutual TLS), checked on every request. Routes read identity only here.
public struct CallerHost: Sendable {
    public var record: HostRecord
    /// The serial of the certificate the caller presented.
    public var serial: String
    public var publicKey: Certificate.PublicKey
    /// When the presented certificate ends (an event stream ends then at the latest).
    public var certificateNotAfter: Date? = nil
}

/// The request context of the fleet API: the connection's channel (for its TLS peer) and the caller, once the
/// authenticating middleware has filled it. Nothing in a header or a body ever sets `host`.
public struct FleetContext: RequestContext {
    public typealias Source = ApplicationRequestContextSource
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel
    public internal(set) var host: CallerHost?
    /// The person a bearer token proved (#15, `PersonAuthMiddleware`); never set by a host's certificate.
    public internal(set) var person: CallerPerson?

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
        self.host = nil
        self.person = nil
    }

    /// The address of the peer, for the audit trail.
    var peer: String { channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?" }

    /// The authenticated host; the middleware guarantees it on every route behind it.
    func caller() throws -> CallerHost {
        guard let host else { throw APIError(.unauthorized, "client_certificate_required", "this call needs the host's certificate") }
        return host
    }
}

/// Every error the API sends: `{"error": {"code": ..., "message": ...}}` with a sentence users can act on.
public struct APIError: HTTPResponseError {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public init(_ e: FleetError) {
        let status: HTTPResponse.Status
        switch e.code {
        case "token_unknown", "token_used", "token_revoked", "token_expired", "token_host", "host_revoked", "host_unknown", "certificate_replaced":
            status = .forbidden
        case "client_certificate_required", "bad_certificate": status = .unauthorized
        case "host_exists", "conflict": status = .conflict
        // "invalid" and "unauthorized" are the decision engine's refusals (its ErrorCode), passed on as they are.
        case "invalid_token", "invalid_csr", "invalid_name", "bad_request", "invalid": status = .badRequest
        case "unauthorized": status = .forbidden
        case "not_found": status = .notFound
        case "too_large": status = .contentTooLarge
        case "too_many_grants": status = .unprocessableContent
        case "database", "busy", "not_available": status = .serviceUnavailable
        default: status = .internalServerError
        }
        self.init(status, e.code, e.message)
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let body = try JSONEncoder().encode(FleetWire.ErrorBody(code: code, message: message))
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// Turns whatever a route threw into the one error shape (Hummingbird's own errors and decoding errors too).
struct ErrorShapeMiddleware: RouterMiddleware {
    typealias Context = FleetContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            throw e
        } catch let e as FleetError {
            if e.code == "database" || e.code == "internal" { context.logger.error("\(request.method) \(request.uri.path): \(e.message)") }
            throw APIError(e)
        } catch let e as HTTPError {
            if e.status == .notFound { throw APIError(.notFound, "not_found", "there is no \(request.method) \(request.uri.path) in this API (it is versioned under /v1)") }
            throw APIError(e.status, "bad_request", e.body ?? "the request could not be read: send JSON as the API describes")
        } catch is DecodingError {
            throw APIError(.badRequest, "bad_request", "the request body is not the JSON this call takes")
        } catch {
            context.logger.error("\(request.method) \(request.uri.path): \(error)")
            throw APIError(.internalServerError, "internal", "the control plane failed to answer; its log says why")
        }
    }
}

/// Fills `context.host` from the TLS peer certificate: it must be signed by the fleet CA, unexpired, name one
/// host, and match that host's current (or previous) serial in PostgreSQL, which also says it is not revoked.
struct HostAuthMiddleware: RouterMiddleware {
    typealias Context = FleetContext
    let ca: FleetCA
    let db: FleetDatabase

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let peer: NIOSSLCertificate?
        do { peer = try await context.channel.nioSSL_peerCertificate().get() } catch { peer = nil }
        guard let peer else {
            throw APIError(.unauthorized, "client_certificate_required", "this call needs the host's certificate (mutual TLS); enrol this host with 'jitd enrol' and call with its key and certificate")
        }
        let v = try verify(peer)
        let record = try await db.authenticate(name: v.identity.name, serial: v.serial)
        db.touch(record)
        var context = context
        context.host = CallerHost(record: record, serial: v.serial, publicKey: v.publicKey, certificateNotAfter: v.notAfter)
        return try await next(request, context)
    }

    /// The certificate's identity once its signature is checked (remembered by its DER bytes: the same bytes
    /// were checked against the same CA); its validity is checked against the clock every time.
    func verify(_ peer: NIOSSLCertificate, now: Date = Date()) throws -> HostAuthCache.Verified {
        let der: [UInt8]
        do { der = try peer.toDERBytes() } catch {
            throw APIError(.unauthorized, "bad_certificate", "the client certificate cannot be read")
        }
        let outside = APIError(.unauthorized, "bad_certificate", "the client certificate was not issued by this fleet's CA, or is outside its validity; renew it or enrol again")
        if let v = db.hostCache.verified(der) {
            guard v.notBefore <= now, now < v.notAfter else { throw outside }
            return v
        }
        let cert: Certificate
        do { cert = try Certificate(derEncoded: der) } catch {
            throw APIError(.unauthorized, "bad_certificate", "the client certificate cannot be read")
        }
        guard ca.signed(cert, now: now) else { throw outside }
        let v = HostAuthCache.Verified(identity: try HostIdentity(certificate: cert), serial: FleetCA.serialHex(cert),
                                       notBefore: cert.notValidBefore, notAfter: cert.notValidAfter, publicKey: cert.publicKey)
        db.hostCache.remember(der, v)
        return v
    }
}

/// The routes of `/v1`, grouped by resource.
struct FleetAPI: Sendable {
    let ca: FleetCA
    let db: FleetDatabase
    let config: ServerConfig
    let stream: StreamHub
    let filing: (any HostFiling)?
    let web: WebServices

    func bundle(_ h: HostRecord, _ cert: Certificate) throws -> FleetWire.CertificateBundle {
        FleetWire.CertificateBundle(name: h.name, environment: h.environment, labels: h.labels, serial: h.serial,
                                    certificate: try cert.serializeAsPEM().pemString, ca: ca.pem, notAfter: Timestamps.format(h.notAfter))
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try enc.encode(value))))
    }

    func addRoutes(to router: Router<FleetContext>) {
        router.add(middleware: ErrorShapeMiddleware())
        // No client certificate: the CA (public) and enrolment (the join token is the credential).
        router.get("v1/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_yaml)))
        }
        WebRoutes(services: web, publicURL: config.publicURL).addRoutes(to: router)
        router.get("v1/ca") { _, _ in
            try Self.json(FleetWire.CA(certificate: ca.pem, fingerprint: Fingerprint.display(ca.fingerprint)))
        }
        router.post("v1/enrol") { request, context in
            let body = try await request.decode(as: FleetWire.EnrolRequest.self, context: context)
            let token = try JoinToken(parsing: body.token)
            guard token.caFingerprint == ca.fingerprint else {
                throw APIError(.forbidden, "token_unknown", "this join token was made for another fleet CA (\(Fingerprint.display(token.caFingerprint))); ask this server's admin for a token")
            }
            if let n = body.name { try HostIdentity.checkHostName(n, field: "name") }
            let csr = try FleetCA.checkCSR(body.csr)
            let (h, cert) = try await db.enrol(token: token, wishedName: body.name, csr: csr, ca: ca, lifetime: config.hostCertificateLifetime, peer: context.peer)
            context.logger.info("enrolled host \(h.name) in \(h.environment) from \(context.peer)")
            return try Self.json(try bundle(h, cert), status: .created)
        }
        // Everything else: the host's certificate, checked against PostgreSQL on every call.
        let hosts = router.group("v1").add(middleware: HostAuthMiddleware(ca: ca, db: db))
        hosts.get("hosts/self") { _, context in
            let h = try context.caller()
            return try Self.json(FleetWire.HostSelf(name: h.record.name, environment: h.record.environment, labels: h.record.labels,
                                                    serial: h.serial, notAfter: Timestamps.format(h.record.notAfter), enrolledAt: Timestamps.format(h.record.enrolledAt)))
        }
        hosts.post("renew") { request, context in
            let h = try context.caller()
            let body = try await request.decode(as: FleetWire.RenewRequest.self, context: context)
            let csr = try FleetCA.checkCSR(body.csr)
            let (rec, cert) = try await db.renew(host: h.record, presented: h.serial, newKey: csr.publicKey != h.publicKey, csr: csr, ca: ca, lifetime: config.hostCertificateLifetime)
            context.logger.info("renewed the certificate of host \(rec.name)")
            return try Self.json(try bundle(rec, cert))
        }
        addHostRoutes(to: hosts)
    }
}
