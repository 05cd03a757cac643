public import Foundation
import AsyncHTTPClient
import NIOCore
import NIOPosix
import X509

extension FleetClient {
    /// When the host certificate's validity starts and ends.
    public static func validity(fleet: FleetFile) throws(FleetError) -> (notBefore: Date, notAfter: Date) {
        let pem = try SecureFiles.read(fleet.certificate, what: "the host certificate")
        do {
            let c = try Certificate(pemEncoded: pem)
            return (c.notValidBefore, c.notValidAfter)
        } catch {
            throw FleetError("bad_certificate", "the host certificate \(fleet.certificate) cannot be read: \(error); enrol again")
        }
    }
}

/// One HTTPS client for the agent's life (connections and the TLS context are reused between calls), made
/// from the fleet file's key, certificate and CA; the agent makes a new one when the certificate is renewed.
public final class FleetSession: Sendable {
    public let fleet: FleetFile
    let client: FleetClient
    let http: HTTPClient

    public init(fleet: FleetFile) throws(FleetError) {
        self.fleet = fleet
        var c = try FleetClient(server: fleet.server)
        c.timeout = .seconds(70)
        client = c
        http = HTTPClient(
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            configuration: HTTPClient.Configuration(tlsConfiguration: try FleetClient.mutualTLS(fleet), redirectConfiguration: .disallow,
                                                    timeout: .init(connect: .seconds(10), read: .seconds(70))))
    }

    /// Closes the connections (after the last call).
    public func shutdown() async { try? await http.shutdown() }

    func call<Body: Encodable, Answer: Decodable>(_ method: String, _ path: String, body: Body?) async throws(FleetError) -> Answer {
        do { return try await client.send(http, method, path, body: body) } catch {
            if let e = error as? FleetError { throw e }
            throw FleetError("unreachable", "cannot reach the control plane at \(client.server): \(FleetClient.describe(error))")
        }
    }

    public func file(_ r: FleetWire.HostRequest) async throws(FleetError) -> FleetWire.RequestStatus {
        try await call("POST", "/v1/requests", body: r)
    }

    public func requestStatus(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus {
        try await call("GET", "/v1/requests/\(id)", body: Optional<FleetWire.RenewRequest>.none)
    }

    /// Tells the control plane the user gave up on a request this host filed.
    public func cancelRequest(id: Int64) async throws(FleetError) -> FleetWire.RequestStatus {
        try await call("POST", "/v1/requests/\(id)/cancel", body: Optional<FleetWire.RenewRequest>.none)
    }

    /// The long-poll (`wait` at most 55 s: the read timeout is 70 s).
    public func stream(cursor: Int64, wait: Int) async throws(FleetError) -> FleetWire.GrantStream {
        try await call("GET", "/v1/grants/stream?cursor=\(cursor)&wait=\(min(wait, 55))", body: Optional<FleetWire.RenewRequest>.none)
    }

    public func send(events: FleetWire.EventBatch) async throws(FleetError) -> FleetWire.EventAck {
        try await call("POST", "/v1/events", body: events)
    }
}
