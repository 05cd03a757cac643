public import Foundation
import NIOCore
import X509

/// The host agent's calls in fleet mode (docs/FLEET.md, "The wire and the tables of slice 2"): every one
/// over mutual TLS with the host key and certificate, the server verified against the fleet CA and its name.
extension FleetClient {
    /// `POST /v1/requests`: files a request from the outbox (idempotent on this host's `seq`).
    public func file(_ r: FleetWire.HostRequest, fleet: FleetFile) async throws(FleetError) -> FleetWire.RequestStatus {
        try await call("POST", "/v1/requests", body: r, tls: try Self.mutualTLS(fleet))
    }

    /// `GET /v1/requests/{id}`: a request this host filed, as the control plane has it now.
    public func requestStatus(id: Int64, fleet: FleetFile) async throws(FleetError) -> FleetWire.RequestStatus {
        try await call("GET", "/v1/requests/\(id)", body: Optional<FleetWire.RenewRequest>.none, tls: try Self.mutualTLS(fleet))
    }

    /// `GET /v1/grants/stream?cursor=N&wait=S`: the long-poll; the read timeout is the wait plus a margin.
    public func stream(cursor: Int64, wait: Int, fleet: FleetFile) async throws(FleetError) -> FleetWire.GrantStream {
        var c = self
        c.timeout = .seconds(Int64(wait) + 15)
        return try await c.call("GET", "/v1/grants/stream?cursor=\(cursor)&wait=\(wait)", body: Optional<FleetWire.RenewRequest>.none,
                                tls: try Self.mutualTLS(fleet))
    }

    /// `POST /v1/events`: a batch of this host's audit events (stored once per seq).
    public func send(events: FleetWire.EventBatch, fleet: FleetFile) async throws(FleetError) -> FleetWire.EventAck {
        try await call("POST", "/v1/events", body: events, tls: try Self.mutualTLS(fleet))
    }
}

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
