public import Foundation
import AsyncHTTPClient
import NIOCore
import NIOPosix
import Synchronization
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

    /// Set when a renewal replaced this session: its event stream ends at the next thing it reads.
    let retiredFlag = Atomic<Bool>(false)
    public func retire() { retiredFlag.store(true, ordering: .relaxed) }
    public var retired: Bool { retiredFlag.load(ordering: .relaxed) }

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

    /// The grant stream as server-sent events from `cursor` (`GrantEvents`): `onItem` gets each batch and ping in
    /// order, and is awaited before the next is read. Returns when the server ends the response, or at once with
    /// `.unsupported` when it has no event stream; throws when the link fails, is silent for
    /// `GrantEvents.idleLimit`, the server refuses (its message), or `onItem` throws.
    public func events(cursor: Int64, _ onItem: @escaping @Sendable (GrantStreamItem) async throws -> Void) async throws -> GrantEventsEnd {
        let server = client.server
        var req = HTTPClientRequest(url: server + GrantEvents.path + "?cursor=\(cursor)")
        req.headers.add(name: "accept", value: "text/event-stream")
        let resp: HTTPClientResponse
        do { resp = try await http.execute(req, timeout: .seconds(30)) } catch {
            throw FleetError("unreachable", "cannot reach the control plane at \(server): \(FleetClient.describe(error))")
        }
        if resp.status.code == 404 || resp.status.code == 405 {
            _ = try? await resp.body.collect(upTo: 64 << 10)
            return .unsupported
        }
        guard resp.status.code / 100 == 2 else {
            let data = Data(((try? await resp.body.collect(upTo: 64 << 10)) ?? ByteBuffer()).readableBytesView)
            throw client.refusal(resp, data, "GET \(GrantEvents.path)")
        }
        guard resp.headers.first(name: "content-type")?.lowercased().hasPrefix("text/event-stream") == true else {
            throw FleetError("bad_answer", "the control plane at \(server) answered GET \(GrantEvents.path) with '\(resp.headers.first(name: "content-type") ?? "no content type")', not text/event-stream")
        }
        let heard = LastHeard()
        let idle = UInt64(GrantEvents.idleLimit.components.seconds) * 1_000_000_000
        return try await withThrowingTaskGroup(of: GrantEventsEnd.self) { g in
            g.addTask {
                var parser = EventStreamParser()
                for try await chunk in resp.body {
                    heard.now()
                    for item in try parser.feed(chunk.readableBytesView) {
                        guard case .event(let name, _, let data) = item else {
                            try await onItem(.ping)
                            continue
                        }
                        guard name == "grants" else { continue }  // events of a newer server: not ours to read
                        let batch: FleetWire.GrantStream
                        do { batch = try JSONDecoder().decode(FleetWire.GrantStream.self, from: Data(data.utf8)) } catch {
                            throw FleetError("bad_answer", "the control plane at \(server) sent a grant event that cannot be read: \(error)")
                        }
                        try await onItem(.batch(batch))
                    }
                    if self.retired { return .retired }
                }
                return .ended
            }
            g.addTask {
                while true {
                    try await Task.sleep(for: .seconds(5))
                    if heard.silence() > idle {
                        throw FleetError("unreachable", "the grant stream from the control plane at \(server) was silent for \(GrantEvents.idleLimit.components.seconds) s (the server pings every \(GrantEvents.pingEvery.components.seconds) s)")
                    }
                }
            }
            defer { g.cancelAll() }
            return try await g.next()!
        }
    }

    public func send(events: FleetWire.EventBatch) async throws(FleetError) -> FleetWire.EventAck {
        try await call("POST", "/v1/events", body: events)
    }
}

/// When a stream last read anything (monotonic nanoseconds).
final class LastHeard: Sendable {
    private let at = Atomic<UInt64>(DispatchTime.now().uptimeNanoseconds)
    func now() { at.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed) }
    func silence() -> UInt64 {
        let then = at.load(ordering: .relaxed), now = DispatchTime.now().uptimeNanoseconds
        return now > then ? now - then : 0
    }
}
